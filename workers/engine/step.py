"""The step framework: what every step of a migration shares: entering its state, fencing, retries, failure routing.

Each task receives only a migration id. It enters its state with a compare-and-set; a
message for a migration that has already moved on is a duplicate and is dropped, and a
message for a migration already in the task's own state is a redelivery and resumes.

One delivery at a time works on a migration: a task first takes the migration's step
claim (a short lease kept alive by a heartbeat). A delivery that finds the claim taken
comes back a little later if its step is still the migration's current one (the holder
may have been killed; its claim then lapses within STEP_CLAIM_TTL_S), else it is a stale
duplicate and is dropped. The messages a step sends to the next one leave only after
the claim is released, so a hand-off never meets its own claim; if the worker dies in
between, the reconciler re-sends the step.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from workers.coord.admission import Admission, admit_and_send
from workers.coord.locks import Fenced, Heartbeat
from workers.engine import context, markers, plans, together
from workers.engine.app import app
from workers.model import keys, lease_deadline, routing, states
from workers.model.errors import QuickmigError, is_retryable
from workers.model.record import RecordNotFound, StaleState
from workers.obs import metrics

log = logging.getLogger("quickmig")

MAX_RETRIES = 5
MAX_RETRY_DELAY_S = 60
CLAIM_BEAT_S = keys.STEP_CLAIM_TTL_S / 4
CLAIM_BUSY_RETRY_S = 2

# The step claim this thread holds, and the messages to send once it is released.
_held = threading.local()


class HardFailure(QuickmigError):
    """A failure that retrying cannot fix: roll back (or fail) with this message."""


def mlog(mid: str, phase: str) -> logging.LoggerAdapter:
    """A step's logger: its lines carry `mid` and `phase` as fields (see workers.obs.logs)."""
    return logging.LoggerAdapter(log, {"mid": mid, "phase": phase})


def send(task: str, mid: str) -> None:
    outbox = getattr(_held, "outbox", None)
    if outbox is not None:
        outbox.append((task, mid))
    else:
        app.send_task(task, args=[mid])


def current_claim() -> str | None:
    return getattr(_held, "token", None)


class Later(QuickmigError):
    """A step has nothing to do for `seconds` (a cutover window that has not opened yet):
    the step ends, which frees its worker and its step claim, and is sent again with that
    countdown. `why` goes into the record (`waiting`), and `resume_at` tells the reconciler
    the migration is not stuck until then."""

    def __init__(self, seconds: float, why: str):
        super().__init__(why)
        self.seconds, self.why = max(0.0, seconds), why


class StepClaim:
    """Hold `mid`'s step claim for a block; sends queued inside leave after release."""

    def __init__(self, mid: str):
        self.mid = mid
        self.token: str | None = None

    def __enter__(self) -> StepClaim:
        locks = context.locks()
        sent_at = time.monotonic()
        self.token = locks.claim_step(self.mid)
        if self.token is not None:
            _held.token, _held.outbox = self.token, []
            # the local fence: no destructive host call once this claim could have lapsed
            self._locks, self.clock = locks, lease_deadline.LeaseClock()
            if not locks.replicas:  # under Sentinel the first beat, replicated, confirms it
                self.clock.confirmed(sent_at)
            self._holding = lease_deadline.holding(self.clock)
            self._holding.__enter__()
            self._beat = Heartbeat(self._extend, CLAIM_BEAT_S, f"claim-{self.mid}")
            try:
                self._beat.__enter__()
            except BaseException:
                self._holding.__exit__(None, None, None)
                raise
        return self

    def _extend(self) -> None:
        sent_at = time.monotonic()
        if self._locks.extend_claim(self.mid, self.token):
            self.clock.confirmed(sent_at)

    def __exit__(self, *exc) -> None:
        if self.token is None:
            return
        self._beat.__exit__()
        self._holding.__exit__(None, None, None)
        outbox, _held.token, _held.outbox = _held.outbox, None, None
        context.locks().release_claim(self.mid, self.token)
        for task, mid in outbox:
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
    """Called right before every destructive step: the VM lease, its token and (inside a
    task) this delivery's step claim must all still be ours."""
    context.locks().check(rec["vm_id"], rec["id"], rec["fence"], claim=current_claim())


def start_rollback(mid: str, error: str) -> None:
    """Any failure before the destination VM is verified running ends here."""
    try:
        rec = context.store().transition(mid, set(states.ACTIVE) - {states.FINISHING, states.ROLLING_BACK},
                                         states.ROLLING_BACK, error=error)
    except StaleState:
        return
    send(routing.ROLLBACK, mid)
    together.abort(rec, error)


