-- Leave the image: 'keep' while others use it (or it was never ours to delete), else take
-- the lease (no one else may decide on the image while it is deleted) and say 'delete'.
-- The marker goes only once the image is gone, so a rollback retried after a failed delete
-- decides the same again.
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[3]) == 0 then
  return 'keep'
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 'keep'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 'delete'
