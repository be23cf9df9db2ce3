"""Pre-flight (phases 0 and 3): whatever the destination could not run is refused while the
VM keeps running on the source, before any downtime, with the cause and the fix named."""
import time

import pytest

from tests.integration.test_migration import migrate_refused

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def assert_untouched_on_source(lab, name, rec):
    assert rec["state"] == "rolled_back", rec
    assert rec.get("save_started_at") is None and rec.get("downtime_seconds") is None
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)
    assert vm["snapshots"] == []
    assert not list((lab.dir / "hosts" / "hv3" / "share").glob(f"{vm['id']}*"))


@pytest.mark.parametrize("case, vm_opts, host_props, says", [
    ("switch", {"switches": ["prod-net"]}, {}, ["no virtual switch named 'prod-net'", "New-VMSwitch"]),
    ("version", {"version": "8.0"}, {}, ["configuration version 8.0", "supports 9.0, 10.0"]),
    ("cpu", {}, {"cpu_vendor": "AuthenticAMD"}, ["GenuineIntel", "AuthenticAMD", "same vendor"]),
    ("space", {}, {"free_bytes": 8 * MiB}, ["8 MiB free", "free space there"]),
    ("passthrough", {"passthrough_disk": True}, {}, ["pass-through disk", "Remove-VMHardDiskDrive"]),
    ("checkpoints", {"checkpoint_type": "Disabled"}, {}, ["checkpoints are disabled", "Set-VM -CheckpointType"]),
])
def test_preflight_refuses_before_any_downtime(lab, case, vm_opts, host_props, says):
    name = f"pf-{case}"
    lab.add_vm(name, "hv1", write_rate_kbps=64, **vm_opts)
    if host_props:
        lab.emulator("hv3").set_host(**host_props)
    try:
        rec = migrate_refused(lab, name, "hv1", "hv3")
    finally:
        lab.emulator("hv3").reset_host()
    for words in says:
        assert words in rec["error"], rec["error"]
    assert_untouched_on_source(lab, name, rec)


def test_compare_vm_dry_run_refusal_merges_the_checkpoint_back(lab):
    """Phase 3: the destination loses the VM's switch after phase 0 passed."""
    name = "pf-compare"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    dst = lab.emulator("hv3")
    dst.inject_fault(op="compare_vm", action="delay", seconds=5, times=1)
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv3")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        r = lab.redis()
        deadline = time.monotonic() + 120
        from workers.model.record import Store
        store = Store(r)
        while store.get(mid)["state"] not in ("preparing", "rolled_back", "failed", "completed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dst.set_host(switches=["other-switch"])
        while store.get(mid)["state"] not in ("rolled_back", "failed", "completed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rec = store.get(mid)
    finally:
        dst.clear_faults()
        dst.reset_host()
    assert "Could not find Ethernet switch 'lab-switch'" in rec["error"], rec["error"]
    assert_untouched_on_source(lab, name, rec)
