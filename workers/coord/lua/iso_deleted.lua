-- The image is gone: drop its marker (KEYS[2]) and give the lease (KEYS[1]) back.
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
