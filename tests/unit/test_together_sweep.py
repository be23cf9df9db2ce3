"""The reconciler's pass over together groups (workers.engine.together.sweep) against a real
redis-server: it carries on a group whose last member died before it told the others, and
rolls back every member of a group that waited past its bound. Only the Celery sends are
captured (the step they start is the cutover or the rollback, tested in the lab)."""
import time

import pytest

from workers.coord.admission import Admission
from workers.coord.group_barrier import IMPORTED, PREPARED, GroupBarrier
from workers.coord.locks import VMLocks
from workers.engine import plans, together
from workers.model import keys, routing, states
from workers.model.record import Store, new_record


@pytest.fixture
def group(r, monkeypatch):
    store = Store(r)
    monkeypatch.setattr(together.context, "store", lambda: store)
    monkeypatch.setattr(together.context, "locks", lambda: VMLocks(r))
    monkeypatch.setattr(together.context, "admission", lambda: Admission(r, {"hv1": 2, "hv2": 2, "hv3": 2}))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(together.app, "send_task", lambda task, args, **kw: sent.append((task, args[0])))
    members, mids = [], []
    for i, (src, dst) in enumerate((("hv1", "hv2"), ("hv2", "hv3"), ("hv3", "hv1")), 1):
        rec = new_record(vm=f"vm{i}", vm_id=f"id{i}", source=src, destination=dst, fence=1)
        rec["member_of"] = {"plan": "p1", "group": "app", "member": f"app/vm{i}", "together": 3}
        store.create(rec)
        mids.append(rec["id"])
        members.append({"key": f"app/vm{i}", "vm": f"vm{i}", "migration": rec["id"]})
    plans.create(r, {"id": "p1", "name": "p", "state": plans.RUNNING, "created_at": time.time(),
                     "groups": [{"name": "app", "after": [], "switchover": "together", "members": members}]})

    def at(mid: str, *path: str) -> None:
        for st in path:
            store.transition(mid, {store.get(mid)["state"]}, st)
    return store, mids, sent, at


def two_of_three_waiting(r, store, mids, at) -> GroupBarrier:
    """Every member cutting over, the first two waiting at `prepared` for the third."""
    bar = GroupBarrier(r, "p1", "app", 3)
    for mid in mids:
        at(mid, states.SNAPSHOTTING, states.COPYING, states.PREPARING, states.CUTTING_OVER)
    for mid in mids[:2]:
        assert bar.arrive(PREPARED, mid, 60).what == "wait"
        store.set(mid, group_waiting=PREPARED)
    return bar


def test_a_group_whose_last_member_died_before_telling_the_others_is_carried_on(r, group):
    store, mids, sent, at = group
    bar = two_of_three_waiting(r, store, mids, at)
    # the third one in passed the barrier, and its worker died before it sent anything
    assert bar.arrive(PREPARED, mids[2], 60).what == "last"
    assert together.sweep() and sorted(sent) == sorted((routing.CUTOVER, m) for m in mids[:2])
    sent.clear()
    # one whose step runs now is left to it
    assert VMLocks(r).claim_step(mids[0])
    together.sweep()
    assert sent == [(routing.CUTOVER, mids[1])]


def test_a_group_that_waited_past_its_bound_rolls_every_member_back(r, group):
    store, mids, sent, at = group
    at(mids[0], states.SNAPSHOTTING, states.COPYING)  # still copying
    for mid in mids[1:]:
        at(mid, states.SNAPSHOTTING, states.COPYING, states.PREPARING, states.CUTTING_OVER)
        GroupBarrier(r, "p1", "app", 3).arrive(PREPARED, mid, 60)
        store.set(mid, group_waiting=PREPARED)
    assert together.sweep() == []  # within its bound: nothing to do
    r.hset(keys.group_barrier("p1", "app"), "first_prepared_at", time.time() - together.PREPARED_WAIT_S - 1)
    done = together.sweep()
    assert done and "aborted: not every member was ready to switch over" in done[0]
    # the one before its downtime is rolled back as a cancel does; the waiting ones get their
    # cutover step, which sees the abort and rolls back in place
    assert store.get(mids[0])["state"] == states.ROLLING_BACK
    assert "group app rolled back" in store.get(mids[0])["error"]
    assert sorted(sent) == sorted([(routing.ROLLBACK, mids[0])] + [(routing.CUTOVER, m) for m in mids[1:]])
    assert GroupBarrier(r, "p1", "app", 3).arrive(PREPARED, mids[0], 60).what == "abort"


def test_a_group_with_its_own_prepared_wait_is_rolled_back_by_that_bound_not_the_default(r, group):
    store, mids, sent, at = group
    plan = plans.load(r, "p1")
    plan["groups"][0]["prepared_wait_s"] = 3 * 3600.0
    plans.save(r, plan)
    two_of_three_waiting(r, store, mids, at)
    r.hset(keys.group_barrier("p1", "app"), "first_prepared_at", time.time() - together.PREPARED_WAIT_S - 1)
    assert together.sweep() == [] and sent == []  # past the default hour, within its three
    r.hset(keys.group_barrier("p1", "app"), "first_prepared_at", time.time() - 3 * 3600.0 - 1)
    done = together.sweep()
    assert done and "within 10800 s of the first" in done[0]


def test_a_member_arrives_with_its_groups_bound(r, group, monkeypatch):
    store, mids, sent, at = group
    bounds = []
    monkeypatch.setattr(GroupBarrier, "arrive", lambda self, phase, mid, bound_s: bounds.append(bound_s) or
                        together.Verdict("wait"))
    rec = store.get(mids[0])
    together.arrive(rec, PREPARED)
    rec["member_of"]["prepared_wait_s"] = 7200.0
    together.arrive(rec, PREPARED)
    together.arrive(rec, IMPORTED)
    assert bounds == [together.PREPARED_WAIT_S, 7200.0, together.IMPORTED_WAIT_S]


def test_the_reconciler_leaves_a_member_parked_at_its_barrier_to_the_group(r, group):
    """A member that waits at a barrier has no task and its record does not change: the
    reconciler used to re-send its cutover step every 30 s (and count the nudges) while the
    group waited, up to an hour. It now leaves it to sweep(), until the barrier passes."""
    from workers.engine import reconciler
    store, mids, sent, at = group
    bar = two_of_three_waiting(r, store, mids, at)
    deadlines = {st: 30.0 for st in states.ACTIVE}
    later = time.time() + 600
    for mid in mids[:2]:
        assert reconciler.reconcile_one(mid, deadlines, 3, now=later) is None
        assert "reconciler" not in store.get(mid)
    assert sent == []
    # the group passed and a member still waits (the last one's worker died before it told
    # the others): stuck again, so re-sent
    assert bar.arrive(PREPARED, mids[2], 60).what == "last"
    assert reconciler.reconcile_one(mids[0], deadlines, 3, now=later) == "resent"
    assert sent == [(routing.CUTOVER, mids[0])]
