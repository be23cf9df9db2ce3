-- Shared by the scripts that write an audit log: `now` (Redis' clock, seconds) and
-- audit(list_key, max_entries, entry), which appends one JSON line and trims the oldest.
local _t = redis.call('TIME')
local now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000
local function audit(log, max, entry)
  entry.at = now
  redis.call('RPUSH', log, cjson.encode(entry))
  redis.call('LTRIM', log, -tonumber(max), -1)
end
