"""Groups of a plan that switch over together (docs/plans.md, "Groups that switch over together").

A member of such a group carries `member_of.together` (the group's size) in its record. Its
cutover step (workers.steps.cutover) arrives at the group's barriers (workers.coord.group_barrier)
and ends its task while the group waits; the last member in sends the cutover step to every
other member. Any member that cannot cut over before the group's point of no return aborts
the group: every other member is rolled back, those before their downtime as a cancel does,
those in the cutover step by sending it to them (it sees the abort and rolls back in place).
The reconciler (`sweep`) aborts a group that waited past its bounds, and sends the step again
to members a crashed last-in never told.
"""
from __future__ import annotations

import logging
import time

from workers.coord.group_barrier import IMPORTED, PREPARED, GroupBarrier, Verdict
from workers.engine import context, plans
from workers.engine.app import app
from workers.model import routing, states
from workers.model.record import StaleState

log = logging.getLogger("quickmig.together")

# How long a group waits at each barrier before it rolls back. At `prepared` every member still
# runs on its source, so the bound only has to cover the slowest member's copy catching up with
# the first (a plan's group may set its own: `prepared_wait`, for members whose copies differ by
# hours); at `imported` the members are down, so it is short: from the group's go, the time the
# cutover pool needs to save, copy the rest of and import every member.
PREPARED_WAIT_S = 3600.0
IMPORTED_WAIT_S = 300.0
# A member whose Save-VM would start more than this after the group's go rolls the group back:
# the members' downtimes start within this spread (docs/plans.md).
SPREAD_S = 120.0

# before the downtime a member is rolled back as `quickmig cancel` does
_BEFORE_DOWNTIME = {states.QUEUED, states.SNAPSHOTTING, states.COPYING, states.PREPARING}


def prepared_wait_s(own: float | None) -> float:
    """The bound on a group's wait at `prepared`: its own `prepared_wait`, else the default."""
    return float(own or PREPARED_WAIT_S)


def is_member(rec: dict) -> bool:
    return bool((rec.get("member_of") or {}).get("together"))


def barrier(rec: dict) -> GroupBarrier:
    m = rec["member_of"]
    return GroupBarrier(context.store().r, m["plan"], m["group"], m["together"])


def arrive(rec: dict, phase: str) -> Verdict:
    """Arrive at `phase`; the last member in sends the cutover step to the others."""
    bound = prepared_wait_s(rec["member_of"].get("prepared_wait_s")) if phase == PREPARED else IMPORTED_WAIT_S
    v = barrier(rec).arrive(phase, rec["id"], bound)
    if v.what == "last":
        _send_to_others(rec["member_of"], rec["id"])
    elif v.what == "abort":
        _roll_back_others(rec["member_of"], rec["id"], v.why)
    return v


def _passed(phase: str | None, st: dict) -> bool:
    """Whether the barrier a member waits at (`phase`) has let the group through."""
    return (phase == PREPARED and "go_at" in st) or (phase == IMPORTED and "start_at" in st)


def parked(rec: dict) -> bool:
    """A member waiting, with no task, at a barrier of its group that has neither let the group
    through nor been aborted: not stuck. sweep() sends it on once the group passes, and rolls
    the group back at its bounds; the reconciler's re-sends would only wake it to wait again."""
    if not is_member(rec) or rec["state"] != states.CUTTING_OVER or rec.get("group_waiting") is None:
        return False
    st = barrier(rec).state()
    return "abort" not in st and not _passed(rec["group_waiting"], st)


def spread_exceeded(rec: dict) -> str | None:
    """Why this member must not save now: the group's go was more than SPREAD_S ago."""
    go = barrier(rec).state().get("go_at")
    if go is not None and time.time() - go > SPREAD_S:
        return (f"its Save-VM would start {time.time() - go:.0f} s after the group's go, more than the "
                f"{SPREAD_S:g} s its members' downtimes may be apart")
    return None


