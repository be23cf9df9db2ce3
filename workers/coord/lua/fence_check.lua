-- 1 while the VM lease (KEYS[1] = ARGV[1]), its fencing token (KEYS[2] = ARGV[2]) and, when
-- given, the step claim (KEYS[3] = ARGV[3]) are all still ours; else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return 0
end
return 1
