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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import redis

from workers.coord import redis_lua
from workers.coord.locks import Heartbeat
from workers.model import keys

_TAKE = redis_lua.load("iso_take")

_LEAVE = redis_lua.load("iso_leave")

_DELETED = redis_lua.load("iso_deleted")


def _keys(destination: str, path: str) -> list[str]:
    return [keys.iso_lease(destination, path), keys.iso_users(destination, path),
            keys.iso_ours(destination, path)]


class SharedFiles:
    def __init__(self, client: redis.Redis, ttl_s: int = keys.ISO_LEASE_TTL_S, poll_s: float = 0.5):
        self.r = client
        self.ttl_s, self.poll_s = ttl_s, poll_s
        self._take = client.register_script(_TAKE)
        self._extend = client.register_script(redis_lua.load("extend_if_holder"))
        self._return = client.register_script(redis_lua.load("release_if_holder"))
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
        return cast("set[str]", self.r.smembers(keys.iso_users(destination, path)))

    def leave(self, destination: str, path: str, mid: str) -> bool:
        """Stop using the image; True when the caller must delete it (it was ours and no one
        else uses it), and then holds its lease until `deleted`. Asking again gives the same
        answer until `deleted` is called."""
        return self._leave(keys=_keys(destination, path), args=[mid, self.ttl_s]) == "delete"

    def deleted(self, destination: str, path: str, mid: str) -> None:
        """The image is gone: drop its marker and give the lease back."""
        ks = _keys(destination, path)
        self._deleted(keys=[ks[0], ks[2]], args=[mid])