def abort(rec: dict, why: str) -> None:
    """`rec` cannot cut over: unless the group is past its point of no return, roll back
    every member (no-op for a migration outside a together group)."""
    if not is_member(rec):
        return
    reason = f"group {rec['member_of']['group']} rolled back: {rec['member_of'].get('member') or rec['vm']}: {why}"
    if barrier(rec).abort(reason) == 1:
        log.warning("[%s] %s", rec["id"], reason)
        _roll_back_others(rec["member_of"], rec["id"], reason)


def _member_ids(member_of: dict, but: str) -> list[str]:
    """The migrations of the group's released members, but `but`."""
    plan = plans.load(context.store().r, member_of["plan"])
    if plan is None:
        return []
    g = next((g for g in plan["groups"] if g["name"] == member_of["group"]), None)
    return [m["migration"] for m in (g or {}).get("members", []) if m.get("migration") and m["migration"] != but]


def _send_to_others(member_of: dict, but: str) -> None:
    store = context.store()
    for mid in _member_ids(member_of, but):
        try:
            if store.get(mid)["state"] == states.CUTTING_OVER:
                app.send_task(routing.CUTOVER, args=[mid])
        except Exception:
            log.exception("[%s] could not send the cutover step to group member %s", but, mid)


def _roll_back_others(member_of: dict, but: str, why: str, skip_busy: bool = False) -> None:
    """Every other member rolls back: before its downtime as a cancel does; in the cutover
    step by that step, which sees the abort (the message waits while its claim is held; with
    `skip_busy` none is sent to a member whose step runs: it sees the abort at its next
    barrier by itself)."""
    store, adm, locks = context.store(), context.admission(), context.locks()
    for mid in _member_ids(member_of, but):
        try:
            other = store.get(mid)
            if other["state"] in _BEFORE_DOWNTIME:
                try:
                    store.transition(mid, _BEFORE_DOWNTIME, states.ROLLING_BACK, error=why)
                except StaleState as e:
                    if e.actual == states.CUTTING_OVER:
                        app.send_task(routing.CUTOVER, args=[mid])
                    continue
                adm.withdraw(mid)
                app.send_task(routing.ROLLBACK, args=[mid])
            elif other["state"] == states.CUTTING_OVER and not (skip_busy and locks.claim_holder(mid)):
                app.send_task(routing.CUTOVER, args=[mid])
        except Exception:
            log.exception("[%s] could not roll back group member %s", but, mid)


def sweep(now: float | None = None) -> list[str]:
    """For the reconciler: abort each together group of a running plan that waited past a
    bound, and send the cutover step to members of a group that passed a barrier (or was
    aborted) but that still wait (the member that should have told them died). Returns
    what was done, one line per group."""
    now = time.time() if now is None else now
    r, store, locks = context.store().r, context.store(), context.locks()
    done = []
    for pid in plans.running_ids(r):
        plan = plans.load(r, pid)
        for g in (plan or {}).get("groups", []):
            if g.get("switchover") != "together":
                continue
            mids = [m["migration"] for m in g["members"] if m.get("migration")]
            if not mids:
                continue
            bar = GroupBarrier(r, pid, g["name"], len(g["members"]))
            why = bar.overdue(now, prepared_wait_s(g.get("prepared_wait_s")), IMPORTED_WAIT_S)
            if why and bar.abort(f"group {g['name']} rolled back: {why}") == 1:
                done.append(f"{pid}/{g['name']}: aborted: {why}")
            st = bar.state()
            if "abort" in st:
                _roll_back_others({"plan": pid, "group": g["name"]}, "", st["abort"], skip_busy=True)
                continue
            for mid in mids:
                if locks.claim_holder(mid):
                    continue
                rec = store.get(mid)
                if rec["state"] == states.CUTTING_OVER and _passed(rec.get("group_waiting"), st):
                    app.send_task(routing.CUTOVER, args=[mid])
                    done.append(f"{pid}/{g['name']}: sent the cutover step again to {mid}")
    return done
