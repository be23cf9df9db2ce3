"""The reconciler: no migration stays stuck (docs/design.md section 3.4).

Celery beat runs `quickmig.reconcile` every RECONCILE_EVERY_S. Each pass extends the VM
lease of every active migration it still holds (a migration may wait in line for a place
on its hosts longer than a lease lives). A migration is stuck when
no task holds its step claim and its record has not changed for longer than its state's
deadline: the message that should carry it on was lost (its worker's main process died
with the message unacked, a hand-off was cut between the state change and the send).
The reconciler re-sends the step for that state (every step is idempotent and resumes),
at most `max_nudges` times per state; after that it rolls the migration back, or, once
the VM runs on the destination or a rollback itself is stuck, ends it `failed` with what
is left to do by hand. A stuck cutover is only ever re-sent: the cutover step itself
rolls forward when the destination VM already started, back when it did not.

A `queued` migration waiting for admission (workers.coord.admission) is not stuck: it waits for
a place on its hosts, however long that takes. Its deadline counts from its admission.
Each pass also gives back the places of migrations that ended or vanished without passing
through workers.engine.step.end (a worker killed in between), and runs an admission pass.

Deadlines come from `[reconciler]` in quickmig.toml (defaults: workers.model.config.RECONCILER_DEADLINES_S).
"""
from __future__ import annotations

import json
import logging
import time

from workers.engine import context, plans, together
from workers.engine.app import RECONCILE_EVERY_S, app
from workers.engine.step import StepClaim, admit_waiting, end, send, start_rollback
from workers.model import keys, routing, states
from workers.model.record import RecordNotFound

log = logging.getLogger("quickmig.reconciler")

def _give_up(rec: dict, why: str) -> str:
    mid, st = rec["id"], rec["state"]
    if st == states.FINISHING:
        end(mid, states.FAILED, error=f"{why} (the VM runs on the destination; clean the source by hand)")
        return "failed"
    if st == states.ROLLING_BACK:
        end(mid, states.FAILED, error=f"rollback incomplete: {why}; check the VM on {rec['source']} "
                                      f"and remove what was copied to {rec['destination']}")
        return "failed"
    start_rollback(mid, why)
    return "rolling_back"


def waiting_ids(r) -> str:
    """Every message waiting in a pool's queue, as one string to search for migration ids.

    A migration whose message waits behind a backlog is not stuck; one whose message is
    nowhere in a queue (lost, or held unacked by a worker that died) is."""
    return "\n".join(m for q in routing.QUEUES for m in r.lrange(q, 0, -1))


def _recently_active(rec: dict, now: float, deadline: float) -> bool:
    """Changed within the deadline, or a step's retry or its next look at a cutover window
    (held by a worker until its countdown ends, so in no queue) is due within it: a step
    waiting for its countdown is not stuck."""
    last = max(rec["updated_at"], (rec.get("retry") or {}).get("next_at", 0), rec.get("resume_at") or 0)
    return now - last < deadline


