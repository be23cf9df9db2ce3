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
