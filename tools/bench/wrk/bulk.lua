-- wrk script of `just bench` for bulk reporting (tools/bench/src/wrk.rs runs
-- it): every request carries BATCH reports, each revision 1 of a new ballot
-- box, posted to election-ingest's /report-batches.
--
--   wrk -t2 -c32 -d15s --latency -s bulk.lua http://HOST:PORT -- ELECTION TOKEN RUN BATCH
--
-- Ballot box ids are RUN-<thread>-<n> as in report.lua, so no two reports of
-- a run share a box. Cities: 200; parties: 4, with 0 to 399 votes each.
--
-- Every answer is checked: a 200 must hold BATCH item answers, each 2xx;
-- `ok` and `pending` count reports (items), `failed` counts reports whose
-- item (or whole request) was not 2xx. `done` prints the line the bench
-- reads, as report.lua does.

local CITIES = 200

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local head, prefix, batch
local n = 0
ok, pending, failed, first_failure = 0, 0, 0, ""

function init(args)
   local election, token, run = args[1], args[2], args[3]
   batch = tonumber(args[4])
   if election == nil or token == nil or run == nil or batch == nil then
      error("usage: wrk ... -s bulk.lua URL -- ELECTION TOKEN RUN BATCH")
   end
   head = "POST /v1/elections/" .. election .. "/report-batches HTTP/1.1\r\n"
      .. "Host: " .. wrk.host .. ":" .. wrk.port .. "\r\n"
      .. "Authorization: Bearer " .. token .. "\r\n"
      .. "Content-Type: application/json\r\n"
      .. "Content-Length: "
   prefix = run .. "-" .. id .. "-"
   math.randomseed(id * 7919)
end

function request()
   local random = math.random
   local items = {}
   for i = 1, batch do
      n = n + 1
      items[i] = string.format(
         '{"ballot_box_id":"%s%d","city":"city-%04d","votes":'
            .. '{"party-00":%d,"party-01":%d,"party-02":%d,"party-03":%d}}',
         prefix, n, n % CITIES,
         random(0, 399), random(0, 399), random(0, 399), random(0, 399))
   end
   local body = '{"reports":[' .. table.concat(items, ",") .. ']}'
   return head .. #body .. "\r\n\r\n" .. body
end

local function note_failure(text)
   if first_failure == "" then
      first_failure = string.sub(text or "", 1, 200)
   end
end

function response(status, _, body)
   if status ~= 200 then
      failed = failed + batch
      note_failure(status .. " " .. (body or ""))
      return
   end
   local good, deferred = 0, 0
   for item_status in string.gmatch(body, '"index":%d+,"status":(%d+)') do
      if item_status == "201" or item_status == "200" then
         good = good + 1
      elseif item_status == "202" then
         good = good + 1
         deferred = deferred + 1
      end
   end
   ok = ok + good
   pending = pending + deferred
   if good ~= batch then
      failed = failed + (batch - good)
      note_failure("200 " .. body)
   end
end

function done()
   local total_ok, total_pending, total_failed, first = 0, 0, 0, ""
   for _, thread in ipairs(threads) do
      total_ok = total_ok + thread:get("ok")
      total_pending = total_pending + thread:get("pending")
      total_failed = total_failed + thread:get("failed")
      if first == "" then
         first = thread:get("first_failure")
      end
   end
   io.write(string.format("bench-wrk: ok=%d pending=%d failed=%d first_failure=%s\n",
      total_ok, total_pending, total_failed, (string.gsub(first, "[\r\n]", " "))))
end
