-- One POST per distinct X-User-ID PREFIX0 .. PREFIX(TOTAL-1), then stop this thread and
-- write the number of answers to DONE_FILE (wrk itself runs until -d or SIGINT).
-- Requests sent after TOTAL (at most one per connection) reuse ids already sent.
-- Usage: wrk -t1 ... -s distinct.lua URL -- TOTAL PREFIX DONE_FILE   (one thread only)
local total = 0
local prefix = "m-"
local done_file = nil
local sent = 0
local answered = 0

function init(args)
  total = tonumber(args[1]) or 1000000
  prefix = args[2] or prefix
  done_file = args[3]
end

function request()
  local id = sent % total
  sent = sent + 1
  return wrk.format("POST", nil, { ["X-User-ID"] = prefix .. id, ["Content-Length"] = "0" }, nil)
end

function response(status, headers, body)
  answered = answered + 1
  if answered == total then
    if done_file then
      local f = io.open(done_file, "w")
      f:write(tostring(answered))
      f:close()
    end
    wrk.thread:stop()
  end
end
