-- wrk script for an open-ish load: each connection waits BENCH_PACE_MS (default 20) before each
-- request, so the request rate stays far below saturation and the latency measured is that of a
-- browser's beacon, not of a queue in front of a saturated server. wrk measures latency from
-- the request's write, after the pause.
local pace = tonumber(os.getenv("BENCH_PACE_MS") or "20")
function delay()
  return pace
end
