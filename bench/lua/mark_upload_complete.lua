-- PUT MarkBatchUploadComplete, each request on a different batch.
-- Arguments: GUID file, wrk thread count, tenant GUID, bearer token.
-- Each thread takes a disjoint slice of the file. A thread that runs out starts its slice
-- again and counts the restart in "wrapped", and the runner then rejects the measurement.
local script_folder = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(script_folder .. "report.lua")

function init(args)
   guids = read_slice(args[1], thread_index, tonumber(args[2]))
   tenant = args[3]
   headers = {["Authorization"] = "Bearer " .. args[4]}
   position = 0
   wrapped = 0
end

function request()
   position = position + 1
   if position > #guids then
      position = 1
      wrapped = wrapped + 1
   end
   local path = "/api/DocBatch/MarkBatchUploadComplete?tenantGuid=" .. tenant ..
      "&batchGuid=" .. guids[position]
   return wrk.format("PUT", path, headers, "")
end
