-- Take an ISO image's lease (KEYS[1]) and join its users (KEYS[2]); returns the holder
-- when someone else has the lease, else false.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return false
