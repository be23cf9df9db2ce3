"""workers.engine.plans: which members a plan releases, when, and how it ends (real Redis)."""
import json

import pytest

from workers.coord.admission import Admission
from workers.coord.locks import VMLocks
from workers.engine import plans
from workers.model import keys
from workers.model.record import Store


@pytest.fixture
def parts(r):
    return Store(r), VMLocks(r), Admission(r, {"hv1": 2, "hv2": 2, "hv3": 2})


def make_plan(r, groups, concurrency=2, on_failure="continue", pid="p1"):
    plan = {"id": pid, "name": "t", "state": "running", "created_at": 1.0, "concurrency": concurrency,
            "on_failure": on_failure, "requested_by": None,
            "groups": [{"name": g, "after": after, "switchover": "independent",
                        "members": [{"key": f"{g}/{v}", "vm": v, "vm_id": f"id-{v}", "source": "hv1",
                                     "destination": "hv2", "options": {}, "migration": None} for v in vms]}
                       for g, after, vms in groups]}
    plans.create(r, plan)
    return pid


def end(r, mid, state):
    rec = json.loads(r.get(keys.migration(mid)))
    rec["state"] = state
    r.set(keys.migration(mid), json.dumps(rec))
    VMLocks(r).release(rec["vm_id"], mid)


def released(r, pid):
    return {m["key"]: m.get("migration") for m in plans.members(plans.load(r, pid))}


def advance(r, parts, pid):
    return plans.advance(*parts, pid)


def test_a_together_groups_members_carry_its_size_and_its_own_bound(r, parts):
    pid = make_plan(r, [("app", [], ["m1", "m2"])])
    plan = plans.load(r, pid)
    plan["groups"][0].update(switchover="together", prepared_wait_s=5400.0)
    plans.save(r, plan)
    advance(r, parts, pid)
    for mid in released(r, pid).values():
        of = json.loads(r.get(keys.migration(mid)))["member_of"]
        assert (of["together"], of["prepared_wait_s"]) == (2, 5400.0)


def test_members_queue_in_file_order_within_concurrency_and_a_group_waits_for_its_after(r, parts):
    pid = make_plan(r, [("a", [], ["a1", "a2", "a3"]), ("b", ["a"], ["b1"])])
    first = advance(r, parts, pid)
    rel = released(r, pid)
    assert [k for k, v in rel.items() if v] == ["a/a1", "a/a2"] and first == [rel["a/a1"], rel["a/a2"]]
    rec = json.loads(r.get(keys.migration(rel["a/a1"])))
    assert rec["member_of"] == {"plan": pid, "group": "a", "member": "a/a1"} and rec["state"] == "queued"
    assert parts[2].is_waiting(rel["a/a1"])  # in line for admission, as an enqueue puts it
    assert advance(r, parts, pid) == []  # nothing ended: nothing more
    end(r, rel["a/a1"], "completed")
    assert advance(r, parts, pid) == [released(r, pid)["a/a3"]]  # b waits for all of a
    end(r, rel["a/a2"], "completed")
    assert advance(r, parts, pid) == []
    end(r, released(r, pid)["a/a3"], "completed")
    assert advance(r, parts, pid) == [released(r, pid)["b/b1"]]
    assert plans.load(r, pid)["state"] == "running"
    end(r, released(r, pid)["b/b1"], "completed")
    advance(r, parts, pid)
    plan = plans.load(r, pid)
    assert plan["state"] == "completed" and plan["ended_at"]
    assert pid not in plans.running_ids(r)


def test_on_failure_stop_releases_nothing_more_and_ends_stopped_once_the_running_ones_end(r, parts):
    pid = make_plan(r, [("a", [], ["a1", "a2", "a3"])], on_failure="stop")
    advance(r, parts, pid)
    rel = released(r, pid)
    end(r, rel["a/a1"], "rolled_back")
    assert advance(r, parts, pid) == []
    plan = plans.load(r, pid)
    assert plan["state"] == "running" and plan["stopped_because"] == "a/a1 ended rolled_back and on_failure is stop"
    end(r, rel["a/a2"], "completed")
    advance(r, parts, pid)
    assert plans.load(r, pid)["state"] == "stopped" and released(r, pid)["a/a3"] is None


def test_with_continue_a_group_after_a_failed_one_is_skipped_and_the_plan_fails(r, parts):
    pid = make_plan(r, [("a", [], ["a1"]), ("b", ["a"], ["b1"]), ("c", [], ["c1"])], concurrency=1)
    advance(r, parts, pid)
    end(r, released(r, pid)["a/a1"], "failed")
    advance(r, parts, pid)  # b skipped; c (no after) released
    rel = released(r, pid)
    assert rel["b/b1"] is None and rel["c/c1"] is not None
    assert plans.member_state(plans.load(r, pid)["groups"][1]["members"][0], {}) == "skipped"
    end(r, rel["c/c1"], "completed")
    advance(r, parts, pid)
    assert plans.load(r, pid)["state"] == "failed"


