"""The emulated host's VM lifecycle rules (docs/hyperv-rules.md, "VM lifecycle"), in process:
automatic start actions and what Set-VM may change when, the host's own shutdown and start,
discarding a saved state, and Dynamic Memory's saved state."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from lab.emulator import disk
from lab.emulator.errors import OpError
from lab.emulator.model import BOOT_MARKER, HyperVHost
from lab.history import load_events, overlaps
from lab.verify import verify_vm
from tests.unit import emulated

MiB = 1024 * 1024


@pytest.fixture
def lab(tmp_path: Path):
    yield from emulated.hosts_in(tmp_path, heartbeat_delay_s=0.0)


def new_vm(h: HyperVHost, name: str = "vm1", **kw) -> dict:
    kw.setdefault("memory_mb", 1)
    kw.setdefault("disk_mb", 1)
    kw.setdefault("write_rate_kbps", 400)
    return h.create_vm(name, **kw)["vm"]


def wait_writes(h: HyperVHost, vm_id: str, more: int = 3) -> None:
    target = h.vms[vm_id].live_counter + more
    deadline = time.monotonic() + 5
    while h.vms[vm_id].live_counter < target:
        assert time.monotonic() < deadline, "guest writer made no progress"
        time.sleep(0.02)


def refused(category: str, fqid_prefix: str):
    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, e, tb):
            assert et is OpError, f"expected OpError, got {et}"
            assert e.category == category and e.fqid.startswith(fqid_prefix), (e.category, e.fqid, e.message)
            return True
    return Ctx()


def reboot(lab_dir: Path, h: HyperVHost, make) -> HyperVHost:
    """What `quickmig lab restart-host` does to the host's process: shut down, start again."""
    h.host_shutdown()
    h.shutdown()
    assert (h.state_dir / BOOT_MARKER).is_file()
    again = make(h.name)
    assert not (again.state_dir / BOOT_MARKER).exists()
    return again


def test_a_new_vm_starts_if_running_and_vminfo_shows_the_action_and_memory(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, memory_mb=2)
    assert vm["automatic_start_action"] == "StartIfRunning"  # Hyper-V's default for a new VM
    assert vm["dynamic_memory_enabled"] is False
    assert vm["memory_assigned_bytes"] == vm["memory_startup_bytes"] == 2 * MiB
    with refused("InvalidArgument", "InvalidParameter"):
        new_vm(h, "bad", automatic_start_action="Always")
    with refused("InvalidArgument", "InvalidParameter"):
        new_vm(h, "bad", memory_assigned_mb=4)  # without Dynamic Memory


def test_set_vm_changes_the_action_of_a_running_or_off_vm_and_never_of_a_saved_one(lab):
    _, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    # while it runs, before Save-VM (save_vm's script does both)
    saved = h.run("save_vm", {"vm_id": vid, "automatic_start_action": "Nothing"})["vm"]
    assert saved["state"] == "Saved" and saved["automatic_start_action"] == "Nothing"
    # a Saved VM: refused (the harsher reading), nothing changed
    with refused("InvalidOperation", "InvalidState,Microsoft.HyperV.PowerShell.Commands.SetVM"):
        h.run("save_vm", {"vm_id": vid, "automatic_start_action": "Start"})
    assert h.vms[vid].automatic_start_action == "Nothing" and h.vms[vid].state == "Saved"
    # start_vm gives it back once the VM runs
    started = h.run("start_vm", {"vm_id": vid, "automatic_start_action": "Start"})["vm"]
    assert started["state"] == "Running" and started["automatic_start_action"] == "Start"
    with refused("InvalidArgument", "InvalidParameter"):
        h.run("start_vm", {"vm_id": vid, "automatic_start_action": "Sometimes"})
    # the configuration carries it (a copy registered elsewhere keeps it)
    cfg = json.loads(h.paths.local(h.vms[vid].config_path).read_text())
    assert cfg["automatic_start_action"] == "Start"


