"""The root of every exception quickmig raises on purpose.

`QuickmigError` is what a caller catches to tell quickmig's own refusals and failures
from a bug. `Retryable` marks the faults that trying the same step again later can fix
(a host or a share that could not be reached, a file someone else holds open); the step
framework retries those with backoff and routes everything else to rollback or failure.
Each package keeps its own subtree (`workers.hyperv.errors`, `workers.smb.errors`, ...)
under this root.
"""
from __future__ import annotations


class QuickmigError(Exception):
    """A failure or refusal quickmig raised on purpose; the message says what to fix."""

    retryable = False


class Retryable(QuickmigError):
    """A transient fault: the same step may succeed when tried again later."""

    retryable = True


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again may help: quickmig's transient faults, and the standard library's
    connection and timeout errors raised by a library underneath."""
    return isinstance(exc, (Retryable, ConnectionError, TimeoutError))


class Fenced(QuickmigError):
    """Our lease, token or step claim is no longer current (or may not be): another actor may
    own this VM now, so this delivery stops before its next destructive step and is dropped."""
