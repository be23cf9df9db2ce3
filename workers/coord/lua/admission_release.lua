-- Take a migration out of the line and give back its places on the hosts named.
-- KEYS: waiting, routes, log, then the admitted set of each host named in ARGV[3..]
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local hosts = {}
for i = 4, #KEYS do
  if redis.call('SREM', KEYS[i], ARGV[1]) == 1 then
    hosts[#hosts + 1] = ARGV[i - 1]
  end
end
if #hosts > 0 then
  audit(KEYS[3], ARGV[2], {event = 'release', migration = ARGV[1], hosts = hosts})
end
return #hosts
