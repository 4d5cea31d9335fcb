-- wrk script for the ingest benchmark: POST a JSON body of BENCH_BODY_BYTES bytes
-- (default 1024) with the endpoint key BENCH_KEY, and print one machine-readable line.
-- With BENCH_EVENT_TYPE (a source's key): the event type, in X-WH-Event-Type.
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "1024")
local frame = '{"type":"bench","pad":""}'

wrk.method = "POST"
wrk.body = '{"type":"bench","pad":"' .. string.rep("x", size - #frame) .. '"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-WH-Endpoint-Key"] = os.getenv("BENCH_KEY") or "none"
wrk.headers["X-Event-Type"] = "bench"
local event_type = os.getenv("BENCH_EVENT_TYPE")
if event_type then wrk.headers["X-WH-Event-Type"] = event_type end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"non2xx\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(99)))
end
