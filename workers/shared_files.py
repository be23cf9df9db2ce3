"""ISO images that several VMs on one destination share.

Two migrations to one host may need the same ISO image at once: without care both write
the same `.partial` and both fail, and a migration that rolls back would delete an image
another VM there already uses. Per (destination, path) of an ISO:

- a lease: one migration at a time decides whether to copy the image or to share the one
  already there, and holds it while it copies (heartbeat; a killed holder's lease lapses);
- the set of migrations using the image: taking the lease joins it, in the same step, so a
  waiting migration is never missed by a rollback's count;
- a marker that quickmig itself put the image there. A rollback leaves the image while any
  other migration uses it and deletes it with its last user, and never an image that was
  there before quickmig came (which has no marker).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import redis

from workers import keys
from workers.locks import EXTEND_IF_HOLDER, RELEASE_IF_HOLDER, Heartbeat

_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return false
"""

# Leave the image: 'keep' while others use it (or it was never ours to delete), else take
# the lease (no one else may decide on the image while it is deleted) and say 'delete'.
# The marker goes only once the image is gone, so a rollback retried after a failed delete
# decides the same again.
_LEAVE = """
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[3]) == 0 then
  return 'keep'
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 'keep'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 'delete'
"""

_DELETED = """
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""


def _keys(destination: str, path: str) -> list[str]:
    return [keys.iso_lease(destination, path), keys.iso_users(destination, path),
            keys.iso_ours(destination, path)]


class SharedFiles:
    def __init__(self, client: redis.Redis, ttl_s: int = keys.ISO_LEASE_TTL_S, poll_s: float = 0.5):
        self.r = client
        self.ttl_s, self.poll_s = ttl_s, poll_s
        self._take = client.register_script(_TAKE)
        self._extend = client.register_script(EXTEND_IF_HOLDER)
        self._return = client.register_script(RELEASE_IF_HOLDER)
        self._leave = client.register_script(_LEAVE)
        self._deleted = client.register_script(_DELETED)

    @contextmanager
    def deciding(self, destination: str, path: str, mid: str,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the image's lease (waiting while another migration holds it) and be one of
        its users; the lease is given back on leaving, the use stays until `leave`."""
        ks = _keys(destination, path)
        told = False
        while True:
            holder = self._take(keys=ks[:2], args=[mid, self.ttl_s])
            if not holder:
                break
            if on_wait and not told:
                on_wait(holder)
                told = True
            time.sleep(self.poll_s)
        try:
            with Heartbeat(lambda: self._extend(keys=ks[:1], args=[mid, self.ttl_s]), self.ttl_s / 4,
                           f"iso-{mid}"):
                yield
        finally:
            self._return(keys=ks[:1], args=[mid])

    def mark_ours(self, destination: str, path: str) -> None:
        """quickmig is about to create the image: it may be deleted with its last user."""
        self.r.set(keys.iso_ours(destination, path), "1")

    def users(self, destination: str, path: str) -> set[str]:
        return set(self.r.smembers(keys.iso_users(destination, path)))

    def leave(self, destination: str, path: str, mid: str) -> bool:
        """Stop using the image; True when the caller must delete it (it was ours and no one
        else uses it), and then holds its lease until `deleted`. Asking again gives the same
        answer until `deleted` is called."""
        return self._leave(keys=_keys(destination, path), args=[mid, self.ttl_s]) == "delete"

    def deleted(self, destination: str, path: str, mid: str) -> None:
        """The image is gone: drop its marker and give the lease back."""
        ks = _keys(destination, path)
        self._deleted(keys=[ks[0], ks[2]], args=[mid])
