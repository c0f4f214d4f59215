-- Makes wrk print, after its own report, one line for scripts/bench/http.sh:
--   summary REQUESTS SECONDS P50_US P99_US BYTES ERRORS
-- ERRORS counts socket errors (connect, read, write, timeout) and responses other than 2xx/3xx.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("summary %d %.3f %.1f %.1f %d %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), summary.bytes,
    e.connect + e.read + e.write + e.timeout + e.status))
end
