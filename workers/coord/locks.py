"""Per-VM lease with a fencing token.

Acquire sets the lease and increments the VM's fencing counter in one step; a
destructive step proceeds only while the lease is still ours and the counter still
equals the token we were given (docs/design.md section 3.3).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from workers.coord import redis_lua
from workers.model import keys
from workers.model.errors import Fenced, QuickmigError, Retryable

_ACQUIRE = redis_lua.load("lease_acquire")
_EXTEND_IF_HOLDER = redis_lua.load("extend_if_holder")
_RELEASE_IF_HOLDER = redis_lua.load("release_if_holder")
_CHECK = redis_lua.load("fence_check")
# How long a fence waits for a replica to confirm; a healthy replica on a LAN answers in ms.
REPLICATION_TIMEOUT_MS = 2000
# How long a fence keeps asking (through a failover: the sentinels name the new master
# within a few seconds once they agree the old one is gone), and how often.
REPLICATION_WAIT_S = 20.0
REPLICATION_RETRY_S = 0.5


class LockHeld(QuickmigError):
    def __init__(self, vm_id: str, holder: str):
        self.holder = holder
        super().__init__(f"VM {vm_id} is already being migrated by {holder}")


class NotReplicated(Retryable):
    """Redis did not confirm that a replica holds what we wrote: the server we talk to may be a
    master that Sentinel has already replaced. No destructive step until it does."""


def replicated(r: redis.Redis, replicas: int, probe_key: str, before: Callable[[Any], object] | None = None, *,
               timeout_ms: int = REPLICATION_TIMEOUT_MS, wait_s: float = REPLICATION_WAIT_S) -> list:
    """Run `before(pipeline)`'s commands, then a write of `probe_key` and WAIT, in one pipeline
    on one connection; the results of `before`'s commands once `replicas` replicas confirmed.
    The replication stream is ordered, so a replica that has the probe has every write before
    it, from whichever connection wrote it. An old master that Sentinel has replaced has no
    replica left: WAIT answers 0, the clients go back to the sentinels for the master, and
    this asks again for up to `wait_s` (a failover takes seconds) before NotReplicated."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with r.pipeline(transaction=False) as p:
                if before is not None:
                    before(p)
                p.set(probe_key, "1", ex=60)
                p.execute_command("WAIT", replicas, timeout_ms)
                out = p.execute()
            if int(out[-1]) >= replicas:
                return out[:-2]
            why = f"{out[-1]} of {replicas} Redis replicas confirmed within {timeout_ms} ms"
        except (redis.ReadOnlyError, redis.ResponseError, redis.ConnectionError, redis.TimeoutError) as e:
            why = f"Redis refused or lost the write ({e}); asking Sentinel for the master again"
        r.connection_pool.disconnect()
        if time.monotonic() >= deadline:
            raise NotReplicated(why)
        time.sleep(REPLICATION_RETRY_S)


class VMLocks:
    def __init__(self, client: redis.Redis, *, replicas: int = 0,
                 replication_timeout_ms: int = REPLICATION_TIMEOUT_MS, replication_wait_s: float = REPLICATION_WAIT_S):
        """`replicas`: how many replicas must hold every write before a destructive step
        (1 under Sentinel, whose failover keeps only what reached the replica; 0 for one server)."""
        self.r = client
        self.replicas = replicas
        self.replication_timeout_ms = replication_timeout_ms
        self.replication_wait_s = replication_wait_s
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND_IF_HOLDER)
        self._release = client.register_script(_RELEASE_IF_HOLDER)
        self._check = client.register_script(_CHECK)

    def acquire(self, vm_id: str, mid: str, ttl_s: int = keys.VM_LOCK_TTL_S) -> int:
        ok, value = self._acquire(keys=[keys.vm_lock(vm_id), keys.vm_fence(vm_id)], args=[mid, ttl_s])
        if not ok:
            raise LockHeld(vm_id, value)
        return int(value)

    def holder(self, vm_id: str) -> str | None:
        return cast("str | None", self.r.get(keys.vm_lock(vm_id)))

    def extend(self, vm_id: str, mid: str, ttl_s: int = keys.VM_LOCK_TTL_S) -> bool:
        return bool(self._extend(keys=[keys.vm_lock(vm_id)], args=[mid, ttl_s]))

    def release(self, vm_id: str, mid: str) -> bool:
        return bool(self._release(keys=[keys.vm_lock(vm_id)], args=[mid]))

    def check(self, vm_id: str, mid: str, token: int, claim: str | None = None) -> None:
        """Raise Fenced unless the VM lease and token are ours and, when `claim` is given,
        this delivery still holds the migration's step claim (all checked in one step)."""
        ks, args = [keys.vm_lock(vm_id), keys.vm_fence(vm_id)], [mid, str(token)]
        if claim is not None:
            ks.append(keys.step_claim(mid))
            args.append(claim)
        if self.replicas:
            ok = self._check_replicated(ks, args, mid)
        else:
            ok = self._check(keys=ks, args=args)
        if not ok:
            raise Fenced(f"migration {mid} no longer holds VM {vm_id} (token {token})"
                         + ("" if claim is None else " or its step claim"))

    def _check_replicated(self, ks: list[str], args: list[str], mid: str) -> bool:
        """The fence check, confirmed by a replica (`replicated`): a master Sentinel has failed
        over has lost its replica, so its word is never acted on."""
        out = replicated(self.r, self.replicas, keys.replication_probe(mid),
                         lambda p: self._check(keys=ks, args=args, client=p),
                         timeout_ms=self.replication_timeout_ms, wait_s=self.replication_wait_s)
        return bool(out[0])

    # -- step claims: one task delivery at a time works on a migration -----------------
    def claim_step(self, mid: str, ttl_s: int = keys.STEP_CLAIM_TTL_S) -> str | None:
        token = uuid.uuid4().hex
        if self.r.set(keys.step_claim(mid), token, nx=True, ex=ttl_s):
            return token
        return None

    def claim_holder(self, mid: str) -> str | None:
        return cast("str | None", self.r.get(keys.step_claim(mid)))

    def extend_claim(self, mid: str, token: str, ttl_s: int = keys.STEP_CLAIM_TTL_S) -> bool:
        """Extend our claim; True once it is extended (under Sentinel: and a replica holds the
        extension, as only that survives a failover; the local fence counts only those)."""
        ks = [keys.step_claim(mid)]
        args: list[str | int] = [token, ttl_s]
        if not self.replicas:
            return bool(self._extend(keys=ks, args=args))
        # not `replicated`: a heartbeat asks once and must not disconnect the pool the step's
        # own commands are using; the next beat asks again
        with self.r.pipeline(transaction=False) as p:
            self._extend(keys=ks, args=args, client=p)
            p.execute_command("WAIT", self.replicas, self.replication_timeout_ms)
            extended, acked = p.execute()
        return bool(extended) and int(acked) >= self.replicas

    def release_claim(self, mid: str, token: str) -> bool:
        return bool(self._release(keys=[keys.step_claim(mid)], args=[token]))


class Heartbeat:
    """Calls `beat` every `every_s` on a thread of its own while a step runs."""

    def __init__(self, beat: Callable[[], object], every_s: float, name: str):
        self.beat, self.every_s = beat, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except redis.RedisError:
                pass  # the next beat retries; every TTL is several beats long

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class LeaseKeeper(Heartbeat):
    """Extends a VM lease every `every_s` while a long step runs."""

    def __init__(self, locks: VMLocks, vm_id: str, mid: str, every_s: float = 30.0):
        super().__init__(lambda: locks.extend(vm_id, mid), every_s, f"lease-{mid}")
