-- Give back a holder's slots.
local held = 0
for _, key in ipairs(KEYS) do
  held = held + redis.call('ZREM', key, ARGV[1])
end
if held > 0 then
  audit(ARGV[2], ARGV[5], {event = 'release', holder = ARGV[1], read = ARGV[3], write = ARGV[4]})
end
return held
