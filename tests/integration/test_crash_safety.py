"""At-least-once delivery, lost messages and cancel, in the lab (real Redis, smbd, Celery
pools, beat and the reconciler; Hyper-V emulated). Each test uses VMs of its own."""
import time
import types

import pytest

from workers.model import keys

pytestmark = pytest.mark.integration

TASKS = ("quickmig.snapshot", "quickmig.copy", "quickmig.prepare", "quickmig.cutover",
         "quickmig.finish", "quickmig.rollback")
ENDS = ("completed", "failed", "rolled_back")


def producer(lab):
    from producer.migrations import Producer
    return Producer(lab.cfg)


def wait_state(p, mid, pred, timeout_s=120, poll_s=0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        rec = p.get(mid)
        if pred(rec):
            return rec
        assert time.monotonic() < deadline, f"migration {mid} stuck in {rec['state']}"
        time.sleep(poll_s)


def settled(lab, mid, timeout_s=60):
    """Wait until no message is queued and no task holds the migration's claim."""
    r = lab.redis()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = sum(r.llen(q) for q in ("snapshot", "copy", "cutover"))
        if not queued and not r.get(keys.step_claim(mid)):
            return
        time.sleep(0.2)
    raise AssertionError("queues did not drain")


def assert_home(lab, name, host):
    check = lab.verify(name)
    assert check["running_on"] == [host], check
    assert list(check["state_by_host"]) == [host], check
    assert check["integrity"] == "ok", check
    assert check["overlaps"] == []
    return check


def test_every_task_delivered_again_during_and_after_a_migration_changes_nothing(lab):
    lab.add_vm("crash-dup", "hv1", write_rate_kbps=128)
    # a slow import keeps the cutover (the VM down) running while its duplicates arrive
    lab.emulator("hv2").inject_fault(op="import_vm", action="delay", seconds=3, times=1)
    p = producer(lab)
    from producer.migrations import MigrationRequest
    mid = p.enqueue(MigrationRequest("crash-dup", "hv1", "hv2"))["id"]
    seen = []
    try:
        deadline = time.monotonic() + 180
        while True:
            rec = p.get(mid)
            if not seen or seen[-1] != rec["state"]:
                seen.append(rec["state"])
                for t in TASKS:
                    p.app.send_task(t, args=[mid])
            if rec["state"] in ENDS:
                break
            assert time.monotonic() < deadline, rec["state"]
            time.sleep(0.05)
    finally:
        lab.emulator("hv2").clear_faults()
    assert rec["state"] == "completed", rec["error"]
    assert "cutting_over" in seen, seen  # duplicates did land inside the downtime
    settled(lab, mid)
    check = assert_home(lab, "crash-dup", "hv2")
    assert check["writes_checked"] > 0
    history = [h["state"] for h in rec["history"]]
    assert history == ["queued", "snapshotting", "copying", "preparing", "cutting_over", "finishing", "completed"]

    # and again, long after it finished
    before = p.get(mid)
    for t in TASKS:
        p.app.send_task(t, args=[mid])
    time.sleep(1)
    settled(lab, mid)
    after = p.get(mid)
    assert after["history"] == before["history"] and after["state"] == "completed"
    assert after["updated_at"] == before["updated_at"]
    assert_home(lab, "crash-dup", "hv2")
    assert lab.redis().get(keys.vm_lock(rec["vm_id"])) is None


def test_the_reconciler_carries_on_a_lost_message_and_rolls_back_what_stays_stuck(lab):
    """Two migrations whose messages never leave (as if lost in Redis): one freshly queued,
    re-sent by the reconciler and completed; one made to look stuck in copying past its
    last re-send, rolled back. Both wait on the reconciler at once, to keep the test short."""
    lab.add_vm("crash-lost", "hv3")
    lab.add_vm("crash-stuck", "hv2")
    p = producer(lab)
    from producer.migrations import MigrationRequest
    p.app = types.SimpleNamespace(send_task=lambda *a, **k: None)  # no message ever leaves
    lost = p.enqueue(MigrationRequest("crash-lost", "hv3", "hv1"))["id"]
    stuck = p.enqueue(MigrationRequest("crash-stuck", "hv2", "hv3"))["id"]
    assert p.get(lost)["state"] == "queued"
    p.store.transition(stuck, {"queued"}, "snapshotting")
    p.store.transition(stuck, {"snapshotting"}, "copying",
                       reconciler={"state": "copying", "nudges": 3}, plan={"frozen": []})

    rec = wait_state(p, lost, lambda r: r["state"] in ENDS, timeout_s=180, poll_s=0.5)
    assert rec["state"] == "completed", rec["error"]
    assert rec["reconciler"]["state"] == "queued" and rec["reconciler"]["nudges"] >= 1
    assert_home(lab, "crash-lost", "hv1")

    rec = wait_state(p, stuck, lambda r: r["state"] in ENDS, timeout_s=120, poll_s=0.5)
    assert rec["state"] == "rolled_back", rec["error"]
    assert "stuck in copying" in rec["error"]
    assert_home(lab, "crash-stuck", "hv2")


def test_cancel_before_the_downtime_rolls_back_and_leaves_nothing(lab):
    lab.add_vm("crash-cancel", "hv1")
    lab.emulator("hv1").inject_fault(op="checkpoint_vm", action="delay", seconds=4, times=1)
    p = producer(lab)
    from producer.migrations import MigrationRequest
    try:
        mid = p.enqueue(MigrationRequest("crash-cancel", "hv1", "hv3"))["id"]
        wait_state(p, mid, lambda r: r["state"] == "snapshotting")
        res, rec = lab.cli_json("cancel", mid, "--wait", "--json", "--timeout", "120")
    finally:
        lab.emulator("hv1").clear_faults()
    assert res.returncode == 0, res.stderr
    assert rec["state"] == "rolled_back" and rec["error"] == "cancelled by request"
    settled(lab, mid)
    check = assert_home(lab, "crash-cancel", "hv1")
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == "crash-cancel")
    assert vm["snapshots"] == []  # the checkpoint taken meanwhile was merged
    assert not [f for f in (lab.dir / "hosts" / "hv3" / "share").rglob("*") if check["vm_id"] in str(f).lower()]
    assert lab.redis().get(keys.vm_lock(check["vm_id"])) is None


