"""What every pipeline task shares: entering its state, fencing, retries, failure routing.

Each task receives only a migration id. It enters its state with a compare-and-set; a
message for a migration that has already moved on is a duplicate and is dropped, and a
message for a migration already in the task's own state is a redelivery and resumes.
"""
from __future__ import annotations

import logging
import time

from workers import context, metrics, states
from workers.celery import app
from workers.locks import Fenced
from workers.record import RecordNotFound, StaleState

log = logging.getLogger("quickmig")

MAX_RETRIES = 5


class HardFailure(Exception):
    """A failure that retrying cannot fix: roll back (or fail) with this message."""


def mlog(mid: str, phase: str) -> logging.LoggerAdapter:
    """A step's logger: its lines carry `mid` and `phase` as fields (see workers.logs)."""
    return logging.LoggerAdapter(log, {"mid": mid, "phase": phase})


def send(task: str, mid: str) -> None:
    app.send_task(task, args=[mid])


def enter(mid: str, expect: set[str], to: str) -> dict | None:
    """Move into `to` from `expect`, or resume if already there; None means drop."""
    store = context.store()
    try:
        return store.transition(mid, expect, to)
    except StaleState as e:
        if e.actual == to:
            return store.get(mid)
        return None


def resume(mid: str, state: str) -> dict | None:
    rec = context.store().get(mid)
    return rec if rec["state"] == state else None


def fence(rec: dict) -> None:
    """Called right before every destructive step."""
    context.locks().check(rec["vm_id"], rec["id"], rec["fence"])


def is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False)) or isinstance(exc, (ConnectionError, TimeoutError))


def start_rollback(mid: str, error: str) -> None:
    """Any failure before the destination VM is verified running ends here."""
    try:
        context.store().transition(mid, set(states.ACTIVE) - {states.FINISHING, states.ROLLING_BACK},
                                   states.ROLLING_BACK, error=error)
    except StaleState:
        return
    send("quickmig.rollback", mid)


def end(mid: str, to: str, **fields) -> dict:
    """Reach an end state: stamp it, release the VM, count it."""
    store = context.store()
    rec = store.get(mid)
    rec = store.transition(mid, {rec["state"]}, to, **fields)
    context.locks().release(rec["vm_id"], mid)
    metrics.observe_end(rec)
    return rec


def _counting_failures(step: str, fn):
    """Count every failed run of a step by exception type (a dropped duplicate is no failure)."""
    def run(mid: str, lg) -> None:
        try:
            fn(mid, lg)
        except (Fenced, RecordNotFound):
            raise
        except Exception as e:
            metrics.task_failed(step, e)
            raise
    return run


def pipeline_task(name: str, *, on_hard_failure, retry_transient: bool = True):
    """Wrap a step: drop duplicates and fenced deliveries, retry transient faults with
    backoff, hand hard failures to `on_hard_failure(mid, message)`."""

    def deco(fn):
        fn = _counting_failures(name.split(".")[-1], fn)

        @app.task(name=name, bind=True, max_retries=MAX_RETRIES, acks_late=True)
        def task(self, mid: str):
            lg = mlog(mid, name.split(".")[-1])
            t0 = time.monotonic()
            try:
                fn(mid, lg)
            except (Fenced, RecordNotFound) as e:
                lg.warning("dropped: %s", e)
            except Exception as e:  # noqa: BLE001 - every failure must route somewhere
                if retry_transient and is_retryable(e) and self.request.retries < MAX_RETRIES:
                    delay = min(60, 2 ** self.request.retries)
                    lg.warning("transient failure, retry %d in %ds: %s", self.request.retries + 1, delay, e)
                    raise self.retry(exc=e, countdown=delay)
                lg.error("failed: %s: %s", type(e).__name__, e)
                on_hard_failure(mid, f"{name.split('.')[-1]}: {e}")
            else:
                lg.info("done in %.2fs", time.monotonic() - t0)

        task.__wrapped_step__ = fn
        return task

    return deco
