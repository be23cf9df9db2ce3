"""The migration record in Redis: the source of truth for every migration.

Celery messages carry only the migration id; everything a task needs to know it reads
here, and every change of state is a compare-and-set so a task delivered twice cannot
move a migration twice.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Callable, Iterable

import redis

from workers import keys, states


class RecordNotFound(Exception):
    pass


class StaleState(Exception):
    """The record is not in the state the caller expected (e.g. a duplicate delivery)."""

    def __init__(self, mid: str, expected: Iterable[str], actual: str):
        self.actual = actual
        super().__init__(f"migration {mid} is {actual}, expected one of {sorted(expected)}")


def new_record(*, vm: str, vm_id: str, source: str, destination: str, fence: int,
               options: dict | None = None) -> dict:
    now = time.time()
    return {
        "id": uuid.uuid4().hex[:16],
        "vm": vm,
        "vm_id": vm_id,
        "source": source,
        "destination": destination,
        "state": states.QUEUED,
        "created_at": now,
        "updated_at": now,
        "phases": {},
        "downtime_seconds": None,
        "bytes_copied": 0,
        "bytes_total": None,
        "error": None,
        "fence": fence,
        "options": options or {},
        "history": [{"state": states.QUEUED, "at": now}],
    }


class Store:
    def __init__(self, client: redis.Redis):
        self.r = client

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=30,
                                        socket_connect_timeout=10, health_check_interval=30))

    def create(self, rec: dict) -> None:
        key = keys.migration(rec["id"])
        with self.r.pipeline() as p:
            p.set(key, json.dumps(rec), nx=True)
            p.zadd(keys.MIGRATIONS_INDEX, {rec["id"]: rec["created_at"]})
            p.sadd(keys.ACTIVE_SET, rec["id"])
            p.execute()

    def delete(self, mid: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.migration(mid))
            p.zrem(keys.MIGRATIONS_INDEX, mid)
            p.srem(keys.ACTIVE_SET, mid)
            p.execute()

    def get(self, mid: str) -> dict:
        raw = self.r.get(keys.migration(mid))
        if raw is None:
            raise RecordNotFound(f"no migration with id {mid!r}")
        return json.loads(raw)

    def list(self, limit: int = 100) -> list[dict]:
        ids = self.r.zrevrange(keys.MIGRATIONS_INDEX, 0, limit - 1)
        if not ids:
            return []
        raws = self.r.mget([keys.migration(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws) if raw is None]
        if gone:
            self.r.zrem(keys.MIGRATIONS_INDEX, *gone)
        return [json.loads(raw) for raw in raws if raw is not None]

    def active_ids(self) -> list[str]:
        """Migrations not yet at an end state (what the reconciler watches)."""
        return sorted(self.r.smembers(keys.ACTIVE_SET))

    def forget_active(self, mid: str) -> None:
        self.r.srem(keys.ACTIVE_SET, mid)

    def update(self, mid: str, change: Callable[[dict], None]) -> dict:
        """Apply `change` to the record atomically (optimistic, retried on conflict)."""
        key = keys.migration(mid)
        while True:
            with self.r.pipeline() as p:
                try:
                    p.watch(key)
                    raw = p.get(key)
                    if raw is None:
                        raise RecordNotFound(f"no migration with id {mid!r}")
                    rec = json.loads(raw)
                    change(rec)
                    rec["updated_at"] = time.time()
                    p.multi()
                    if rec["state"] in states.ENDS:
                        p.set(key, json.dumps(rec), ex=keys.RECORD_TTL_S)
                        p.srem(keys.ACTIVE_SET, mid)
                    else:
                        p.set(key, json.dumps(rec))
                    p.execute()
                    return rec
                except redis.WatchError:
                    continue

    def transition(self, mid: str, expect: Iterable[str], to: str, **fields) -> dict:
        """Move from one of `expect` to `to`, stamping phase ends and starts."""
        expect = set(expect)

        def change(rec: dict) -> None:
            src = rec["state"]
            if src not in expect:
                raise StaleState(mid, expect, src)
            states.check(src, to)
            now = time.time()
            old_phase = states.PHASE_OF.get(src)
            if old_phase and old_phase in rec["phases"]:
                rec["phases"][old_phase].setdefault("end", now)
            new_phase = states.PHASE_OF.get(to)
            if new_phase:
                rec["phases"].setdefault(new_phase, {"start": now})
            rec["state"] = to
            rec["history"].append({"state": to, "at": now})
            rec.update(fields)

        return self.update(mid, change)
