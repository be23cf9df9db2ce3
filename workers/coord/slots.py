"""Copy slots: at most K copies reading from one host and K writing to one host.

K is the host's `max_copies` in quickmig.toml. A copy takes both its slots (read on the
source, write on the destination) in one atomic step or none, so two copies never each
hold half of what the other needs. Each host's holders are a sorted set scored by expiry
(docs/design.md section 6): a holder heartbeats while it copies, and one that died (SIGKILL) stops
counting after keys.COPY_SLOT_TTL_S. Every acquisition and release is appended to
keys.COPY_SLOT_LOG with Redis' clock, so anyone can check the limit was never exceeded.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from workers.coord import audit, redis_lua
from workers.coord.locks import Heartbeat
from workers.model import keys

_ACQUIRE = redis_lua.load("slots_acquire", audit=True)

_RELEASE = redis_lua.load("slots_release", audit=True)

_EXTEND = redis_lua.load("slots_extend", audit=True)


class CopySlots:
    def __init__(self, client: redis.Redis, ttl_s: float = keys.COPY_SLOT_TTL_S, poll_s: float = 0.5):
        self.r = client
        self.ttl_s, self.poll_s = ttl_s, poll_s
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    @staticmethod
    def _keys(source: str, destination: str) -> list[str]:
        return [keys.copy_slots("read", source), keys.copy_slots("write", destination)]

    def try_acquire(self, holder: str, source: str, destination: str, k_read: int, k_write: int) -> bool:
        return bool(self._acquire(keys=self._keys(source, destination),
                                  args=[holder, self.ttl_s, int(k_read), int(k_write), keys.COPY_SLOT_LOG,
                                        source, destination, keys.COPY_SLOT_LOG_MAX]))

    def release(self, holder: str, source: str, destination: str) -> None:
        self._release(keys=self._keys(source, destination),
                      args=[holder, keys.COPY_SLOT_LOG, source, destination, keys.COPY_SLOT_LOG_MAX])

    @contextmanager
    def hold(self, holder: str, source: str, destination: str, k_read: int, k_write: int,
             on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Wait for a read slot on `source` and a write slot on `destination`, hold them
        (heartbeating) for the body, release them after."""
        waited = False
        while not self.try_acquire(holder, source, destination, k_read, k_write):
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(self.poll_s)
        try:  # a slot lives ttl_s; a beat that meets a Redis error is retried by the next one
            with Heartbeat(lambda: self._extend(keys=self._keys(source, destination), args=[holder, self.ttl_s]),
                           self.ttl_s / 3, "copy-slot-heartbeat"):
                yield
        finally:
            self.release(holder, source, destination)

    def log(self) -> list[dict]:
        return audit.read(self.r, keys.COPY_SLOT_LOG)


def max_concurrency(events: list[dict]) -> dict[tuple[str, str], int]:
    """From a slot log: the most holders at once per ("read"|"write", host)."""
    return audit.peak((e["at"], (direction, e[direction]), e["holder"], e["event"] == "acquire")
                      for e in events for direction in ("read", "write"))
