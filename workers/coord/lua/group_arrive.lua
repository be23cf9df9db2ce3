-- A member of a `together` group arrives at one of its group's two barriers.
-- KEYS: the group's hash, the set of members arrived at this barrier
-- ARGV: member, group size, phase field that says this barrier is passed ('go_at' or
--       'start_at'), field the wait is counted from, bound of the wait in s, key TTL in s
-- Returns {verdict, reason}: 'abort' (the group rolls back: reason), 'go' (passed already),
-- 'last' (this member completed the barrier: it sends the next step to the others), 'wait'.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local aborted = redis.call('HGET', KEYS[1], 'abort')
if aborted then
  return {'abort', aborted}
end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then
  return {'go', ''}
end
local since = tonumber(redis.call('HGET', KEYS[1], ARGV[4]) or '')
if not since then
  since = now
  redis.call('HSET', KEYS[1], ARGV[4], tostring(now))
end
if now - since > tonumber(ARGV[5]) then
  local why = 'the group waited more than ' .. ARGV[5] .. ' s for all its members at its ' .. ARGV[3] .. ' barrier'
  redis.call('HSET', KEYS[1], 'abort', why, 'aborted_at', tostring(now))
  return {'abort', why}
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[3], tostring(now))
  return {'last', ''}
end
return {'wait', ''}
