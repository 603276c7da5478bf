-- wrk script of the mce_router benchmark: POST a body read from a file, optionally rotating
-- the Direct target header per request, and write the run's numbers as JSON to $BENCH_OUT.
--
-- Environment:
--   BENCH_BODY_FILE     request body (read once)                       (required)
--   BENCH_CONTENT_TYPE  Content-Type                                   (application/json)
--   BENCH_TARGETS       comma-separated X-Amzn-SageMaker-Target-Container-Hostname values;
--                       one = a fixed header, several = round-robin per request, unset = none
--   BENCH_HEADERS_FILE  extra "Name: value" lines (e.g. a SigV4 signature), optional
--   BENCH_OUT           where done() writes the JSON summary          (required)

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

local body = read_file(os.getenv("BENCH_BODY_FILE"))
local headers = { ["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json" }

local extra = os.getenv("BENCH_HEADERS_FILE")
if extra and extra ~= "" then
  for line in io.lines(extra) do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name] = value end
  end
end

local targets = {}
for t in string.gmatch(os.getenv("BENCH_TARGETS") or "", "[^,]+") do
  targets[#targets + 1] = t
end

local TARGET = "X-Amzn-SageMaker-Target-Container-Hostname"
wrk.method = "POST"
wrk.body = body
wrk.headers = headers
if #targets == 1 then
  headers[TARGET] = targets[1]
end

if #targets > 1 then
  -- Pre-format one request per target; request() only picks the next one.
  local requests = {}
  local n = 0
  function init(args)
    for i, t in ipairs(targets) do
      local h = {}
      for k, v in pairs(headers) do h[k] = v end
      h[TARGET] = t
      requests[i] = wrk.format("POST", nil, h, body)
    end
  end
  function request()
    n = n % #requests + 1
    return requests[n]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.3f, "stdev": %.3f, ' ..
    '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
