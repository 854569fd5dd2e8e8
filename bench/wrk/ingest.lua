-- wrk script of bench/ingest.py: signed GitHub deliveries with a unique delivery id each.
--
-- Environment:
--   BENCH_REQUESTS  the request pool written by bench/common.py write_pool():
--                   records "<X-Hub-Signature-256> <length>\n<body>\n"
--   BENCH_PREFIX    delivery id prefix (ids are "<prefix>-<thread>-<counter>")
--   BENCH_IDS_OUT   file that receives the delivery ids answered 200 (one a line)
-- done() prints one line "BENCHJSON {...}" with the totals and latency percentiles (us).

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = os.getenv("BENCH_PREFIX") or "run"
   local f = assert(io.open(os.getenv("BENCH_REQUESTS"), "rb"))
   pool = {}
   while true do
      local line = f:read("*l")
      if not line then break end
      local sig, len = line:match("^(%S+) (%d+)$")
      local body = f:read(tonumber(len))
      f:read(1) -- the record's trailing newline
      pool[#pool + 1] = { sig = sig, body = body }
   end
   f:close()
   headers = {
      ["Content-Type"] = "application/json",
      ["User-Agent"] = "GitHub-Hookshot/044aadd",
      ["X-GitHub-Event"] = "issues",
      ["X-GitHub-Hook-ID"] = "292430182",
   }
   counter = 0
   index = (tid - 1) * 997 -- threads start at different issues
   ok200 = 0
   non2xx = 0
   ids = {}
end

function request()
   counter = counter + 1
   index = index % #pool + 1
   local entry = pool[index]
   headers["X-GitHub-Delivery"] = string.format("%s-%d-%d", prefix, tid, counter)
   headers["X-Hub-Signature-256"] = entry.sig
   return wrk.format("POST", nil, headers, entry.body)
end

function response(status, hdrs, body)
   if status == 200 then
      ok200 = ok200 + 1
      local id = body:match('"delivery_id":"([^"]+)"')
      if id then ids[#ids + 1] = id end
   end
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local total_ok, total_non2xx = 0, 0
   local out = io.open(os.getenv("BENCH_IDS_OUT"), "w")
   for _, thread in ipairs(threads) do
      total_ok = total_ok + thread:get("ok200")
      total_non2xx = total_non2xx + thread:get("non2xx")
      local thread_ids = thread:get("ids")
      if out and thread_ids then
         out:write(table.concat(thread_ids, "\n"), "\n")
      end
   end
   if out then out:close() end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"ok200":%d,"non2xx":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, total_ok, total_non2xx,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
