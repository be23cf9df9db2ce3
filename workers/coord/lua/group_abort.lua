-- Roll a `together` group back, unless it is past its point of no return.
-- KEYS: the group's hash. ARGV: why, key TTL in s.
-- Returns 1 if this call aborted the group, 0 if it was aborted already, -1 if the group
-- passed its point of no return (every member imported and told to start): too late.
if redis.call('HEXISTS', KEYS[1], 'start_at') == 1 then
  return -1
end
if redis.call('HEXISTS', KEYS[1], 'abort') == 1 then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'abort', ARGV[1], 'aborted_at', tostring(tonumber(t[1]) + tonumber(t[2]) / 1e6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
