-- A holder's heartbeat: push its slots' expiry ARGV[2] seconds past now.
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
return 1
