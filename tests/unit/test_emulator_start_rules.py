"""The emulated host's older rules, each held by a test (docs/hyperv-rules.md, "VM lifecycle"):
what Start-VM needs to find, what a saved state must belong to, when a checkpoint is refused."""
from __future__ import annotations

import shutil

from tests.unit import test_emulator_model
from tests.unit.test_emulator_model import expect_error, new_vm

lab = test_emulator_model.lab  # the same fixture: emulated hosts in process


def _off(h, vid: str) -> None:
    h.run("stop_vm", {"vm_id": vid})
    assert h.vms[vid].state == "Off"


def test_start_vm_fails_while_a_disk_of_the_chain_is_missing_and_boots_once_it_is_back(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0)
    _off(h, vm["id"])
    path = h.paths.local(vm["disks"][0]["path"])
    shutil.move(path, path.with_suffix(".away"))
    with expect_error("NotSpecified", "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StartVM") as ctx:
        h.run("start_vm", {"vm_id": vm["id"]})
    assert "cannot find the file" in ctx.error.message
    assert h.vms[vm["id"]].state == "Off"
    shutil.move(path.with_suffix(".away"), path)
    assert h.run("start_vm", {"vm_id": vm["id"]})["vm"]["state"] == "Running"


def test_start_vm_fails_while_an_iso_image_it_has_is_missing(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0, iso=True)
    assert vm["isos"], vm
    _off(h, vm["id"])
    iso = h.paths.local(vm["isos"][0])
    iso.rename(iso.with_suffix(".away"))
    with expect_error("NotSpecified", "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StartVM") as ctx:
        h.run("start_vm", {"vm_id": vm["id"]})
    assert "ISO image" in ctx.error.message and h.vms[vm["id"]].state == "Off"


def test_a_saved_state_of_another_vm_is_not_restored_and_is_kept(lab):
    _, make = lab
    h = make("hv1")
    one = new_vm(h, "one", write_rate_kbps=0)
    two = new_vm(h, "two", write_rate_kbps=0)
    for vid in (one["id"], two["id"]):
        h.run("save_vm", {"vm_id": vid})
    mine = h.paths.local(h.vms[one["id"]].state_file("vmrs"))
    theirs = h.paths.local(h.vms[two["id"]].state_file("vmrs"))
    shutil.copyfile(theirs, mine)
    with expect_error("NotSpecified", "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StartVM") as ctx:
        h.run("start_vm", {"vm_id": one["id"]})
    assert two["id"] in ctx.error.message
    assert h.vms[one["id"]].state == "Saved" and mine.is_file()


def test_a_vm_with_a_pass_through_disk_takes_no_checkpoint(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0, passthrough_disk=True)
    with expect_error("InvalidOperation", "OperationFailed,Microsoft.HyperV.PowerShell.Commands.CheckpointVM") as ctx:
        h.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "m1"})
    assert "pass-through" in ctx.error.message
    assert h.run("describe_vm", {"vm_id": vm["id"]})["vm"].get("snapshots", []) == []