def test_stop_vm_turn_off_of_a_saved_vm_is_refused_and_remove_saved_state_discards_it(lab):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    wait_writes(h, vid)
    h.run("save_vm", {"vm_id": vid})
    vmrs = h.paths.local(h.vms[vid].state_file("vmrs"))
    assert vmrs.is_file()
    # Stop-VM -TurnOff on a Saved VM: refused, the saved state kept
    with refused("InvalidOperation", "InvalidState,Microsoft.HyperV.PowerShell.Commands.StopVM"):
        h.lifecycle.turn_off(h.vms[vid])
    assert vmrs.is_file() and h.vms[vid].state == "Saved"
    # Remove-VMSavedState of a VM that is not Saved: refused
    other = new_vm(h, "vm2")["id"]
    with refused("InvalidOperation", "InvalidState,Microsoft.HyperV.PowerShell.Commands.RemoveVMSavedState"):
        h.lifecycle.remove_saved_state(h.vms[other])
    # stop_vm (the kept source): Remove-VMSavedState, then Nothing while Off
    assert h.run("stop_vm", {"vm_id": vid, "automatic_start_action": "Nothing"}) == \
        {"state": "Off", "automatic_start_action": "Nothing"}
    assert not vmrs.exists()
    assert h.run("describe_vm", {"vm_id": vid})["vm"]["automatic_start_action"] == "Nothing"
    # its disks are unaffected
    assert disk.chain_records(h.vms[vid].disks[0]["path"], h.paths.local)[-1] == h.vms[vid].counter
    stop, setting = [e for e in load_events(lab_dir) if e["vm_id"] == vid][-2:]
    assert stop["event"] == "stop" and stop["discarded_saved_state"] is True
    assert setting["event"] == "set" and setting["automatic_start_action"] == "Nothing"


@pytest.mark.parametrize("action, before, after", [
    ("Nothing", "Saved", "Saved"),
    ("Nothing", "Off", "Off"),
    ("Nothing", "Running", "Saved"),         # saved at shutdown, left saved
    ("StartIfRunning", "Running", "Running"),
    ("StartIfRunning", "Saved", "Running"),  # harsher reading: a saved VM counts as active
    ("StartIfRunning", "Off", "Off"),
    ("Start", "Off", "Running"),             # boots cold
    ("Start", "Saved", "Running"),
])
def test_a_host_restart_does_what_each_vms_automatic_start_action_says(lab, action, before, after):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h, automatic_start_action=action, start=before != "Off")["id"]
    if before != "Off":
        wait_writes(h, vid)
    if before == "Saved":
        h.run("save_vm", {"vm_id": vid})
    counter = h.vms[vid].live_counter
    again = reboot(lab_dir, h, make)
    assert again.vms[vid].state == after
    if after == "Running":
        wait_writes(again, vid)
        if before != "Off":  # resumed from the saved memory, not cold
            assert f"start resumed_from={counter} " in (lab_dir / "guests" / f"{vid}.journal").read_text()
    res = verify_vm(lab_dir, "vm1")
    assert res["integrity"] == "ok", res
    shutdown_saves = [e for e in load_events(lab_dir) if e["event"] == "save" and e.get("reason") == "host shutdown"]
    assert len(shutdown_saves) == (before == "Running")


def test_a_crash_of_the_host_process_is_not_a_boot(lab):
    """Without the boot marker (the process died, VMMS restarted) a running VM keeps running,
    whatever its action; a saved one stays saved."""
    lab_dir, make = lab
    h = make("hv1")
    run = new_vm(h, automatic_start_action="Nothing")["id"]
    kept = new_vm(h, "vm2", automatic_start_action="Start")["id"]
    h.run("save_vm", {"vm_id": kept})
    h.shutdown()
    again = make("hv1")
    assert again.vms[run].state == "Running" and again.vms[kept].state == "Saved"


