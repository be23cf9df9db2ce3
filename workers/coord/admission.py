"""Admission: at most N migrations at a time touch a host, as source or destination.

Like Hyper-V's own MaximumVirtualMachineMigrations, N is per host (`max_migrations` in
quickmig.toml, default 2) and counts migrations from and to the host together. A new
migration waits, `queued`, in a FIFO until both its hosts have room; then it takes a place
on both in one atomic step (both or none, so two migrations never each hold half of what
the other needs) and only then is its snapshot step sent. A waiting migration whose hosts
are full does not hold up later ones whose hosts are free, except that one which has waited
longer than RESERVE_AFTER_S reserves its hosts: nothing behind it may take a place there,
so a busy pair of hosts cannot starve it for ever.

A migration keeps its places until it ends (`workers.engine.step.end`), whatever it does meanwhile,
including its rollback: that too works on both hosts. The reconciler gives back the places
of migrations that ended or vanished without passing there. Every admission and release
is appended to keys.ADMISSION_LOG (workers.coord.audit), so the limit can be checked afterwards.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import cast

import redis

from workers.coord import audit, redis_lua
from workers.model import keys
from workers.model.config import Config
from workers.model.record import RecordNotFound, Store

# A migration waiting longer than this reserves its hosts (see above).
RESERVE_AFTER_S = 300

_ADMIT = redis_lua.load("admission_admit", audit=True)

_RELEASE = redis_lua.load("admission_release", audit=True)


class Admission:
    def __init__(self, client: redis.Redis, limits: dict[str, int],
                 reserve_after_s: float = RESERVE_AFTER_S):
        self.r, self.limits, self.reserve_after_s = client, dict(limits), reserve_after_s
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def of(cls, client: redis.Redis, cfg: Config) -> Admission:
        return cls(client, {name: h.max_migrations for name, h in cfg.hosts.items()})

    def wait(self, mid: str, source: str, destination: str) -> None:
        """Put a migration at the end of the line (a no-op for one already there)."""
        with self.r.pipeline() as p:
            p.hset(keys.ADMISSION_ROUTES, mid, json.dumps([source, destination]))
            p.zadd(keys.ADMISSION_WAITING, {mid: time.time()}, nx=True)
            p.execute()

    def admit(self) -> list[str]:
        """One admission pass: the ids admitted now, in the order they waited."""
        hosts = sorted(self.limits)
        args: list = [keys.ADMISSION_LOG_MAX, self.reserve_after_s]
        for h in hosts:
            args += [h, int(self.limits[h])]
        return list(self._admit(keys=[keys.ADMISSION_WAITING, keys.ADMISSION_ROUTES, keys.ADMISSION_LOG]
                                + [keys.admitted(h) for h in hosts], args=args))

    def release(self, mid: str, hosts: Iterable[str]) -> int:
        """Take the migration out of the line and give back its places on `hosts`."""
        hosts = list(dict.fromkeys(hosts))
        return int(self._release(keys=[keys.ADMISSION_WAITING, keys.ADMISSION_ROUTES, keys.ADMISSION_LOG]
                                 + [keys.admitted(h) for h in hosts],
                                 args=[mid, keys.ADMISSION_LOG_MAX, *hosts]))

    def withdraw(self, mid: str) -> None:
        """Leave the line without being admitted (a cancel); places already held stay until the end."""
        with self.r.pipeline() as p:
            p.zrem(keys.ADMISSION_WAITING, mid)
            p.hdel(keys.ADMISSION_ROUTES, mid)
            p.execute()

    def is_waiting(self, mid: str) -> bool:
        return self.r.zscore(keys.ADMISSION_WAITING, mid) is not None

    def holds(self, mid: str, host: str) -> bool:
        return bool(self.r.sismember(keys.admitted(host), mid))

    def holders(self, host: str) -> set[str]:
        return cast("set[str]", self.r.smembers(keys.admitted(host)))

    def waiting_ids(self) -> list[str]:
        return cast("list[str]", self.r.zrange(keys.ADMISSION_WAITING, 0, -1))

    def reasons(self, recs: list[dict]) -> dict[str, str]:
        """Why each of these queued migrations still waits, in one round trip."""
        queued = [r for r in recs if r.get("state") == "queued"]
        if not queued:
            return {}
        hosts = sorted({h for r in queued for h in (r["source"], r["destination"])})
        with self.r.pipeline(transaction=False) as p:
            for r in queued:
                p.zrank(keys.ADMISSION_WAITING, r["id"])
            for h in hosts:
                p.scard(keys.admitted(h))
            out = p.execute()
        ranks, counts = out[:len(queued)], dict(zip(hosts, out[len(queued):], strict=True))
        why = {}
        for r, rank in zip(queued, ranks, strict=True):
            if rank is None:
                continue  # admitted: its snapshot step is on its way
            # a host taken out of the inventory has no room until it is back: say so, or it
            # would wait without a word
            full = [f"{h} is not in the inventory (quickmig.toml); it waits until the host is back, or cancel it"
                    if h not in self.limits else
                    f"{h} has {counts[h]} migration{'s' * (counts[h] != 1)} (limit {self.limits[h]})"
                    for h in (r["source"], r["destination"]) if h not in self.limits or counts[h] >= self.limits[h]]
            why[r["id"]] = "waiting: " + ("; ".join(full) if full else f"number {rank + 1} in line")
        return why

    def log(self) -> list[dict]:
        return audit.read(self.r, keys.ADMISSION_LOG)


def admit_and_send(adm: Admission, store: Store, send: Callable[[str], None]) -> list[str]:
    """Run an admission pass and start each admitted migration. The record is stamped
    first, so its `queued` deadline counts from admission, not from a long wait in line;
    if the message is lost after that, the reconciler re-sends it."""
    started = []
    for mid in adm.admit():
        try:
            store.set(mid, admitted_at=time.time())
        except RecordNotFound:
            continue  # gone meanwhile; the reconciler gives its places back
        send(mid)
        started.append(mid)
    return started


def max_concurrency(events: list[dict]) -> dict[str, int]:
    """From the admission log: the most migrations admitted at once per host."""
    return audit.peak((e["at"], host, e["migration"], e["event"] == "admit")
                      for e in events for host in e["hosts"])
