-- Pacing for report.lua: the bench appends this file to it (tools/bench/src/
-- wrk.rs, `Scripts::paced`) to post at a steady rate instead of as fast as
-- ingest answers, for the background load of the query measurement.
--
--   wrk -t1 -c64 -d60s --latency -s paced.lua http://HOST:PORT -- ELECTION TOKEN RUN RATE
--
-- RATE is requests per second per wrk thread. wrk calls `delay` before every
-- request of every connection; each call takes the thread's next slot on a
-- schedule RATE slots a second apart and waits until it. A thread behind its
-- schedule (every connection waiting for an answer) does not catch up in a
-- burst: the schedule restarts from now, so the rate wrk reports is what was
-- posted. wrk waits whole milliseconds, so a request may leave up to 1 ms
-- early; the schedule itself keeps fractions, so the rate holds.
--
-- Why not the bench's in-process load generator: at 2,000 reports/s it spent
-- ~90 µs of CPU per report on this 2-core machine, against ~45 µs for wrk
-- paced this way, and that CPU came out of the query's share.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_pace_timespec;
int clock_gettime(int clock_id, bench_pace_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_spec = ffi.new("bench_pace_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, now_spec)
   return tonumber(now_spec.tv_sec) * 1000 + tonumber(now_spec.tv_nsec) / 1e6
end

local report_init = init
local interval, next_due

function init(args)
   report_init(args)
   local rate = tonumber(args[4])
   if rate == nil or rate <= 0 then
      error("usage: wrk ... -s paced.lua URL -- ELECTION TOKEN RUN RATE (requests/s per thread)")
   end
   interval = 1000 / rate
end

function delay()
   local now = now_ms()
   if next_due == nil or next_due < now then
      next_due = now
   end
   local wait = next_due - now
   next_due = next_due + interval
   return wait
end
