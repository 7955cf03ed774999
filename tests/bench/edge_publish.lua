-- wrk script for tests/bench/edge.sh: keep-alive POSTs of a 100-byte body, cycling over topics.
--   wrk ... -s edge_publish.lua URL -- PATH_TEMPLATE [TOPICS] [BYTES]
-- PATH_TEMPLATE holds one %d for the topic number, e.g. /v1/topics/bench.%d/messages (Herald)
-- or /pub?id=bench.%d (Nchan). The requests are built once; request() only picks the next one.
local requests = {}
local i = 0

function init(args)
  local template = args[1] or "/v1/topics/bench.%d/messages"
  local topics = tonumber(args[2] or "100")
  local body = string.rep("x", tonumber(args[3] or "100"))
  for t = 0, topics - 1 do
    requests[#requests + 1] = wrk.format("POST", string.format(template, t),
      { ["Content-Type"] = "text/plain" }, body)
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end
