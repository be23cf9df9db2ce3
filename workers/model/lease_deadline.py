"""The local fence: how long this worker may still act on what its step claim guards.

The Redis fence (workers.coord.locks, `fence()`) asks Redis whether the lease, the token and
the step claim are still ours; a worker cut off from Redis cannot ask, and an answer it got
before the cut stops being true once its claim has lapsed and another delivery has taken it.
So each delivery also keeps the time its claim was last confirmed on its own monotonic clock,
and no destructive host call starts once that confirmation could have lapsed:

    deadline = confirmed + TTL * (1 - CLOCK_RATE_ERROR) - MARGIN_S

`confirmed` is the monotonic time at which the command that set the claim's TTL was *sent*
(Redis started its TTL after that); under Sentinel a confirmation counts only once a replica
holds it (a failover keeps only what reached the replica). MARGIN_S is documented, term by
term, in docs/design.md section 3.3 ("The local fence").
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from workers.model.errors import Fenced
from workers.model.keys import STEP_CLAIM_TTL_S

# A worker's clock may run this much slower than the Redis server's (a crystal without NTP
# drifts about 1e-4; ten times that, as a bound).
CLOCK_RATE_ERROR = 1e-3
# From the check to the host acting on the call: the script's one stdin message over an open
# WinRM connection on the LAN (a call sent later than this is not bounded by the fence).
DISPATCH_BOUND_S = 2.0
# The sentinels promote a replica whose wall clock may be ahead of the old master's (NTP keeps
# servers within ms; a second, as a bound): the claim's absolute expiry comes that much sooner.
REDIS_CLOCK_OFFSET_S = 1.0
MARGIN_S = DISPATCH_BOUND_S + REDIS_CLOCK_OFFSET_S


class LeaseExpired(Fenced):
    """The step claim's last confirmation is too old for a destructive call to be safe."""


class LeaseClock:
    """The deadline of one delivery's step claim, on this process's monotonic clock."""

    def __init__(self, ttl_s: float = STEP_CLAIM_TTL_S, margin_s: float = MARGIN_S,
                 now: Callable[[], float] = time.monotonic):
        self.ttl_s, self.margin_s, self.now = float(ttl_s), float(margin_s), now
        self._confirmed: float | None = None
        self._lock = threading.Lock()

    def confirmed(self, sent_at: float) -> None:
        """A claim or extension sent at `sent_at` (monotonic) was acknowledged."""
        with self._lock:
            if self._confirmed is None or sent_at > self._confirmed:
                self._confirmed = sent_at

    def deadline(self) -> float | None:
        with self._lock:
            if self._confirmed is None:
                return None
            return self._confirmed + self.ttl_s * (1 - CLOCK_RATE_ERROR) - self.margin_s

    def check(self, op: str) -> None:
        """Raise LeaseExpired if `op` may no longer start."""
        with self._lock:
            confirmed = self._confirmed
        deadline = self.deadline()
        now = self.now()
        if confirmed is None or deadline is None or now > deadline:
            age = "never" if confirmed is None else f"{now - confirmed:.1f}s ago"
            raise LeaseExpired(f"{op} not started: the step claim was last confirmed {age}, so it may "
                               f"have passed to another delivery (TTL {self.ttl_s:g}s, margin {self.margin_s:g}s)")


_held = threading.local()


@contextlib.contextmanager
def holding(clock: LeaseClock) -> Iterator[LeaseClock]:
    """This thread's destructive host calls check `clock` while the block runs."""
    before = getattr(_held, "clock", None)
    _held.clock = clock
    try:
        yield clock
    finally:
        _held.clock = before


def current() -> LeaseClock | None:
    return getattr(_held, "clock", None)


def check(op: str) -> None:
    """Before a destructive host call: raise LeaseExpired if this thread holds a step claim
    whose confirmation could have lapsed. Outside a step (a lab command, the CLI) there is no
    claim and nothing to check."""
    clock = current()
    if clock is not None:
        clock.check(op)