def test_a_member_whose_vm_is_being_migrated_already_is_refused(r, parts):
    VMLocks(r).acquire("id-a1", "someone-else")
    pid = make_plan(r, [("a", [], ["a1", "a2"])])
    advance(r, parts, pid)
    plan = plans.load(r, pid)
    a1, a2 = plan["groups"][0]["members"]
    assert "already being migrated (migration someone-else)" in a1["refused"] and a1["migration"] is None
    assert a2["migration"]


def test_a_cancelled_plan_releases_nothing_more_and_ends_cancelled(r, parts):
    pid = make_plan(r, [("a", [], ["a1", "a2", "a3"])])
    advance(r, parts, pid)
    plans.locked(r, pid, lambda p: p.update(cancelled=True))
    rel = released(r, pid)
    end(r, rel["a/a1"], "rolled_back")
    end(r, rel["a/a2"], "rolled_back")
    assert advance(r, parts, pid) == []
    assert plans.load(r, pid)["state"] == "cancelled" and released(r, pid)["a/a3"] is None


def test_a_second_caller_leaves_the_work_to_the_lock_holder(r, parts):
    pid = make_plan(r, [("a", [], ["a1"])])
    r.set(keys.plan_lock(pid), "other", ex=30)
    assert plans.advance(*parts, pid, wait_s=0) == []
    assert released(r, pid)["a/a1"] is None
    r.delete(keys.plan_lock(pid))
    assert len(plans.advance(*parts, pid, wait_s=0)) == 1


def test_a_member_named_a_migration_that_never_came_counts_as_failed(r, parts):
    """A process that died between naming the member's migration and creating it."""
    pid = make_plan(r, [("a", [], ["a1", "a2"])], on_failure="stop", concurrency=1)
    plans.locked(r, pid, lambda p: p["groups"][0]["members"][0].update(migration="never-created"))
    assert advance(r, parts, pid) == []
    plan = plans.load(r, pid)
    assert plan["stopped_because"] == "a/a1 ended failed and on_failure is stop" and plan["state"] == "stopped"
    assert released(r, pid)["a/a2"] is None


def test_a_plan_tells_the_events_stream_it_started_released_each_member_and_ended(r, parts):
    from producer.webhooks import Subscription
    pid = make_plan(r, [("a", [], ["a1"])])
    advance(r, parts, pid)
    end(r, released(r, pid)["a/a1"], "completed")
    advance(r, parts, pid)
    entries = [f for _, f in r.xrange(keys.EVENTS) if f.get("kind") == "plan"]
    assert [(e["event"], e["new"]) for e in entries] == [("started", "running"), ("released", "running"),
                                                         ("ended", "completed")]
    assert entries[1]["member"] == "a/a1" and entries[1]["migration"] == released(r, pid)["a/a1"]
    assert all(e["plan"] == pid for e in entries)
    # a webhook carries a migration's states only, whatever its filter
    assert not any(Subscription("w", "http://127.0.0.1:1/", None, b"k").wants(e) for e in entries)


def test_a_reconciler_pass_carries_a_plan_on_when_no_one_else_did(r, redis_url, tmp_path, monkeypatch):
    """A worker that died between a member's end and the plan's advance: the next pass
    releases the next member (and admits it), with no producer anywhere."""
    from tests.unit.test_reconciler_leases import CONFIG
    from workers.engine import app as app_mod
    from workers.engine import context, reconciler
    path = tmp_path / "quickmig.toml"
    path.write_text(CONFIG.format(url=redis_url))
    monkeypatch.setenv("QUICKMIG_CONFIG", str(path))
    context.reset()
    try:
        app_mod.configure(context.config())  # tasks the pass sends go to this Redis
        parts = (Store(r), VMLocks(r), Admission.of(r, context.config()))
        pid = make_plan(r, [("a", [], ["a1", "a2"])], concurrency=1)
        advance(r, parts, pid)
        first = released(r, pid)["a/a1"]
        parts[2].admit()
        end(r, first, "completed")  # ended, but nobody advanced the plan
        parts[2].release(first, ("hv1", "hv2"))
        assert released(r, pid)["a/a2"] is None
        reconciler.reconcile()
        second = released(r, pid)["a/a2"]
        assert second is not None and parts[2].holds(second, "hv1")  # released and admitted
        end(r, second, "completed")
        reconciler.reconcile()
        assert plans.load(r, pid)["state"] == "completed"
    finally:
        context.reset()
