-- wrk script for the overhead benchmark: POST a fixed chat request, print the summary as one JSON line.
-- BENCH_BODY is the JSON request body; BENCH_API_KEY, when set, is sent as a Bearer token.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local api_key = os.getenv("BENCH_API_KEY")
if api_key ~= nil and api_key ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. api_key
end

-- run.py reads this line; latencies are in microseconds.
done = function(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
