"""Plans: releasing each member of a plan when its turn comes.

A plan record (keys.plan) holds the plan as `quickmig plan apply` checked it: its groups in
order, each member's VM (its id, found at apply), hosts and validated options, and the
migration each released member became. `advance` is the only thing that releases members:
the producer calls it once at apply, a worker each time a member's migration ends
(workers.engine.step.end) and the reconciler on every pass, so a plan carries on whether
or not the process that applied it is still there. One call at a time per plan
(keys.plan_lock); a call that finds the lock held leaves the work to the holder, and the
next pass catches anything it missed.

A member is released (its migration created and put in line for admission, exactly as
`quickmig migrate` would) when every group its group names in `after` has completed, every
member of those having completed, and fewer than `concurrency` of the plan's migrations are
running. Members queue in the order of the file. A group `after` one whose member failed
never starts (its members are `skipped`): an application tier does not move without the
tier it depends on. With `on_failure: stop`, the first failed member stops the release of
members not yet released; the running ones finish. A cancelled plan releases nothing more
(the producer cancels the running members). The plan ends when no member runs and none is
left to release: `completed` when every member completed, else `failed`, `stopped` or
`cancelled`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

from workers.coord.admission import Admission
from workers.coord.group_barrier import GroupBarrier
from workers.coord.locks import LockHeld, VMLocks
from workers.model import keys, states
from workers.model.record import Store, new_record
from workers.obs import metrics

RUNNING, ENDED = "running", ("completed", "failed", "stopped", "cancelled")
FAILED_STATES = (states.FAILED, states.ROLLED_BACK)


def load(r: redis.Redis, pid: str) -> dict | None:
    raw = r.get(keys.plan(pid))
    return json.loads(raw) if raw is not None else None


def save(r: redis.Redis, plan: dict) -> None:
    with r.pipeline() as p:
        p.set(keys.plan(plan["id"]), json.dumps(plan), ex=keys.RECORD_TTL_S)
        if plan["state"] == RUNNING:
            p.sadd(keys.PLANS_RUNNING, plan["id"])
        else:
            p.srem(keys.PLANS_RUNNING, plan["id"])
        p.execute()


def event(plan: dict, what: str, **extra: str) -> dict[str, str]:
    """The events stream's entry for a plan: `kind` plan (a migration's entries have none),
    `event` started, released (a member's migration was created) or ended, `new` the plan's
    state then."""
    return {"kind": "plan", "plan": plan["id"], "name": plan["name"], "event": what, "new": plan["state"],
            "at": repr(time.time()), **extra}


def _append(r: redis.Redis, maxlen: int, entry: dict[str, str]) -> None:
    r.xadd(keys.EVENTS, entry, maxlen=maxlen, approximate=True)


def create(r: redis.Redis, plan: dict, events_max_entries: int = keys.EVENTS_MAX_ENTRIES_DEFAULT) -> None:
    with r.pipeline() as p:
        p.set(keys.plan(plan["id"]), json.dumps(plan), ex=keys.RECORD_TTL_S, nx=True)
        p.zadd(keys.PLANS_INDEX, {plan["id"]: plan["created_at"]})
        p.sadd(keys.PLANS_RUNNING, plan["id"])
        p.xadd(keys.EVENTS, event(plan, "started"), maxlen=events_max_entries, approximate=True)
        p.execute()


def members(plan: dict) -> list[dict]:
    return [m for g in plan["groups"] for m in g["members"]]


def migration_states(r: redis.Redis, plan: dict) -> dict[str, dict]:
    """The record of each released member's migration, by member key (one round trip)."""
    released = [m for m in members(plan) if m.get("migration")]
    raws = r.mget([keys.migration(m["migration"]) for m in released]) if released else []
    return {m["key"]: json.loads(raw) for m, raw in zip(released, raws, strict=True) if raw is not None}


def member_state(m: dict, recs: dict[str, dict]) -> str:
    """pending (not released), skipped, refused, or its migration's state."""
    if m.get("skipped"):
        return "skipped"
    if m.get("refused"):
        return "refused"
    if not m.get("migration"):
        return "pending"
    rec = recs.get(m["key"])
    return rec["state"] if rec is not None else states.FAILED  # a record gone: nothing to wait for


def _ended(st: str) -> bool:
    return st in states.ENDS or st in ("skipped", "refused")


def _failed(st: str) -> bool:
    return st in FAILED_STATES or st in ("skipped", "refused")


def _lock(r: redis.Redis, pid: str, wait_s: float) -> str | None:
    token = f"{time.time()}"
    deadline = time.monotonic() + wait_s
    while not r.set(keys.plan_lock(pid), token, nx=True, ex=keys.PLAN_LOCK_TTL_S):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return token


def _unlock(r: redis.Redis, pid: str, token: str) -> None:
    if r.get(keys.plan_lock(pid)) == token:
        r.delete(keys.plan_lock(pid))


def locked(r: redis.Redis, pid: str, change: Callable[[dict], None], wait_s: float = 5.0) -> dict | None:
    """Apply `change` to the plan record under its lock; None if the lock stayed held."""
    token = _lock(r, pid, wait_s)
    if token is None:
        return None
    try:
        plan = load(r, pid)
        if plan is None:
            return None
        change(plan)
        save(r, plan)
        return plan
    finally:
        _unlock(r, pid, token)


def advance(store: Store, locks: VMLocks, adm: Admission, pid: str, wait_s: float = 2.0) -> list[str]:
    """Release whatever members may start now and end the plan when nothing is left; returns
    the ids of the migrations created (the caller runs an admission pass)."""
    created: list[str] = []
    locked(store.r, pid, lambda plan: _advance(store, locks, adm, plan, created), wait_s)
    return created


def _advance(store: Store, locks: VMLocks, adm: Admission, plan: dict, created: list[str]) -> None:
    if plan["state"] != RUNNING:
        return
    recs = migration_states(store.r, plan)
    st = {m["key"]: member_state(m, recs) for m in members(plan)}
    if plan["on_failure"] == "stop" and not plan.get("stopped_because"):
        first = next((k for k, s in st.items() if _failed(s) and s != "skipped"), None)
        if first is not None:
            plan["stopped_because"] = f"{first} ended {st[first]} and on_failure is stop"
    running = sum(1 for m in members(plan) if m.get("migration") and not _ended(st[m["key"]]))
    group_state = {}
    for g in plan["groups"]:
        ss = [st[m["key"]] for m in g["members"]]
        group_state[g["name"]] = ("failed" if any(_failed(s) for s in ss) and all(_ended(s) for s in ss)
                                  else "completed" if all(s == states.COMPLETED for s in ss) else "open")
    releasing = not plan.get("cancelled") and not plan.get("stopped_because")
    held = False  # a together group waiting for room for all its members holds the line behind it
    for g in plan["groups"]:
        blockers = [a for a in g["after"] if group_state[a] != "completed"]
        failed_before = [a for a in blockers if group_state[a] == "failed"]
        together = g.get("switchover") == "together"
        bar = GroupBarrier(store.r, plan["id"], g["name"], len(g["members"])) if together else None
        pending = [m for m in g["members"] if st[m["key"]] == "pending"]
        aborted = _together_state(plan, g, bar, pending, recs, group_state[g["name"]] == "completed")
        if together and pending and not (failed_before or aborted or blockers) and releasing \
                and (held or running + len(pending) > plan["concurrency"]):
            held = True  # its members are released all at once, in their turn
            continue
        for m in pending:
            if failed_before or aborted:
                # a together group that rolled back moves none of its members: not even those
                # not released yet
                m["skipped"] = f"group {failed_before[0]} did not complete" if failed_before else aborted
                st[m["key"]] = "skipped"
                continue
            if blockers or not releasing or held or running >= plan["concurrency"]:
                continue
            if _release(store, locks, adm, plan, g, m):
                created.append(m["migration"])
                st[m["key"]] = states.QUEUED
                running += 1
            else:
                st[m["key"]] = "refused"
                if bar is not None:  # a member that cannot move: none of the group does
                    bar.abort(f"group {g['name']} rolled back: {m['key']}: {m['refused']}")
                    aborted = m["refused"]
    if _all_ended(st) or (not releasing and running == 0):
        _end(plan, st)
        _append(store.r, store.events_max_entries, event(plan, "ended"))


def _together_state(plan: dict, g: dict, bar: GroupBarrier | None, pending: list[dict], recs: dict[str, dict],
                    completed: bool) -> str | None:
    """For a together group: why it rolled back (None while it has not, or for another
    group). A plan cancelled before the group's go rolls it back (its members waiting at
    the first barrier too, which a cancel of each migration alone would leave waiting); a
    group that completed gets its switchover span."""
    if bar is None or len(pending) == len(g["members"]):
        return None
    if completed:
        _note_span(g, recs)
        return None
    st = bar.state()
    if "abort" not in st and plan.get("cancelled") and "go_at" not in st:
        why = f"group {g['name']} rolled back: the plan was cancelled"
        return why if bar.abort(why) >= 0 else None
    return st.get("abort")


def _note_span(g: dict, recs: dict[str, dict]) -> None:
    """A together group that completed: its switchover span, from its first Save-VM to its
    last start verified on the destination, into the plan's record and the histogram (once)."""
    if g.get("switchover_span_s") is not None:
        return
    rs = [recs.get(m["key"]) or {} for m in g["members"]]
    saves = [r["save_started_at"] for r in rs if r.get("save_started_at")]
    starts = [r["verified_at"] for r in rs if r.get("verified_at")]
    if len(saves) != len(rs) or len(starts) != len(rs):
        return  # a record gone or from before these were noted: no span to tell
    g["first_save_at"], g["last_start_at"] = min(saves), max(starts)
    g["switchover_span_s"] = round(max(starts) - min(saves), 3)
    g["downtime_spread_s"] = round(max(saves) - min(saves), 3)  # its members' Save-VMs apart
    metrics.GROUP_SWITCHOVER_SPAN.observe(g["switchover_span_s"])


def _all_ended(st: dict[str, str]) -> bool:
    return all(_ended(s) for s in st.values())


def _end(plan: dict, st: dict[str, str]) -> None:
    plan["state"] = ("cancelled" if plan.get("cancelled") else "stopped" if plan.get("stopped_because")
                     else "completed" if all(s == states.COMPLETED for s in st.values()) else "failed")
    plan["ended_at"] = time.time()


def _release(store: Store, locks: VMLocks, adm: Admission, plan: dict, g: dict, m: dict) -> bool:
    """Create the member's migration and put it in line, as the producer's enqueue does
    (the snapshot step's pre-flight checks the VM again before anything changes on a host)."""
    rec = new_record(vm=m["vm"], vm_id=m["vm_id"], source=m["source"], destination=m["destination"],
                     fence=0, options=m["options"], requester=plan.get("requested_by"))
    rec["member_of"] = {"plan": plan["id"], "group": g["name"], "member": m["key"]}
    if g.get("switchover") == "together":
        # its size: the cutover step waits at the group's barriers for this many members
        rec["member_of"]["together"] = len(g["members"])
        if g.get("prepared_wait_s"):
            rec["member_of"]["prepared_wait_s"] = g["prepared_wait_s"]
    if g.get("hooks"):
        # what workers.steps.hooks calls: URL, timeout and the secret's name (its value is read
        # from the credentials file by the worker that calls)
        rec["hooks"] = {kind: {**h, **({"on_failure": plan.get("on_hook_failure", "continue")}
                                       if kind == "post_cutover" else {})} for kind, h in g["hooks"].items()}
    try:
        rec["fence"] = locks.acquire(m["vm_id"], rec["id"])
    except LockHeld as e:
        m["refused"] = f"VM {m['vm']!r} is already being migrated (migration {e.holder})"
        return False
    # the plan names the migration before it exists: a process that dies in between leaves a
    # member whose migration never came (it counts as failed), never a migration the plan
    # does not know of (it would run outside the plan's concurrency and `after`)
    m["migration"], m["released_at"] = rec["id"], rec["created_at"]
    save(store.r, plan)
    _append(store.r, store.events_max_entries, event(plan, "released", member=m["key"], migration=rec["id"]))
    event_id = None
    try:
        event_id = store.create(rec)
        adm.wait(rec["id"], m["source"], m["destination"])
    except Exception:
        adm.release(rec["id"], (m["source"], m["destination"]))
        store.delete(rec["id"], event_id)
        locks.release(m["vm_id"], rec["id"])
        m["migration"] = m["released_at"] = None
        save(store.r, plan)
        raise
    return True


def running_ids(r: redis.Redis) -> list[str]:
    return sorted(str(x) for x in r.smembers(keys.PLANS_RUNNING))
