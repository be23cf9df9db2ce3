"""The switchover (phase 4): a failure at any of its steps rolls back on its own, and the VM
runs on the source again with every acknowledged write, its checkpoint merged."""
import pytest

from tests.integration.test_migration import migrate

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("host, op, action", [
    ("hv1", "save_vm", "fail"),
    ("hv1", "save_vm", "drop"),        # saved, but the answer is lost
    ("hv3", "import_vm", "fail"),
    ("hv3", "start_vm", "fail"),
    ("hv3", "wait_heartbeat", "fail"),
])
def test_a_failed_switchover_step_rolls_back_with_integrity(lab, host, op, action):
    name = f"sw-{op}-{action}"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    lab.emulator(host).inject_fault(op=op, action=action, message=f"injected: {op} broke", times=1)
    try:
        res, rec = migrate(lab, name, "hv1", "hv3")
    finally:
        lab.emulator(host).clear_faults()
    assert res.returncode == 1
    assert rec["state"] == "rolled_back", rec
    assert rec["error"].startswith("cutover:"), rec["error"]
    assert rec["rollback_seconds"] > 0
    assert rec["downtime_seconds"] > 0  # the VM was down from Save-VM until it ran on the source again
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)
    assert vm["snapshots"] == []
    assert all(v["name"] != name for v in lab.emulator("hv3").state()["vms"])
    assert not list((lab.dir / "hosts" / "hv3" / "share").glob(f"{vm['id']}*"))


def test_a_failed_downtime_copy_rolls_back_and_leaves_files_not_ours_alone(lab):
    """The copy step: the leaf cannot land on the destination (a file of someone else's is there)."""
    import time

    from workers.record import Store
    name = "sw-copy"
    vm = lab.add_vm(name, "hv1", write_rate_kbps=64)
    lab.emulator("hv1").inject_fault(op="save_vm", action="delay", seconds=4, times=1)
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv3", "--max-rounds", "0")
        assert res.returncode == 0, res.stderr
        store, mid = Store(lab.redis()), res.stdout.strip()
        deadline = time.monotonic() + 120
        while not store.get(mid).get("save_started_at"):
            assert time.monotonic() < deadline and store.get(mid)["state"] not in ("rolled_back", "completed")
            time.sleep(0.05)
        sid = store.get(mid)["snapshot"]["id"]
        squatter = lab.dir / "hosts" / "hv3" / "share" / vm["id"] / "Virtual Hard Disks" / f"disk0_{sid}.avhdx"
        squatter.parent.mkdir(parents=True, exist_ok=True)
        squatter.write_bytes(b"not quickmig's")
        while store.get(mid)["state"] not in ("rolled_back", "failed", "completed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rec = store.get(mid)
    finally:
        lab.emulator("hv1").clear_faults()
    assert rec["state"] == "rolled_back", rec
    assert "already has" in rec["error"] and rec["rollback_seconds"] > 0
    assert squatter.read_bytes() == b"not quickmig's"  # never delete what we did not make
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    assert next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)["snapshots"] == []
