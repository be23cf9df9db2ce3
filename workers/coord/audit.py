"""Audit logs of per-host limits: every take and give-back, with Redis' clock.

Copy slots (workers.coord.slots) and migration admission (workers.coord.admission) both append each
acquisition and release to a capped Redis list from inside their Lua step (lua/audit_prelude.lua
gives them `audit()`), so the log is
in exactly the order Redis applied them; `peak` replays such a log to show the most
holders a host ever had at once, which tests and operators compare with the limit.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

import redis


def read(client: redis.Redis, key: str) -> list[dict]:
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


def peak(changes: Iterable[tuple[float, object, str, bool]]) -> dict:
    """Most holders at once per resource, from (time, resource, holder, acquired) changes.
    At equal times releases count first: a slot handed over in one instant is not two."""
    now: dict[object, set] = {}
    top: dict[object, int] = {}
    for _t, resource, holder, acquired in sorted(changes, key=lambda c: (c[0], c[3])):
        holders = now.setdefault(resource, set())
        if acquired:
            holders.add(holder)
        else:
            holders.discard(holder)
        top[resource] = max(top.get(resource, 0), len(holders))
    return top
