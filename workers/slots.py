"""Copy slots: at most K copies reading from one host and K writing to one host.

K is the host's `max_copies` in quickmig.toml. A copy takes both its slots (read on the
source, write on the destination) in one atomic step or none, so two copies never each
hold half of what the other needs. Each host's holders are a sorted set scored by expiry
(DESIGN section 6): a holder heartbeats while it copies, and one that died (SIGKILL) stops
counting after keys.COPY_SLOT_TTL_S. Every acquisition and release is appended to
keys.COPY_SLOT_LOG with Redis' clock, so anyone can check the limit was never exceeded.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import redis

from workers import audit, keys
from workers.locks import Heartbeat

_ACQUIRE = audit.LUA_PRELUDE + """
local holder, ttl = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, holder) and redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, holder)
end
audit(ARGV[5], ARGV[8], {event = 'acquire', holder = holder, read = ARGV[6], write = ARGV[7]})
return 1
"""

_RELEASE = audit.LUA_PRELUDE + """
local held = 0
for _, key in ipairs(KEYS) do
  held = held + redis.call('ZREM', key, ARGV[1])
end
if held > 0 then
  audit(ARGV[2], ARGV[5], {event = 'release', holder = ARGV[1], read = ARGV[3], write = ARGV[4]})
end
return held
"""

_EXTEND = audit.LUA_PRELUDE + """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
return 1
"""


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
             on_wait=None) -> Iterator[None]:
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