def reconcile_one(mid: str, deadlines: dict, max_nudges: int, now: float | None = None,
                  waiting: str = "") -> str | None:
    """Look at one migration; returns what was done (None when nothing was needed)."""
    store, locks = context.store(), context.locks()
    try:
        rec = store.get(mid)
    except RecordNotFound:
        store.forget_active(mid)
        return None
    st = rec["state"]
    if st in states.ENDS:
        store.forget_active(mid)
        return None
    # The VM's lease lives VM_LOCK_TTL_S; steps extend it while they work, and this pass
    # keeps it for a migration between steps or waiting in line, however long that is.
    locks.extend(rec["vm_id"], mid)
    if locks.claim_holder(mid):
        return None  # a task is working on it right now (its heartbeat keeps the claim)
    now = time.time() if now is None else now
    if st == states.QUEUED and not context.admission().holds(mid, rec["source"]):
        return _not_admitted(rec, now, deadlines[st])
    if _recently_active(rec, now, deadlines[st]) or mid in waiting or together.parked(rec):
        return None
    with StepClaim(mid) as claim:
        if claim.token is None:
            return None
        rec = store.get(mid)  # it may have moved while we looked
        if rec["state"] != st or _recently_active(rec, now, deadlines[st]):
            return None
        seen = rec.get("reconciler") or {}
        nudges = seen.get("nudges", 0) if seen.get("state") == st else 0
        idle = round(now - rec["updated_at"], 1)
        # Only the cutover step can tell whether the destination VM already ran (then only
        # forward is safe), so a stuck cutover is re-sent, never rolled back from here.
        if nudges >= max_nudges and st != states.CUTTING_OVER:
            why = f"stuck in {st}: no progress after {nudges} re-sends of its step"
            log.warning("[%s] %s; giving up", mid, why)
            return _give_up(rec, why)
        store.set(mid, reconciler={"state": st, "nudges": nudges + 1, "at": now, "idle_s": idle})
        log.warning("[%s] %s for %.0fs with no task on it; re-sending %s (%d/%d)",
                    mid, st, idle, routing.STEP_OF[st], nudges + 1, max_nudges)
        send(routing.STEP_OF[st], mid)
        return "resent"


def _not_admitted(rec: dict, now: float, deadline_s: float) -> str | None:
    """A queued migration without its places either waits in line (not stuck), or was lost
    on its way there (the producer died between creating it and putting it in line)."""
    adm = context.admission()
    if adm.is_waiting(rec["id"]) or now - rec["updated_at"] < deadline_s:
        return None
    log.warning("[%s] queued but neither admitted nor in line; putting it in line", rec["id"])
    adm.wait(rec["id"], rec["source"], rec["destination"])
    return "in line"


def sweep_admission() -> list[str]:
    """Give back the places of migrations that ended or vanished, take them out of the
    line, then admit whoever now fits; returns the ids released."""
    store, adm = context.store(), context.admission()
    places: dict[str, list[str]] = {}
    for host in adm.limits:
        for mid in adm.holders(host):
            places.setdefault(mid, []).append(host)
    for mid in adm.waiting_ids():
        places.setdefault(mid, [])
    ids = sorted(places)
    raws = store.r.mget([keys.migration(m) for m in ids]) if ids else []
    released = []
    for mid, raw in zip(ids, raws, strict=True):
        if raw is None or json.loads(raw)["state"] in states.ENDS:
            adm.release(mid, places[mid])
            released.append(mid)
    admit_waiting(adm)
    return released


@app.task(name=routing.RECONCILE, acks_late=False, ignore_result=True)
def reconcile() -> dict:
    r = context.store().r
    # one pass at a time across all pool processes; the lock lapses by itself
    if not r.set(keys.RECONCILER_LOCK, "1", nx=True, ex=RECONCILE_EVERY_S):
        return {}
    try:
        settings = context.config().reconciler
        deadlines, max_nudges = settings.deadlines_s, settings.max_nudges
        done: dict[str, str] = {}
        for mid in sweep_admission():
            done[mid] = "places given back"
        for pid in plans.running_ids(r):  # a plan carries on whoever applied it
            try:
                if plans.advance(context.store(), context.locks(), context.admission(), pid, wait_s=0):
                    admit_waiting()
            except Exception:
                log.exception("[plan %s] advance failed", pid)
        try:  # a together group waits neither forever nor for a message its last member never sent
            for line in together.sweep():
                log.warning("[together] %s", line)
        except Exception:
            log.exception("[together] sweep failed")
        waiting = waiting_ids(r)
        for mid in context.store().active_ids():
            try:
                what = reconcile_one(mid, deadlines, max_nudges, waiting=waiting)
            except Exception:
                log.exception("[%s] reconcile failed", mid)
                continue
            if what:
                done[mid] = what
        return done
    finally:
        r.delete(keys.RECONCILER_LOCK)