def test_cancel_in_the_middle_of_a_copy_leaves_no_copy_checkpoint(lab):
    lab.add_vm("crash-cancel-copy", "hv1", disk_mb=64)
    p = producer(lab)
    from producer.migrations import MigrationRequest
    assert lab.cli("throttle", "--global", "8M").returncode == 0  # ~8 s of copy to cancel in
    try:
        mid = p.enqueue(MigrationRequest("crash-cancel-copy", "hv1", "hv2"))["id"]
        wait_state(p, mid, lambda r: (r.get("progress") or {}).get("bytes_done", 0) > 16 * 2**20)
        r = lab.redis()
        assert list(r.scan_iter(keys.copy_resume_match(mid))), "the copy keeps no checkpoint"
        assert lab.cli("cancel", mid).returncode == 0
        rec = wait_state(p, mid, lambda r: r["state"] in ENDS)
    finally:
        assert lab.cli("throttle", "--global", "0").returncode == 0
    assert rec["state"] == "rolled_back", rec["error"]
    assert list(r.scan_iter(keys.copy_resume_match(mid))) == []
    assert_home(lab, "crash-cancel-copy", "hv1")


def test_cancel_during_the_downtime_is_refused_and_the_migration_completes(lab):
    lab.add_vm("crash-nocancel", "hv2")
    lab.emulator("hv1").inject_fault(op="import_vm", action="delay", seconds=6, times=1)
    p = producer(lab)
    from producer.migrations import MigrationRequest
    try:
        mid = p.enqueue(MigrationRequest("crash-nocancel", "hv2", "hv1"))["id"]
        wait_state(p, mid, lambda r: r["state"] == "cutting_over" and r.get("save_started_at"))
        res = lab.cli("cancel", mid)
    finally:
        lab.emulator("hv1").clear_faults()
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "downtime" in lines[0] and mid in lines[0], res.stderr
    rec = wait_state(p, mid, lambda r: r["state"] in ENDS)
    assert rec["state"] == "completed", rec["error"]
    assert_home(lab, "crash-nocancel", "hv1")
    again = lab.cli("cancel", mid)
    assert again.returncode == 2 and "already completed" in again.stderr
    unknown = lab.cli("cancel", "0123456789abcdef")
    assert unknown.returncode == 2 and "no migration" in unknown.stderr
