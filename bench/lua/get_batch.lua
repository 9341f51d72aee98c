-- GET one batch per request, a random one from the GUID file.
-- Arguments: GUID file, wrk thread count, path up to the GUID (for example
-- "/api/DocBatch/GetBatch?tenantGuid=...&batchGuid="), bearer token or "-" for none.
local script_folder = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(script_folder .. "report.lua")

function init(args)
   guids = read_slice(args[1], 0, 1)
   prefix = args[3]
   headers = {}
   if args[4] ~= "-" then
      headers["Authorization"] = "Bearer " .. args[4]
   end
   math.randomseed(thread_index * 7919 + os.time())
end

function request()
   return wrk.format("GET", prefix .. guids[math.random(#guids)], headers)
end
