-- wrk script of bench/ingest.py: signed GitHub deliveries, each with its own delivery id
-- and its own body (the id is written into the body, which is then signed here with
-- OpenSSL's HMAC through LuaJIT's FFI): the bridge takes the same signed bytes under a
-- new id for a replay, so every request must differ.
--
-- Environment:
--   BENCH_REQUESTS  the request pool written by bench/common.py write_pool():
--                   records "<head length> <tail length>\n<head><tail>\n"; a body is
--                   head .. delivery id .. tail
--   BENCH_PREFIX    delivery id prefix (ids are "<prefix>-<thread>-<counter>")
--   BENCH_SECRET    the webhook secret to sign with
--   BENCH_IDS_OUT   file that receives the delivery ids answered 200 (one a line)
-- done() prints one line "BENCHJSON {...}" with the totals and latency percentiles (us).

local ffi = require("ffi")
ffi.cdef[[
const void *EVP_sha256(void);
unsigned char *HMAC(const void *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
]]
local ok, crypto = pcall(ffi.load, "crypto")
if not ok then crypto = ffi.load("libcrypto.so.3") end
local digest = ffi.new("unsigned char[32]")
local digest_length = ffi.new("unsigned int[1]")
local hex = {}

local function signature(secret, body)
   crypto.HMAC(crypto.EVP_sha256(), secret, #secret, body, #body, digest, digest_length)
   for i = 0, 31 do hex[i + 1] = string.format("%02x", digest[i]) end
   return "sha256=" .. table.concat(hex)
end

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = os.getenv("BENCH_PREFIX") or "run"
   secret = assert(os.getenv("BENCH_SECRET"), "BENCH_SECRET is not set")
   local f = assert(io.open(os.getenv("BENCH_REQUESTS"), "rb"))
   pool = {}
   while true do
      local line = f:read("*l")
      if not line then break end
      local head_length, tail_length = line:match("^(%d+) (%d+)$")
      local head = f:read(tonumber(head_length))
      local tail = f:read(tonumber(tail_length))
      f:read(1) -- the record's trailing newline
      pool[#pool + 1] = { head = head, tail = tail }
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
   local id = string.format("%s-%d-%d", prefix, tid, counter)
   local body = entry.head .. id .. entry.tail
   headers["X-GitHub-Delivery"] = id
   headers["X-Hub-Signature-256"] = signature(secret, body)
   return wrk.format("POST", nil, headers, body)
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
