"""Infrastructure faults (issue 5 item 5), in a lab of its own (these tests stop redis-server
and smbd and cut WinRM endpoints off): each migration still ends completed or rolled_back
by itself, verified intact, with no lease, step claim or copy checkpoint left, and never
running on two hosts (lab verify reads the emulators' start/stop history)."""
import time
from pathlib import Path

import pytest

from lab import orchestrator, processes, samba
from workers.model import keys

pytestmark = pytest.mark.integration

ENDS = ("completed", "failed", "rolled_back")


@pytest.fixture(scope="module")
def fault_lab(own_lab):
    with own_lab("faultlab") as lab:
        yield lab


def start(lab, vm: str, source: str, destination: str) -> str:
    from producer.migrations import MigrationRequest
    return lab.producer.enqueue(MigrationRequest(vm, source, destination))["id"]


def wait_for(lab, mid: str, ok, bound_s: float, what: str) -> dict:
    """Poll the record (through transient Redis errors) until ok(rec); fail after bound_s."""
    import redis
    deadline = time.monotonic() + bound_s
    while True:
        try:
            rec = lab.producer.get(mid)
            if ok(rec):
                return rec
        except redis.ConnectionError:
            rec = None
        assert time.monotonic() < deadline, f"{what}: not within {bound_s}s ({rec and rec['state']})"
        time.sleep(0.05)


def wait_end(lab, mid: str, bound_s: float = 120) -> dict:
    return wait_for(lab, mid, lambda r: r["state"] in ENDS, bound_s, "migration end")


def restart(lab, name: str, down_s: float, ready) -> None:
    """Stop a process the supervisor does not watch (redis-server, smbd), keep it down
    for down_s, start it again with the same argv (same port, same data), wait until ready()."""
    entry = orchestrator.read_lab(lab.dir)["processes"][name]
    processes.stop(entry)
    time.sleep(down_s)  # the outage itself, not a wait for something to happen
    orchestrator.replace_process(lab.dir, name, processes.spawn(entry["argv"], Path(entry["log"])))
    ready()


def assert_clean(lab, mid: str, rec: dict, vm: str) -> dict:
    """Ended by itself, intact, on exactly one host, nothing held or half-done left in Redis."""
    assert rec["state"] in ("completed", "rolled_back"), rec["error"]
    check = lab.verify(vm)
    assert check["integrity"] == "ok" and len(check["running_on"]) == 1, check
    assert not check.get("overlaps"), check
    r = lab.producer.store.r
    assert r.get(keys.vm_lock(check["vm_id"])) is None
    assert r.get(keys.step_claim(mid)) is None
    assert list(r.scan_iter(keys.copy_resume_match(mid))) == []
    return check


def test_redis_down_30s_mid_migration_workers_reconnect_and_the_migration_ends_by_itself(fault_lab):
    lab = fault_lab
    lab.add_vm("rd-vm", "hv1", disk_mb=64)
    mid = start(lab, "rd-vm", "hv1", "hv2")
    wait_for(lab, mid, lambda r: r["state"] not in ("queued", "snapshotting"), 60, "copy start")
    port = orchestrator.read_lab(lab.dir)["ports"]["redis"]
    t0 = time.monotonic()
    restart(lab, "redis", 30, lambda: orchestrator.wait_redis_port(port, 20))
    rec = wait_end(lab, mid, bound_s=150)
    print(f"redis down 30 s: {rec['state']} {time.monotonic() - t0:.1f}s after the stop")
    assert_clean(lab, mid, rec, "rd-vm")