def end(mid: str, to: str, **fields) -> dict:
    """Reach an end state: stamp it, release the VM, its copy resume records and its places on
    its hosts (admitting whoever waited for them), count it."""
    store = context.store()
    rec = store.get(mid)
    rec = store.transition(mid, {rec["state"]}, to, **fields)
    if to != states.FAILED and rec.get("created_files"):
        # a failed migration keeps its marker: what it left is someone's to look at
        try:
            markers.remove(rec)
        except Exception as e:  # noqa: BLE001 - the end stands; the orphan sweep removes it later
            logging.getLogger("quickmig").warning("[%s] marker on %s not removed (%s); the orphan sweep will",
                                                  mid, rec["destination"], e)
    context.locks().release(rec["vm_id"], mid)
    forget_copy_resume(rec)
    if to != states.COMPLETED:
        # a member that ended any other way (cancelled, say) did not cut over: its group neither
        together.abort(rec, rec.get("error") or to)
    if rec.get("member_of"):
        # the plan's next member queues now, before the places this one frees are handed out
        plans.advance(context.store(), context.locks(), context.admission(), rec["member_of"]["plan"])
    release_places(rec)
    metrics.observe_end(rec)
    return rec


def forget_copy_resume(rec: dict) -> None:
    """A copy cut short (cancel, rollback) leaves its resume records; nothing resumes an
    ended migration. Every file it wrote is in created_files before its first byte."""
    stale = [keys.copy_resume(rec["id"], p) for p in rec.get("created_files", [])]
    if stale:
        context.store().r.delete(*stale)


def release_places(rec: dict) -> None:
    adm = context.admission()
    adm.release(rec["id"], (rec["source"], rec["destination"]))
    admit_waiting(adm)


def admit_waiting(adm: Admission | None = None) -> list[str]:
    return admit_and_send(adm or context.admission(), context.store(), lambda mid: send(routing.SNAPSHOT, mid))


def _counting_failures(step: str, fn):
    """Count every failed run of a step by exception type (a dropped duplicate is no failure)."""
    def run(mid: str, lg) -> None:
        try:
            fn(mid, lg)
        except (Fenced, RecordNotFound, Later):
            raise
        except Exception as e:
            metrics.task_failed(step, e)
            raise
    return run


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Transient faults are retried `attempts` times, waiting 1, 2, 4 ... s, at most max_delay_s."""
    attempts: int = MAX_RETRIES
    max_delay_s: float = MAX_RETRY_DELAY_S

    def delay(self, retries: int) -> float:
        return min(self.max_delay_s, 2 ** retries)


def step_task(name: str, *, on_hard_failure, retry: RetryPolicy | None = RetryPolicy()):
    """Wrap a step: drop duplicates and fenced deliveries, retry transient faults with
    backoff (`retry`; None: never), hand hard failures to `on_hard_failure(mid, message)`."""

    def deco(fn):
        fn = _counting_failures(routing.short(name), fn)

        @app.task(name=name, bind=True, max_retries=retry.attempts if retry else 0, acks_late=True)
        def task(self, mid: str):
            lg = mlog(mid, routing.short(name))
            with StepClaim(mid) as claim:
                if claim.token is None:
                    _claim_busy(name, mid, lg)
                    return
                _run_step(self, fn, mid, lg, on_hard_failure, retry)

        task.__wrapped_step__ = fn
        return task

    return deco


def _claim_busy(name: str, mid: str, lg) -> None:
    try:
        rec = context.store().get(mid)
    except RecordNotFound:
        return
    if routing.STEP_OF.get(rec["state"]) == name:
        lg.info("another delivery holds the step claim; trying again in %ds", CLAIM_BUSY_RETRY_S)
        app.send_task(name, args=[mid], countdown=CLAIM_BUSY_RETRY_S)
    else:
        lg.info("dropped: duplicate delivery, migration is %s", rec["state"])


def _note_retry(mid: str, step: str, attempt: int, delay: float, exc: BaseException) -> None:
    """Say in the record that the step waits to retry, and until when: `quickmig status` shows
    it, and the reconciler leaves alone a migration whose retry is still to come (the waiting
    message is held by a worker, not in a queue, so it cannot see it otherwise)."""
    retry = {"step": step, "attempt": attempt, "next_at": round(time.time() + delay, 3),
             "reason": type(exc).__name__}
    try:
        context.store().set(mid, retry=retry)
    except Exception:  # noqa: BLE001 - Redis may be what failed; the retry goes ahead regardless
        pass


def _run_step(task, fn, mid: str, lg, on_hard_failure, retry: RetryPolicy | None) -> None:
    step = routing.short(task.name)
    t0 = time.monotonic()
    try:
        fn(mid, lg)
    except (Fenced, RecordNotFound, StaleState) as e:  # someone else moved it on: theirs now
        lg.warning("dropped: %s", e)
    except Later as later:
        why, resume_at = later.why, round(time.time() + later.seconds, 3)
        context.store().set(mid, waiting=why, resume_at=resume_at)
        app.send_task(task.name, args=[mid], countdown=later.seconds)
        lg.info("%s; again in %.0fs", why, later.seconds)
    except Exception as e:
        if retry and is_retryable(e) and task.request.retries < retry.attempts:
            delay = retry.delay(task.request.retries)
            lg.warning("transient failure, retry %d in %ds: %s", task.request.retries + 1, delay, e)
            _note_retry(mid, step, task.request.retries + 1, delay, e)
            raise task.retry(exc=e, countdown=delay) from e
        lg.error("failed: %s: %s", type(e).__name__, e)
        on_hard_failure(mid, f"{step}: {e}")
    else:
        lg.info("done in %.2fs", time.monotonic() - t0)