def test_a_kept_source_never_starts_by_itself_and_verify_sees_two_copies_if_it_did(lab):
    """A migrated VM's source copy: saved with Nothing and discarded, a restart leaves it off;
    one left at Start boots cold beside the migrated copy, which lab verify reports."""
    lab_dir, make = lab
    h1, h2 = make("hv1"), make("hv2")
    safe = new_vm(h1, "safe", automatic_start_action="Start", iso=False)["id"]
    unsafe = new_vm(h1, "unsafe", automatic_start_action="Start", iso=False)["id"]
    for vid in (safe, unsafe):
        wait_writes(h1, vid)
    h1.run("save_vm", {"vm_id": safe, "automatic_start_action": "Nothing"})
    h1.run("save_vm", {"vm_id": unsafe})
    for vid in (safe, unsafe):  # "migrate": register the saved files on hv2, start there
        vm = h1.vms[vid]
        shutil.copytree(h1.paths.local(vm.path), h2.paths.local(vm.path.replace("hv1", "hv2", 1)))
        base = vm.disks[0]["path"]
        imported = h2.run("import_vm", {"config_path": vm.config_path.replace("hv1", "hv2", 1),
                                        "disk_paths": {base: base.replace("hv1", "hv2", 1)},
                                        "iso_paths": {}, "parent_fixes": [], "roots": [h2.paths.vm_root],
                                        "vm_folder": vm.path.replace("hv1", "hv2", 1)})["vm"]
        assert imported["state"] == "Saved"
        assert imported["automatic_start_action"] == ("Nothing" if vid == safe else "Start")
        h2.run("start_vm", {"vm_id": vid, "automatic_start_action": "Start"})
        assert h2.vms[vid].automatic_start_action == "Start"
        h1.run("stop_vm", {"vm_id": vid, **({"automatic_start_action": "Nothing"} if vid == safe else {})})
    reboot(lab_dir, h1, make)
    events = load_events(lab_dir)
    assert overlaps(events, safe) == []
    found = overlaps(events, unsafe)
    assert [(o["started_on"], o["still_running_on"]) for o in found] == [("hv1", ["hv2"])]


def test_dynamic_memory_saves_the_assigned_memory_and_a_copy_keeps_the_settings(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, memory_mb=2, dynamic_memory=True, memory_assigned_mb=5)
    vid = vm["id"]
    assert vm["dynamic_memory_enabled"] is True and vm["memory_startup_bytes"] == 2 * MiB
    assert vm["memory_assigned_bytes"] == 5 * MiB and vm["memory_maximum_bytes"] == 1048576 * MiB
    saved = h.run("save_vm", {"vm_id": vid})["vm"]
    assert saved["memory_assigned_bytes"] == 0  # a VM that does not run is assigned nothing
    vmrs = h.paths.local(h.vms[vid].state_file("vmrs"))
    assert disk.read_vmrs(vmrs)["memory_bytes"] == 5 * MiB
    assert vmrs.stat().st_size >= 5 * MiB  # the saved state is the assigned memory, not the startup
    smaller = new_vm(h, "vm2", memory_mb=4, dynamic_memory=True, memory_assigned_mb=1, memory_maximum_mb=8)
    assert smaller["memory_assigned_bytes"] == 1 * MiB and smaller["memory_maximum_bytes"] == 8 * MiB
    h.run("save_vm", {"vm_id": smaller["id"]})
    assert disk.read_vmrs(h.paths.local(h.vms[smaller["id"]].state_file("vmrs")))["memory_bytes"] == 1 * MiB
    with refused("InvalidArgument", "InvalidParameter"):
        new_vm(h, "vm3", memory_mb=4, dynamic_memory=True, memory_maximum_mb=2)  # below startup
    cfg = json.loads(h.paths.local(h.vms[vid].config_path).read_text())
    assert cfg["dynamic_memory_enabled"] is True and cfg["memory_assigned_bytes"] == 5 * MiB