def test_smbd_restarted_mid_copy_the_copy_resumes_from_its_checkpoints(fault_lab):
    lab = fault_lab
    lab.add_vm("smb-vm", "hv2", disk_mb=96)
    assert lab.cli("throttle", "--global", "8M").returncode == 0  # ~12 s of copy to land in
    try:
        mid = start(lab, "smb-vm", "hv2", "hv3")
        rec = wait_for(lab, mid, lambda r: (r.get("progress") or {}).get("bytes_done", 0) > 16 * 2**20,
                       90, "copy progress")
        assert rec["state"] == "copying"
        port = orchestrator.read_lab(lab.dir)["ports"]["hv3"]["smb"]
        restart(lab, "smbd-hv3", 2, lambda: samba.wait_ready(port, 20))
    finally:
        assert lab.cli("throttle", "--global", "0").returncode == 0
    rec = wait_end(lab, mid)
    check = assert_clean(lab, mid, rec, "smb-vm")
    assert rec["state"] == "completed" and check["running_on"] == ["hv3"], rec["error"]
    assert sum(k["bytes_reused"] for k in rec["copied_by_kind"].values()) > 0, rec["copied_by_kind"]


def test_winrm_unreachable_20s_during_copy_is_retried_with_backoff(fault_lab):
    lab = fault_lab
    lab.add_vm("wc-vm", "hv3", disk_mb=32)
    dst = lab.emulator("hv1")
    mid = start(lab, "wc-vm", "hv3", "hv1")
    wait_for(lab, mid, lambda r: r["state"] == "copying", 60, "copy start")
    t0 = time.monotonic()
    dst.outage(20)
    try:
        rec = wait_end(lab, mid, bound_s=150)
    finally:
        dst.end_outage()
    print(f"winrm down 20 s during copy: {rec['state']} {time.monotonic() - t0:.1f}s after it began")
    check = assert_clean(lab, mid, rec, "wc-vm")
    assert rec["state"] == "completed" and check["running_on"] == ["hv1"], rec["error"]
    # the copy's bytes move over SMB, but its verification asks hv1 for the landed file's
    # digest (file_hash, also after a resume): that meets the outage and is retried
    log = (lab.dir / "logs" / "worker-copy.log").read_text(errors="replace")
    assert f"mid={mid} phase=copy quickmig: transient failure, retry 1 in 1s: file_hash on hv1" in log


# 45 s is past the ~31 s (1+2+4+8+16) every other step's retries last: the VM is saved and
# only the rollback can bring it back, so the rollback keeps trying (workers.steps.cutover.ROLLBACK_RETRY)
@pytest.mark.parametrize("outage_s", [20, 45])
def test_winrm_unreachable_during_the_downtime_rolls_back_and_never_runs_twice(fault_lab, outage_s):
    lab = fault_lab
    vm = f"wd{outage_s}-vm"
    lab.add_vm(vm, "hv1", disk_mb=16)
    dst = lab.emulator("hv2")
    # import_vm takes 3 s: long enough to cut the destination off while the source VM is saved
    dst.inject_fault(op="import_vm", action="delay", seconds=3, times=1)
    try:
        mid = start(lab, vm, "hv1", "hv2")
        deadline = time.monotonic() + 90
        while dst.faults():  # taken (and so the VM saved on hv1) when import_vm begins
            assert time.monotonic() < deadline, "the cutover never reached import_vm"
            time.sleep(0.05)
        assert lab.producer.get(mid)["state"] == "cutting_over"
        t0 = time.monotonic()
        dst.outage(outage_s)
        rec = wait_end(lab, mid, bound_s=150)
    finally:
        dst.end_outage()
        dst.clear_faults()
    print(f"winrm down {outage_s} s in the downtime: {rec['state']} {time.monotonic() - t0:.1f}s after it began")
    check = assert_clean(lab, mid, rec, vm)
    assert rec["state"] == "rolled_back" and check["running_on"] == ["hv1"], rec
    assert not any(v["name"] == vm for v in dst.state()["vms"]), "the imported copy was left on hv2"
    # the rollback's own retries carried it through; the reconciler never had to step in
    assert rec.get("reconciler") is None, rec["reconciler"]
    assert rec["retry"]["step"] == "rollback" and rec["retry"]["attempt"] >= (6 if outage_s > 31 else 1), rec["retry"]
    log = (lab.dir / "logs" / "worker-cutover.log").read_text(errors="replace")
    assert f"mid={mid} phase=rollback quickmig: transient failure, the rollback task takes over" in log
    assert not [line for line in log.splitlines() if mid in line and "raised unexpected" in line]
