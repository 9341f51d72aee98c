-- POST CreateBatchRecords with a prebuilt multipart body, spreading requests over open batches.
-- Arguments: body file, multipart boundary, GUID file, wrk thread count, tenant GUID, token.
local script_folder = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(script_folder .. "report.lua")

function init(args)
   local file = assert(io.open(args[1], "rb"))
   body = file:read("*a")
   file:close()
   guids = read_slice(args[3], thread_index, tonumber(args[4]))
   tenant = args[5]
   headers = {
      ["Authorization"] = "Bearer " .. args[6],
      ["Content-Type"] = "multipart/form-data; boundary=" .. args[2],
   }
   position = 0
end

function request()
   position = position % #guids + 1
   local path = "/api/DocBatch/CreateBatchRecords?tenantGuid=" .. tenant ..
      "&batchGuid=" .. guids[position]
   return wrk.format("POST", path, headers, body)
end
