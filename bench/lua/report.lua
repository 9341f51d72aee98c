-- Shared by every script through dofile(): thread bookkeeping and the one-line JSON result
-- that bench/wrk.py parses. Each wrk thread runs its own Lua state, so `threads` is only
-- filled in the main state, where setup() and done() run.
threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- Read one GUID per line and keep every thread_total-th, starting at this thread's index,
-- so the threads work on disjoint slices of the file.
function read_slice(path, index, thread_total)
   local slice = {}
   local line_number = 0
   for line in io.lines(path) do
      if line ~= "" then
         if line_number % thread_total == index then
            slice[#slice + 1] = line
         end
         line_number = line_number + 1
      end
   end
   return slice
end

function done(summary, latency, requests)
   local wrapped = 0
   for _, thread in ipairs(threads) do
      wrapped = wrapped + (thread:get("wrapped") or 0)
   end
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"p50_us": %d, "p99_us": %d, "max_us": %d, "wrapped": %d}\n',
      summary.requests, summary.duration, summary.bytes, summary.errors.status,
      summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
      latency:percentile(50), latency:percentile(99), latency.max, wrapped))
end
