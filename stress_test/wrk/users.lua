-- POST with X-User-ID cycling over N users; requests are built once in init().
-- Usage: wrk -t1 ... -s users.lua URL -- N [PREFIX]   (defaults: 1000 users, prefix "user-")
local requests = {}
local count = 0
local i = 0

function init(args)
  count = tonumber(args[1]) or 1000
  local prefix = args[2] or "user-"
  for u = 1, count do
    requests[u] = wrk.format("POST", nil, { ["X-User-ID"] = prefix .. (u - 1), ["Content-Length"] = "0" }, nil)
  end
end

function request()
  i = i % count + 1
  return requests[i]
end
