"""Killed workers, in a lab of its own (these tests SIGKILL its pools): the lab's
supervisor brings a pool back, a short chaos run (bench/chaos.py) finds no violation,
and `lab down` still leaves no process behind."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from lab import orchestrator, processes

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402


@pytest.fixture(scope="module")
def chaos_lab(own_lab):
    with own_lab("chaoslab") as lab:
        yield lab


def test_a_pool_whose_main_process_is_killed_comes_back_and_the_migration_completes(chaos_lab):
    lab = chaos_lab
    lab.add_vm("sup-vm", "hv1", disk_mb=32)
    before = orchestrator.read_lab(lab.dir)["processes"]["worker-copy"]
    res = lab.cli("migrate", "sup-vm", "--from", "hv1", "--to", "hv2")
    assert res.returncode == 0, res.stderr
    mid = res.stdout.strip()
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = orchestrator.read_lab(lab.dir)["processes"]["worker-copy"]
        if now["pid"] != before["pid"] and processes.alive(now):
            break
        assert time.monotonic() < deadline, "the copy pool was not restarted"
        time.sleep(0.2)
    assert now.get("restarts") == 1 and now["argv"] == before["argv"]
    assert not processes.alive(before)
    deadline = time.monotonic() + 180
    while True:
        res, rec = lab.cli_json("status", mid, "--json")
        if rec["state"] in ("completed", "failed", "rolled_back"):
            break
        assert time.monotonic() < deadline, rec["state"]
        time.sleep(0.5)
    assert rec["state"] == "completed", rec["error"]
    check = lab.verify("sup-vm")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check


def test_a_cutover_killed_after_the_destination_vm_started_rolls_forward_and_keeps_its_writes(chaos_lab):
    lab = chaos_lab
    lab.add_vm("fwd-vm", "hv2", write_rate_kbps=128)
    lab.emulator("hv3").inject_fault(op="wait_heartbeat", action="delay", seconds=8, times=1)
    try:
        res = lab.cli("migrate", "fwd-vm", "--from", "hv2", "--to", "hv3")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        lab.wait_vm_state("hv3", "fwd-vm", "Running")  # the destination VM started
        time.sleep(1)  # the guest acknowledges writes on the destination now
        pool = orchestrator.read_lab(lab.dir)["processes"]["worker-cutover"]
        for child in chaos.children(pool["pid"]):  # the one waiting for the heartbeat among them
            os.kill(child, signal.SIGKILL)
    finally:
        lab.emulator("hv3").clear_faults()
    deadline = time.monotonic() + 180
    while True:
        res, rec = lab.cli_json("status", mid, "--json")
        if rec["state"] in ("completed", "failed", "rolled_back"):
            break
        assert time.monotonic() < deadline, rec["state"]
        time.sleep(0.5)
    assert rec["state"] == "completed", rec["error"]
    assert rec.get("cutover_resumed") is True
    check = lab.verify("fwd-vm")
    assert check["running_on"] == ["hv3"] and check["integrity"] == "ok", check


def test_a_redis_restart_mid_copy_loses_nothing_and_leaves_nothing_stuck(chaos_lab):
    """redis-server stopped (AOF on) while a migration copies, back 3 s later: workers
    reconnect, and the reconciler re-sends the step whose message died with the outage."""
    from producer.migrations import MigrationRequest, Producer
    lab = chaos_lab
    lab.add_vm("redis-vm", "hv3", disk_mb=64)
    p = Producer(lab.cfg)
    mid = p.enqueue(MigrationRequest("redis-vm", "hv3", "hv1"))["id"]
    deadline = time.monotonic() + 120
    while p.get(mid)["state"] in ("queued", "snapshotting"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = orchestrator.read_lab(lab.dir)
    entry = info["processes"]["redis"]
    processes.stop(entry)
    time.sleep(3)
    orchestrator.replace_process(lab.dir, "redis", processes.spawn(entry["argv"], Path(entry["log"])))
    orchestrator.wait_redis_port(info["ports"]["redis"], 20)
    deadline = time.monotonic() + 240
    while True:
        rec = p.get(mid)  # the record survived the restart (AOF)
        if rec["state"] in ("completed", "failed", "rolled_back"):
            break
        assert time.monotonic() < deadline, rec["state"]
        time.sleep(0.5)
    assert rec["state"] in ("completed", "rolled_back"), rec["error"]
    check = lab.verify("redis-vm")
    assert check["integrity"] == "ok" and len(check["running_on"]) == 1, check
    assert p.store.r.get(f"quickmig:lock:vm:{check['vm_id']}") is None


def test_a_cutover_worker_sent_sigterm_finishes_the_switchover_it_holds_before_it_exits(chaos_lab):
    """What Kubernetes (and `docker stop`) does to a pod in a rolling update: SIGTERM to the
    container's main process only, here the cutover pool's Celery main process, while its
    child holds a VM's downtime. Celery's warm shutdown lets the switchover finish, then exits
    (deploy/kubernetes/: the grace period covers the switchover's deadlines)."""
    lab = chaos_lab
    lab.add_vm("term-vm", "hv1")
    lab.emulator("hv2").inject_fault(op="import_vm", action="delay", seconds=6, times=1)
    try:
        res = lab.cli("migrate", "term-vm", "--from", "hv1", "--to", "hv2")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        lab.wait_vm_state("hv1", "term-vm", "Saved")  # the downtime began
        pool = orchestrator.read_lab(lab.dir)["processes"]["worker-cutover"]
        os.kill(pool["pid"], signal.SIGTERM)  # the main process only, as the kubelet does
        termed = time.time()
        deadline = time.monotonic() + 120
        while processes.alive(pool):
            assert time.monotonic() < deadline, "the cutover pool did not exit after its switchover"
            time.sleep(0.05)
        exited = time.time()
    finally:
        lab.emulator("hv2").clear_faults()
    rec = lab.producer.get(mid)
    states = {h["state"]: h["at"] for h in rec["history"]}
    # the switchover ended (the record left cutting_over) in this worker, before it exited
    assert "finishing" in states and states["cutting_over"] < termed < states["finishing"] < exited, rec["history"]
    assert exited - termed > 3  # it waited out the slow import, it did not die at once
    assert "rolling_back" not in states and not rec.get("cutover_resumed")
    assert "Warm shutdown" in Path(pool["log"]).read_text()
    deadline = time.monotonic() + 180
    while (rec := lab.producer.get(mid))["state"] not in ("completed", "failed", "rolled_back"):
        assert time.monotonic() < deadline, rec["state"]
        time.sleep(0.5)
    assert rec["state"] == "completed", rec["error"]
    check = lab.verify("term-vm")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check


def test_a_short_chaos_run_has_no_violation(chaos_lab):
    trials = chaos.run(chaos_lab.dir, trials=2, migrations=3, seed=7, max_delay_s=6, bound_s=180,
                       say=lambda *_: None)
    print(chaos.table(trials))
    assert all(len(t.outcomes) == 3 for t in trials)
    assert [v for t in trials for v in t.violations] == []
    assert set(o for t in trials for o in t.outcomes.values()) <= {"completed", "rolled_back"}


def test_lab_down_stops_every_process_including_restarted_ones(chaos_lab):
    lab = orchestrator.read_lab(chaos_lab.dir)
    assert "supervisor" in lab["processes"] and "beat" in lab["processes"]
    entries = list(lab["processes"].values())
    pgids = [e["pid"] for e in entries]
    orchestrator.down(chaos_lab.dir, say=lambda *_: None)
    assert not any(processes.alive(e) for e in entries)
    # nothing of their groups runs on: every member is gone or has exited (a zombie waits
    # only for init to reap it)
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            running.append(stat.parent.name)
    assert running == []
