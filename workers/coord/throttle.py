"""Bandwidth limits for copies, shared by every copy process through Redis.

Two limits apply to every chunk a copy reads: the global one and the one of its
(source, destination) host pair, in bytes per second, read from Redis on every chunk
(`quickmig throttle set ...` changes them while copies run; 0 or unset = unlimited).

Each limit is a reservation clock (GCRA): its state is the time up to which its budget is
already promised. A chunk of n bytes may start at max(now, every limit's clock), and moves
every clock to that start plus n / rate. Time comes from Redis, so all processes share
one clock, and idle time is not saved up into a burst. Over any window the bytes started
are at most rate x window plus one chunk per stream in flight; with 8 MiB chunks and limits
of 10 MB/s or more that is within 10% over 10 s.
"""
from __future__ import annotations

import time

import redis

from workers.coord import redis_lua
from workers.model import keys
from workers.model.errors import QuickmigError

_RESERVE = redis_lua.load("throttle_reserve")


class ThrottleError(QuickmigError, ValueError):
    """A limit that makes no sense (negative, not a number)."""


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def parse_rate(text: str) -> int:
    """'125000000', '125M', '1.5G' -> bytes per second."""
    t = str(text).strip().upper().removesuffix("B/S").removesuffix("/S")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = float(t[:-1] if unit else t) * _UNITS[unit]
    except ValueError:
        raise ThrottleError(f"{text!r} is not a rate (bytes per second, e.g. 125000000 or 125M)") from None
    if value < 0 or value != value:
        raise ThrottleError(f"a limit cannot be negative ({text})")
    return int(value)


class Throttle:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._reserve = client.register_script(_RESERVE)

    def _keys(self, source: str, destination: str) -> list[str]:
        out = []
        for limit in (keys.THROTTLE_GLOBAL, keys.throttle_pair(source, destination)):
            out += [limit, keys.throttle_state(limit)]
        return out

    def reserve(self, source: str, destination: str, nbytes: int) -> float:
        """Promise `nbytes` of both limits' budget; returns how long to wait before moving them."""
        return max(0.0, float(self._reserve(keys=self._keys(source, destination), args=[int(nbytes)])))

    def wait(self, source: str, destination: str, nbytes: int) -> float:
        """Block until `nbytes` may move from source to destination; returns the seconds waited."""
        delay = self.reserve(source, destination, nbytes)
        if delay > 0:
            time.sleep(delay)
        return delay

    def set(self, bytes_per_s: int, pair: tuple[str, str] | None = None) -> None:
        """Set the global limit, or a pair's; 0 removes it."""
        try:
            value = int(bytes_per_s)
        except (TypeError, ValueError):
            raise ThrottleError(f"a limit is a whole number of bytes per second, not {bytes_per_s!r}") from None
        if value < 0:
            raise ThrottleError(f"a limit cannot be negative ({value})")
        key = keys.throttle_pair(*pair) if pair else keys.THROTTLE_GLOBAL
        if value == 0:
            self.r.delete(key)
        else:
            self.r.set(key, value)

    def limits(self) -> dict:
        """{"global": bytes/s or None, "pairs": {"SRC->DST": bytes/s}}."""
        prefix = keys.throttle_pair("", "")[:-1]
        pairs = {}
        for key in self.r.scan_iter(match=prefix + "*"):
            src, _, dst = key[len(prefix):].partition(":")
            pairs[f"{src}->{dst}"] = int(self.r.get(key) or 0)
        g = self.r.get(keys.THROTTLE_GLOBAL)
        return {"global": int(g) if g else None, "pairs": pairs}
