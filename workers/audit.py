"""Audit logs of per-host limits: every take and give-back, with Redis' clock.

Copy slots (workers.slots) and migration admission (workers.admission) both append each
acquisition and release to a capped Redis list from inside their Lua step, so the log is
in exactly the order Redis applied them; `peak` replays such a log to show the most
holders a host ever had at once, which tests and operators compare with the limit.
"""
from __future__ import annotations

import json
from typing import Iterable

import redis

# Lua shared by the scripts that write an audit log: `now` (Redis' clock, seconds) and
# `audit(list_key, max_entries, entry)`, which appends one JSON line and trims the oldest.
LUA_PRELUDE = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000
local function audit(log, max, entry)
  entry.at = now
  redis.call('RPUSH', log, cjson.encode(entry))
  redis.call('LTRIM', log, -tonumber(max), -1)
end
"""


def read(client: redis.Redis, key: str) -> list[dict]:
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


def peak(changes: Iterable[tuple[float, object, str, bool]]) -> dict:
    """Most holders at once per resource, from (time, resource, holder, acquired) changes.
    At equal times releases count first: a slot handed over in one instant is not two."""
    now: dict[object, set] = {}
    top: dict[object, int] = {}
    for t, resource, holder, acquired in sorted(changes, key=lambda c: (c[0], c[3])):
        holders = now.setdefault(resource, set())
        if acquired:
            holders.add(holder)
        else:
            holders.discard(holder)
        top[resource] = max(top.get(resource, 0), len(holders))
    return top
