-- Take a read slot on the source (KEYS[1]) and a write slot on the destination (KEYS[2])
-- together, or neither; a holder that already has them keeps them.
local holder, ttl = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, holder) and redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, holder)
end
audit(ARGV[5], ARGV[8], {event = 'acquire', holder = holder, read = ARGV[6], write = ARGV[7]})
return 1
