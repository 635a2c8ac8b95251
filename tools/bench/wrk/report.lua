-- wrk script of `just bench` (tools/bench/src/wrk.rs runs it): every request
-- is revision 1 of a new ballot box, posted to election-ingest.
--
--   wrk -t2 -c64 -d15s --latency -s report.lua http://HOST:PORT -- ELECTION TOKEN RUN
--
-- Ballot box ids are RUN-<thread>-<n>: RUN is chosen by the bench (one per
-- wrk run on an election), the thread number comes from `setup`, n counts
-- the thread's requests. So no two requests of any run share a box, and every
-- post is recorded and counted: what a ballot box sends once on election
-- night. Cities: 200; parties: 4, with 0 to 399 votes each.
--
-- Every answer is checked: `response` counts 2xx (and 202, recorded but left
-- pending) and anything else, and `done` prints one line the bench reads:
--   bench-wrk: ok=N pending=N failed=N first_failure=STATUS BODY
-- wrk's own "Non-2xx or 3xx" line would miss 3xx answers; this does not.

local CITIES = 200

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local head, prefix
local n = 0
ok, pending, failed, first_failure = 0, 0, 0, ""

function init(args)
   local election, token, run = args[1], args[2], args[3]
   if election == nil or token == nil or run == nil then
      error("usage: wrk ... -s report.lua URL -- ELECTION TOKEN RUN")
   end
   -- The request is built by hand around a fixed head: wrk.format would
   -- build a table and format every header again for each request, and the
   -- client's CPU comes out of the same 2 cores as the servers'.
   head = "POST /v1/elections/" .. election .. "/reports HTTP/1.1\r\n"
      .. "Host: " .. wrk.host .. ":" .. wrk.port .. "\r\n"
      .. "Authorization: Bearer " .. token .. "\r\n"
      .. "Content-Type: application/json\r\n"
      .. "Content-Length: "
   prefix = run .. "-" .. id .. "-"
   math.randomseed(id * 7919)
end

function request()
   n = n + 1
   local random = math.random
   local body = string.format(
      '{"ballot_box_id":"%s%d","city":"city-%04d","votes":'
         .. '{"party-00":%d,"party-01":%d,"party-02":%d,"party-03":%d}}',
      prefix, n, n % CITIES,
      random(0, 399), random(0, 399), random(0, 399), random(0, 399))
   return head .. #body .. "\r\n\r\n" .. body
end

function response(status, _, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      if status == 202 then
         pending = pending + 1
      end
   else
      failed = failed + 1
      if first_failure == "" then
         first_failure = status .. " " .. string.sub(body or "", 1, 200)
      end
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
