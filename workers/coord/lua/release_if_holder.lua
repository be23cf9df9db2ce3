-- Delete KEYS[1] only while it still holds our value ARGV[1].
-- Shared by VM leases, step claims and ISO image leases.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
