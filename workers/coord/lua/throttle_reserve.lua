-- Reserve ARGV[1] bytes on every (limit, clock) pair of KEYS (GCRA, workers.coord.throttle);
-- returns how long to wait before moving them.
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now
local rates = {}
for i = 1, #KEYS, 2 do
  local rate = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  rates[i] = rate
  if rate > 0 then
    local clock = tonumber(redis.call('GET', KEYS[i + 1]) or '0') or 0
    if clock > start then start = clock end
  end
end
for i = 1, #KEYS, 2 do
  local rate = rates[i]
  if rate > 0 then
    local clock = start + n / rate
    redis.call('SET', KEYS[i + 1], string.format('%.6f', clock), 'PX', math.ceil((clock - now) * 1000) + 60000)
  end
end
return string.format('%.6f', start - now)
