-- One admission pass (workers.coord.admission): admit waiting migrations in order while
-- both their hosts have room, a place on both or none.
-- KEYS: waiting, routes, log, then the admitted set of each host named in ARGV[3..] (name, limit pairs)
local set, cap, count = {}, {}, {}
for i = 4, #KEYS do
  local host = ARGV[2 * (i - 4) + 3]
  set[host], cap[host] = KEYS[i], tonumber(ARGV[2 * (i - 4) + 4])
  count[host] = redis.call('SCARD', KEYS[i])
end
local reserve_after = tonumber(ARGV[2])
local reserved, admitted = {}, {}
local waiting = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #waiting, 2 do
  local mid, since = waiting[i], tonumber(waiting[i + 1])
  local raw = redis.call('HGET', KEYS[2], mid)
  if not raw then
    redis.call('ZREM', KEYS[1], mid)
  else
    local route = cjson.decode(raw)
    local s, d = route[1], route[2]
    -- a host missing from the inventory has no room
    if cap[s] and cap[d] and not reserved[s] and not reserved[d]
        and count[s] < cap[s] and count[d] < cap[d] then
      redis.call('SADD', set[s], mid)
      redis.call('SADD', set[d], mid)
      count[s], count[d] = count[s] + 1, count[d] + 1
      redis.call('ZREM', KEYS[1], mid)
      redis.call('HDEL', KEYS[2], mid)
      audit(KEYS[3], ARGV[1], {event = 'admit', migration = mid, hosts = {s, d}, waited = now - since})
      admitted[#admitted + 1] = mid
    elseif now - since >= reserve_after then
      reserved[s], reserved[d] = true, true
    end
  end
end
return admitted
