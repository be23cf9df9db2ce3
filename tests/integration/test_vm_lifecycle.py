"""What a VM does around a migration when its hosts behave as Hyper-V hosts do: a host restart
honours each VM's automatic start action (so a saved or kept source copy must never be left
able to start by itself), a kept source's saved state is discarded the documented way, and a
Dynamic Memory VM's saved state is its assigned memory. In a lab of its own: these tests
restart its hosts and kill its cutover pool."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from lab import orchestrator
from tests.integration.test_migration import migrate, migrate_refused
from workers.model import preflight

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402

MiB = 1024 * 1024
ENDS = ("completed", "failed", "rolled_back")


@pytest.fixture(scope="module")
def lab(own_lab):
    with own_lab("lifecyclelab") as lab:
        yield lab


def vm_on(lab, host: str, name: str) -> dict | None:
    return next((v for v in lab.emulator(host).state()["vms"] if v["name"] == name), None)


def start(lab, name: str, src: str, dst: str, *extra) -> str:
    res = lab.cli("migrate", name, "--from", src, "--to", dst, "--max-rounds", "0", *extra)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def wait(lab, mid: str, pred, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        rec = lab.producer.get(mid)
        if pred(rec):
            return rec
        assert time.monotonic() < deadline, f"migration {mid} stuck in {rec['state']}"
        time.sleep(0.05)


def restart_host(lab, host: str) -> dict:
    res, out = lab.cli_json("lab", "restart-host", host, "--json")
    assert res.returncode == 0, res.stderr
    return out


def test_a_source_host_restart_while_the_vm_is_saved_for_the_cutover_never_runs_it_twice(lab):
    """The source host restarts while the VM sits saved on it and the destination imports it.
    A saved copy left at StartIfRunning (Hyper-V's default) would resume at boot, and the
    destination then start the same VM: two running copies."""
    lab.add_vm("lc-cutover", "hv1", write_rate_kbps=64)
    lab.emulator("hv2").inject_fault(op="import_vm", action="delay", seconds=8, times=1)
    try:
        mid = start(lab, "lc-cutover", "hv1", "hv2")
        wait(lab, mid, lambda r: r.get("import_started_at") or r["state"] in ENDS)
        assert vm_on(lab, "hv1", "lc-cutover")["state"] == "Saved"
        out = restart_host(lab, "hv1")
        assert out["host"] == "hv1" and out["reboots"] >= 1
        rec = wait(lab, mid, lambda r: r["state"] in ENDS)
    finally:
        lab.emulator("hv2").clear_faults()
    check = lab.verify("lc-cutover")
    assert check["overlaps"] == [], check
    assert rec["state"] == "completed", rec["error"]
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check
    assert rec["automatic_start_action"] == "StartIfRunning"
    # the VM has its own action again where it runs
    assert vm_on(lab, "hv2", "lc-cutover")["automatic_start_action"] == "StartIfRunning"
    # and the restart was no crash: the supervisor did not count one
    entry = orchestrator.read_lab(lab.dir)["processes"]["emulator-hv1"]
    assert entry.get("restarts", 0) == 0 and entry["reboots"] == out["reboots"]


def test_a_kept_source_never_starts_by_itself_when_its_host_restarts(lab):
    """--keep-source: the source copy stays registered, off, for hours. A VM whose action is
    Start would boot again at the next restart of the source host, beside the migrated VM."""
    created = lab.add_vm("lc-kept", "hv1", write_rate_kbps=64, automatic_start_action="Start")
    res, rec = migrate(lab, "lc-kept", "hv1", "hv3", "--keep-source", "1")
    assert rec["state"] == "completed", rec["error"]
    kept = vm_on(lab, "hv1", "lc-kept")
    # the saved state discarded (Remove-VMSavedState), and it never starts by itself
    assert kept["state"] == "Off" and kept["automatic_start_action"] == "Nothing", kept
    assert not any(p.lower().endswith(".vmrs") for p in kept["state_files"])
    assert vm_on(lab, "hv3", "lc-kept")["automatic_start_action"] == "Start"
    restart_host(lab, "hv1")
    check = lab.verify("lc-kept")
    assert check["overlaps"] == [] and check["running_on"] == ["hv3"], check
    assert vm_on(lab, "hv1", "lc-kept")["state"] == "Off"
    assert created["id"] == rec["vm_id"]


def test_a_rolled_back_source_gets_its_automatic_start_action_back(lab):
    lab.add_vm("lc-back", "hv1", write_rate_kbps=64, automatic_start_action="Start")
    lab.emulator("hv2").inject_fault(op="start_vm", action="fail", message="injected: start refused", times=1)
    try:
        res, rec = migrate(lab, "lc-back", "hv1", "hv2")
    finally:
        lab.emulator("hv2").clear_faults()
    assert rec["state"] == "rolled_back" and "start refused" in rec["error"], rec
    back = vm_on(lab, "hv1", "lc-back")
    assert back["state"] == "Running" and back["automatic_start_action"] == "Start"
    check = lab.verify("lc-back")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok" and check["overlaps"] == [], check


def test_a_cutover_killed_in_the_downtime_rolls_back_and_the_action_comes_back_from_the_record(lab):
    """The worker that set Nothing dies while the VM is saved; the rollback that follows runs in
    another process and finds the VM's own action in the record."""
    lab.add_vm("lc-crash", "hv3", write_rate_kbps=64, automatic_start_action="Start")
    lab.emulator("hv1").inject_fault(op="import_vm", action="delay", seconds=6, times=1)
    try:
        mid = start(lab, "lc-crash", "hv3", "hv1")
        wait(lab, mid, lambda r: r.get("import_started_at") or r["state"] in ENDS)
        assert vm_on(lab, "hv3", "lc-crash")["automatic_start_action"] == "Nothing"
        pool = orchestrator.read_lab(lab.dir)["processes"]["worker-cutover"]
        for child in chaos.children(pool["pid"]):
            os.kill(child, signal.SIGKILL)
        rec = wait(lab, mid, lambda r: r["state"] in ENDS, timeout_s=240)
    finally:
        lab.emulator("hv1").clear_faults()
    assert rec["state"] == "rolled_back", rec
    assert rec["automatic_start_action"] == "Start"
    back = vm_on(lab, "hv3", "lc-crash")
    assert back["state"] == "Running" and back["automatic_start_action"] == "Start", back
    check = lab.verify("lc-crash")
    assert check["running_on"] == ["hv3"] and check["integrity"] == "ok" and check["overlaps"] == [], check


def _file_bytes(lab, host: str, vm: dict) -> int:
    """What pre-flight measures of a VM's files (chain, state files, ISOs), read on the share."""
    share = lab.dir / "hosts" / host / "share"
    root = lab.cfg.host(host).vm_root
    paths = {p for d in vm["disks"] for p in d["chain"]} | set(vm["state_files"]) | set(vm["isos"])
    return sum(share.joinpath(*p[len(root) + 1:].split("\\")).stat().st_size for p in paths)


def test_a_dynamic_memory_vm_is_refused_where_its_assigned_memory_does_not_fit(lab):
    """Assigned 128 MiB, startup 16 MiB: the destination has room for the files and 16 MiB of
    saved memory, not for the 128 MiB Save-VM would write. Refused before the checkpoint."""
    vm = lab.add_vm("lc-dm-big", "hv1", memory_mb=16, dynamic_memory=True, memory_assigned_mb=128,
                    write_rate_kbps=16)
    assert vm["memory_assigned_bytes"] == 128 * MiB and vm["memory_startup_bytes"] == 16 * MiB
    files = _file_bytes(lab, "hv1", vm)
    for_startup, for_assigned = preflight.needed_bytes(files, 16 * MiB), preflight.needed_bytes(files, 128 * MiB)
    assert for_assigned - for_startup > 64 * MiB
    lab.emulator("hv3").set_host(free_bytes=(for_startup + for_assigned) // 2)
    try:
        rec = migrate_refused(lab, "lc-dm-big", "hv1", "hv3")
    finally:
        lab.emulator("hv3").reset_host()
    assert rec["state"] == "rolled_back", rec
    assert "pre-flight refused" in rec["error"] and "saved memory" in rec["error"], rec["error"]
    assert rec.get("save_started_at") is None and not rec.get("checkpoint_at")
    assert vm_on(lab, "hv1", "lc-dm-big")["snapshots"] == []
    check = lab.verify("lc-dm-big")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check


def test_a_dynamic_memory_vm_moves_its_assigned_memory_and_keeps_its_settings(lab):
    lab.add_vm("lc-dm", "hv2", memory_mb=16, dynamic_memory=True, memory_assigned_mb=48,
               memory_maximum_mb=4096, write_rate_kbps=64)
    res, rec = migrate(lab, "lc-dm", "hv2", "hv3")
    assert rec["state"] == "completed", rec["error"]
    assert rec["downtime_bytes"] >= 48 * MiB  # the saved state was the assigned memory
    there = vm_on(lab, "hv3", "lc-dm")
    assert there["dynamic_memory_enabled"] is True and there["memory_startup_bytes"] == 16 * MiB
    assert there["memory_assigned_bytes"] == 48 * MiB and there["memory_maximum_bytes"] == 4096 * MiB
    check = lab.verify("lc-dm")
    assert check["running_on"] == ["hv3"] and check["integrity"] == "ok", check


def test_lab_add_vm_takes_the_lifecycle_options_and_refuses_a_bad_one_in_one_line(lab):
    res, vm = lab.cli_json("lab", "add-vm", "lc-cli", "--host", "hv2", "--memory-mb", "16", "--disk-mb", "16",
                           "--automatic-start-action", "Nothing", "--dynamic-memory", "--memory-assigned-mb", "32",
                           "--memory-maximum-mb", "64", "--json")
    assert res.returncode == 0, res.stderr
    assert vm["automatic_start_action"] == "Nothing" and vm["dynamic_memory_enabled"] is True
    assert vm["memory_assigned_bytes"] == 32 * MiB and vm["memory_maximum_bytes"] == 64 * MiB
    for args, says in ((("--memory-assigned-mb", "32"), "go with --dynamic-memory"),
                       (("--dynamic-memory", "--memory-assigned-mb", "128", "--memory-maximum-mb", "64"),
                        "memory_assigned_mb must be"),
                       (("--automatic-start-action", "Always"), "invalid choice")):
        before = [v["id"] for v in lab.emulator("hv2").state()["vms"]]
        res = lab.cli("lab", "add-vm", "lc-cli-bad", "--host", "hv2", "--memory-mb", "16", *args)
        assert res.returncode == 2 and says in res.stderr, res.stderr
        if says != "invalid choice":  # argparse prints its usage first
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert [v["id"] for v in lab.emulator("hv2").state()["vms"]] == before
    res = lab.cli("lab", "restart-host", "hv9")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
