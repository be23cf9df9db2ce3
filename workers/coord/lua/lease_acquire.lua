-- Take a VM's lease (KEYS[1], value ARGV[1], ARGV[2] seconds) and bump its fencing counter
-- (KEYS[2]) in one step: {1, new token}, or {0, the holder} when someone has it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('GET', KEYS[1])}
