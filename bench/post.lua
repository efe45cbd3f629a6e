-- wrk script for bench/e2e.py: POST the body in $WRK_BODY_FILE as application/json, count the
-- responses by status (wrk itself only counts non-2xx as "errors"), and print one JSON line
-- starting with "RESULT " with the counts and the latency percentiles (µs).
-- $WRK_CONTENT_TYPE replaces the Content-Type (empty: none is sent, as HEC clients do), and
-- $WRK_HEADERS adds headers, one "Name: value" a line (the protocols mode: --protocols).
-- With $WRK_RETRY_AFTER_MS set, every 429 (or other status in $WRK_BACKOFF_STATUSES, a comma
-- list: HEC's busy answer is 503) delays one following request by that long, as a client
-- honouring Retry-After would (wrk otherwise resends at once: a closed loop that turns a fast 429
-- into a busy loop on a machine the sink shares). $WRK_PACE_MS paces every request (below).
local path = os.getenv("WRK_BODY_FILE")
local f = assert(io.open(path, "rb"), "WRK_BODY_FILE must name a readable file")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local content_type = os.getenv("WRK_CONTENT_TYPE") or "application/json"
if content_type ~= "" then
  wrk.headers["Content-Type"] = content_type
end
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
local backoff_statuses = {}
for status in string.gmatch(os.getenv("WRK_BACKOFF_STATUSES") or "429", "%d+") do
  backoff_statuses[tonumber(status)] = true
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  backoff = 0
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if backoff_statuses[status] then
    backoff = backoff + 1
  end
end

local retry_after_ms = tonumber(os.getenv("WRK_RETRY_AFTER_MS") or "") or 0
-- $WRK_PACE_MS: every request waits this long after the previous answer on its connection, so
-- the load is about connections / (pace + latency) requests a second (an open-ish loop below
-- saturation: the latency measured at a chosen rate)
local pace_ms = tonumber(os.getenv("WRK_PACE_MS") or "") or 0
if retry_after_ms > 0 or pace_ms > 0 then
  function delay()
    if backoff > 0 and retry_after_ms > 0 then
      backoff = backoff - 1
      return retry_after_ms + pace_ms
    end
    return pace_ms
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
