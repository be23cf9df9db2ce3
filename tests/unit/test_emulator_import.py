"""The emulated host's Compare-VM and Import-VM -Register, its planned VMs and checkpoint files,
in process: each test holds one rule of docs/hyperv-rules.md, "Validation and import".

The two hosts keep their VMs in different folders on different drives (D:\\VMs\\hv1 and
E:\\Hyper-V), as hosts of a real fleet do: nothing may work only because the paths happen
to line up.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from lab.emulator.errors import OpError
from lab.emulator.faults import parse_fault
from lab.emulator.model import HyperVHost
from lab.verify import verify_vm
from tests.unit import emulated

ROOTS = {"hv1": "D:\\VMs\\hv1", "hv2": "E:\\Hyper-V"}


@pytest.fixture
def lab(tmp_path: Path):
    yield from emulated.hosts_in(tmp_path, ROOTS)


def expect_error(category: str, fqid_prefix: str = ""):
    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, e, tb):
            assert et is OpError, f"expected OpError, got {et}"
            assert e.category == category, (e.category, e.message)
            assert e.fqid.startswith(fqid_prefix), e.fqid
            self.error = e
            return True
    return Ctx()


def wait_counter(h: HyperVHost, vm_id: str, at_least: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while h.vms[vm_id].live_counter < at_least:
        assert time.monotonic() < deadline, "the guest writer did not advance"
        time.sleep(0.02)


class Move:
    """quickmig's method by hand between two emulated hosts: a file keeps its path relative to
    the host's VM root (workers.model.file_plan)."""

    def __init__(self, src: HyperVHost, dst: HyperVHost):
        self.src, self.dst = src, dst

    def dest(self, hp: str) -> str:
        return self.dst.paths.vm_root + hp[len(self.src.paths.vm_root):]

    def copy(self, hp: str) -> str:
        to = self.dst.paths.local(self.dest(hp))
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.src.paths.local(hp), to)
        return self.dest(hp)

    def copy_frozen(self, vm: dict) -> None:
        for d in vm["disks"]:
            for hp in d["chain"][1:]:
                self.copy(hp)
        for s in vm["snapshots"]:
            for hp in s["files"]:
                self.copy(hp)
        for hp in vm["isos"]:
            self.copy(hp)

    def compare_args(self, vm: dict) -> dict:
        """prepare's compare_vm: each drive at its newest frozen disk, ISOs, the VM's folder."""
        return {"config_path": self.dest(vm["config_path"]),
                "disk_paths": {d["path"]: self.dest(d["chain"][1]) for d in vm["disks"]},
                "iso_paths": {i: self.dest(i) for i in vm["isos"]}, "vm_folder": self.dest(vm["path"])}

    def frozen_fixes(self, vm: dict) -> list[dict]:
        chain = vm["disks"][0]["chain"]
        return [{"path": self.dest(chain[k]), "parent_path": self.dest(chain[k + 1])} for k in range(1, len(chain) - 1)]

    def import_args(self, vm: dict, fixes: list[dict] | None = None) -> dict:
        chain = vm["disks"][0]["chain"]
        if fixes is None:
            fixes = [{"path": self.dest(chain[0]), "parent_path": self.dest(chain[1])}]
        return {"config_path": self.dest(vm["config_path"]), "disk_paths": {p: self.dest(p) for p in chain},
                "iso_paths": {i: self.dest(i) for i in vm["isos"]}, "parent_fixes": fixes,
                "vm_folder": self.dest(vm["path"]), "roots": [self.dst.paths.vm_root]}


def running_vm(h: HyperVHost, name: str = "vm1", **kw) -> dict:
    kw.setdefault("memory_mb", 1)
    kw.setdefault("disk_mb", 1)
    kw.setdefault("write_rate_kbps", 400)
    return h.create_vm(name, **kw)["vm"]


def checkpointed(h1: HyperVHost, h2: HyperVHost, **kw) -> tuple[dict, dict, Move]:
    """A running VM on h1 with quickmig's checkpoint, its frozen files copied to h2."""
    vm = running_vm(h1, **kw)
    if vm["state"] == "Running" and kw.get("write_rate_kbps") != 0:
        wait_counter(h1, vm["id"], 3)
    snap = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "quickmig-x"})
    move = Move(h1, h2)
    move.copy_frozen(snap["vm"])
    return snap["vm"], snap["snapshot"], move


def incompatibilities(h: HyperVHost, args: dict) -> list[str]:
    out = h.run("compare_vm", args)
    assert out["left_behind"] == []
    return [i["message"] for i in out["incompatibilities"]]


# ---- the method, end to end ----------------------------------------------------------

def test_a_quick_migration_between_hosts_on_other_drives_loses_nothing(lab):
    lab_dir, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, snap, move = checkpointed(h1, h2, name="mover ☃")
    vid = vm["id"]
    # prepare: the VM's own configuration where the import will find it, validated as imported
    move.copy(vm["config_path"])
    assert incompatibilities(h2, move.compare_args(vm)) == []
    assert h2.lab_state()["planned"] == [] and h2.run("list_vms", {}) == {"vms": []}
    wait_counter(h1, vid, h1.vms[vid].live_counter + 3)
    # cutover
    saved = h1.run("save_vm", {"vm_id": vid})["vm"]
    move.copy(saved["disks"][0]["chain"][0])
    for f in saved["state_files"]:
        move.copy(f)
    imported = h2.run("import_vm", move.import_args(saved))["vm"]
    folder = move.dest(vm["path"])
    assert imported["state"] == "Saved" and imported["path"] == folder
    assert imported["snapshot_location"] == folder and imported["smart_paging_path"] == folder
    assert [s["files"] for s in imported["snapshots"]] == [[move.dest(f) for f in snap["files"]]]
    assert h2.lab_state()["planned"] == []
    h2.run("start_vm", {"vm_id": vid})
    assert h2.run("wait_heartbeat", {"vm_id": vid, "timeout_s": 5})["heartbeat"] == "OK"
    # finish: merge on the destination, remove on the source
    merged = h2.run("remove_snapshots", {"vm_id": vid, "snapshot_ids": [snap["id"]]})["vm"]
    assert merged["snapshots"] == [] and not any(h2.paths.local(move.dest(f)).exists() for f in snap["files"])
    h1.run("remove_vm", {"vm_id": vid, "config_path": saved["config_path"], "turn_off": False,
                         "delete_paths": saved["disks"][0]["chain"], "roots": [h1.paths.vm_root]})
    # the VM checkpoints where it lives now
    again = h2.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "after"})["snapshot"]
    assert all(f.startswith(folder + "\\Snapshots\\") for f in again["files"])
    wait_counter(h2, vid, h2.vms[vid].live_counter + 3)
    res = verify_vm(lab_dir, "mover ☃")
    assert res["integrity"] == "ok" and res["running_on"] == ["hv2"], res["integrity"]


def test_pre_copy_rounds_need_every_checkpoint_and_their_frozen_disks_are_reparented_before_the_downtime(lab):
    lab_dir, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm = running_vm(h1, "rounds")
    vid, move, snaps = vm["id"], Move(h1, h2), []
    for _ in range(3):
        wait_counter(h1, vid, h1.vms[vid].live_counter + 3)
        s = h1.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "quickmig-x"})
        snaps.append(s["snapshot"]["id"])
        move.copy_frozen(s["vm"])
    vm = h1.run("describe_vm", {"vm_id": vid})["vm"]
    move.copy(vm["config_path"])
    args = move.compare_args(vm)
    assert any("Could not find the virtual hard disk 'D:\\VMs\\hv1" in m for m in incompatibilities(h2, args))
    # prepare, before Save-VM
    h2.run("reparent_disks", {"parent_fixes": move.frozen_fixes(vm), "roots": [h2.paths.vm_root]})
    assert incompatibilities(h2, args) == []
    saved = h1.run("save_vm", {"vm_id": vid})["vm"]
    move.copy(saved["disks"][0]["chain"][0])
    for f in saved["state_files"]:
        move.copy(f)
    h2.run("import_vm", move.import_args(saved))  # only the leaf's parent is fixed in the downtime
    h2.run("start_vm", {"vm_id": vid})
    assert len(h2.run("describe_vm", {"vm_id": vid})["vm"]["snapshots"]) == 3
    merged = h2.run("remove_snapshots", {"vm_id": vid, "snapshot_ids": snaps})["vm"]
    assert merged["disks"][0]["chain"] == [move.dest(saved["disks"][0]["chain"][-1])] and merged["snapshots"] == []
    h1.run("remove_vm", {"vm_id": vid, "config_path": saved["config_path"], "turn_off": False,
                         "delete_paths": saved["disks"][0]["chain"], "roots": [h1.paths.vm_root]})
    wait_counter(h2, vid, h2.vms[vid].live_counter + 3)
    res = verify_vm(lab_dir, "rounds")
    assert res["integrity"] == "ok" and res["running_on"] == ["hv2"], res


# ---- Compare-VM and Import-VM -Register: one rule each -------------------------------

def test_a_checkpoint_configuration_is_not_a_vm_definition(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, snap, move = checkpointed(h1, h2)
    for op, args in (("compare_vm", {**move.compare_args(vm), "config_path": move.dest(snap["config_path"])}),
                     ("import_vm", {**move.import_args(vm, fixes=[]), "config_path": move.dest(snap["config_path"])})):
        with expect_error("InvalidArgument", "InvalidConfiguration") as e:
            h2.run(op, args)
        assert "configuration of a checkpoint" in e.error.message
    assert h2.lab_state()["planned"] == []


def test_compare_looks_for_every_file_where_the_configuration_names_it_until_fixed_through_the_report(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, _, move = checkpointed(h1, h2, write_rate_kbps=0)
    move.copy(vm["config_path"])
    unfixed = incompatibilities(h2, {"config_path": move.dest(vm["config_path"])})
    src_folder = vm["path"]
    assert f"Could not find the virtual hard disk '{vm['disks'][0]['path']}'." in unfixed[0]  # never re-rooted
    assert any(f"'{vm['isos'][0]}'" in m for m in unfixed)
    assert any(f"checkpoint file location '{src_folder}'" in m for m in unfixed)
    assert any(f"Smart Paging folder '{src_folder}'" in m for m in unfixed)
    assert len(unfixed) == 4, unfixed
    assert incompatibilities(h2, move.compare_args(vm)) == []


def test_a_differencing_disk_finds_its_parent_only_where_it_says_until_set_vhd_points_it_elsewhere(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, _, move = checkpointed(h1, h2, write_rate_kbps=0)
    saved = h1.run("save_vm", {"vm_id": vm["id"]})["vm"]
    move.copy(saved["disks"][0]["chain"][0])
    for f in saved["state_files"]:
        move.copy(f)
    with expect_error("InvalidData", "IncompatibleVM") as e:
        h2.run("import_vm", move.import_args(saved, fixes=[]))
    assert f"Could not find the virtual hard disk '{saved['disks'][0]['chain'][1]}'" in e.error.message
    assert h2.lab_state()["planned"] == []  # a refused import leaves no planned VM
    assert h2.run("import_vm", move.import_args(saved))["vm"]["state"] == "Saved"


def test_register_looks_for_every_file_of_every_checkpoint_in_snapshots_beside_the_configuration(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm = running_vm(h1)
    wait_counter(h1, vm["id"], 3)
    theirs = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "before the update"})["snapshot"]
    ours = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "quickmig-x"})
    vm, move = ours["vm"], Move(h1, h2)
    assert [f.rsplit(".", 1)[1] for f in theirs["files"]] == ["vmcx", "vmgs", "vmrs"]  # Standard: with memory
    move.copy_frozen(vm)
    move.copy(vm["config_path"])
    h2.run("reparent_disks", {"parent_fixes": move.frozen_fixes(vm), "roots": [h2.paths.vm_root]})
    args = move.compare_args(vm)
    assert incompatibilities(h2, args) == []
    for f in theirs["files"]:  # each file of the checkpoint is needed, beside the configuration
        held = h2.paths.local(move.dest(f))
        held.rename(held.with_name("elsewhere"))
        found = incompatibilities(h2, args)
        assert len(found) == 1 and "'before the update'" in found[0] and move.dest(f) in found[0], found
        assert f"looked for in '{move.dest(vm['path'])}\\Snapshots'" in found[0]
        held.with_name("elsewhere").rename(held)


def test_a_production_checkpoint_keeps_no_memory_and_checkpoints_go_to_the_vms_checkpoint_location(lab):
    _, make = lab
    h1 = make("hv1")
    vm = running_vm(h1, checkpoint_type="Production")
    snap = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "p"})["snapshot"]
    assert [f.rsplit(".", 1)[1] for f in snap["files"]] == ["vmcx", "vmgs"]
    assert all(f.startswith(vm["path"] + "\\Snapshots\\") for f in snap["files"])
    h1.vms[vm["id"]].snapshot_location = "D:\\VMs\\hv2\\elsewhere"  # a folder this host does not have
    with expect_error("ObjectNotFound", "OperationFailed") as e:
        h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "q"})
    assert "checkpoint file location" in e.error.message


def test_remove_vm_and_remove_vmsnapshot_delete_every_file_of_a_checkpoint(lab):
    _, make = lab
    h1 = make("hv1")
    vm = running_vm(h1)
    a = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "a"})["snapshot"]
    b = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "b"})["snapshot"]
    h1.run("remove_snapshots", {"vm_id": vm["id"], "snapshot_ids": [a["id"]]})
    assert not any(h1.paths.local(f).exists() for f in a["files"])
    assert all(h1.paths.local(f).exists() for f in b["files"])
    h1.run("remove_vm", {"vm_id": vm["id"], "config_path": vm["config_path"], "turn_off": True,
                         "delete_paths": [], "roots": [h1.paths.vm_root]})
    assert not any(h1.paths.local(f).exists() for f in b["files"])


def test_the_id_is_kept_so_a_vm_with_it_here_is_refused(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, _, move = checkpointed(h1, h2, write_rate_kbps=0)
    saved = h1.run("save_vm", {"vm_id": vm["id"]})["vm"]
    move.copy(saved["disks"][0]["chain"][0])
    for f in saved["state_files"]:
        move.copy(f)
    h2.run("import_vm", move.import_args(saved))
    for op, args in (("import_vm", move.import_args(saved)), ("compare_vm", move.compare_args(saved))):
        with expect_error("ResourceExists", "ObjectAlreadyExists"):
            h2.run(op, args)


# ---- planned VMs ----------------------------------------------------------------------

def test_a_planned_vm_lasts_until_destroyed_keeps_its_configuration_in_use_and_outlives_a_restart(lab):
    lab_dir, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, _, move = checkpointed(h1, h2, write_rate_kbps=0)
    cfg = move.copy(vm["config_path"])
    h2.faults.add(parse_fault({"op": "compare_vm:DestroySystem", "action": "fail", "message": "WMI said no"}))
    out = h2.run("compare_vm", move.compare_args(vm))
    assert out["incompatibilities"] == []
    assert out["left_behind"] == [{"kind": "planned_vm", "id": vm["id"], "name": vm["name"], "error": "WMI said no"}]
    h2.shutdown()
    h2 = make("hv2")  # VMMS restarted: the planned VM is still there
    assert h2.lab_state()["planned"] == [{"id": vm["id"], "name": vm["name"], "definition": cfg}]
    assert h2.run("list_vms", {}) == {"vms": []}  # Get-VM lists realized VMs only
    with expect_error("ResourceBusy", "ObjectInUse"):  # ImportSystemDefinition: a definition file in use
        h2.run("compare_vm", move.compare_args(vm))
    with expect_error("WriteError", "RemoveFileSystemItemIOError"):
        h2.run("delete_files", {"paths": [cfg], "roots": [h2.paths.vm_root]})
    h2.operations.importer.destroy(vm["id"], "compare_vm")  # what an administrator's DestroySystem does
    assert incompatibilities(h2, move.compare_args(vm)) == []
    assert h2.run("delete_files", {"paths": [cfg], "roots": [h2.paths.vm_root]}) == {"deleted": [cfg], "kept": []}
    assert json.loads((lab_dir / "hosts/hv2/emulator/state.json").read_text())["planned"] == []


def test_a_refused_import_destroys_its_planned_vm_or_names_it(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vm, _, move = checkpointed(h1, h2, write_rate_kbps=0)
    saved = h1.run("save_vm", {"vm_id": vm["id"]})["vm"]
    for f in saved["state_files"]:
        move.copy(f)
    with expect_error("InvalidData", "IncompatibleVM"):  # the leaf was never copied
        h2.run("import_vm", move.import_args(saved, fixes=[]))
    assert h2.lab_state()["planned"] == []
    h2.faults.add(parse_fault({"op": "import_vm:DestroySystem", "action": "fail", "message": "WMI said no"}))
    with expect_error("InvalidData", "IncompatibleVM") as e:
        h2.run("import_vm", move.import_args(saved, fixes=[]))
    assert f"left behind: planned virtual machine {vm['id']}: WMI said no" in e.error.message
    assert [p["id"] for p in h2.lab_state()["planned"]] == [vm["id"]]


def test_a_step_fault_fails_only_that_step_and_a_wildcard_never_matches_a_step(lab):
    _, make = lab
    h = make("hv1")
    h.faults.add(parse_fault({"op": "*", "action": "fail"}))
    assert h.faults.take_step("compare_vm", "DestroySystem") is None
    h.faults.clear()
    h.faults.add(parse_fault({"op": "compare_vm:DestroySystem", "action": "fail", "times": 1}))
    assert h.faults.take("compare_vm") is None
    assert h.faults.take_step("compare_vm", "DestroySystem").action == "fail"
    assert h.faults.take_step("compare_vm", "DestroySystem") is None


def test_a_dvd_image_on_a_share_the_host_cannot_reach_is_incompatible_until_the_report_ejects_it(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    unc = "\\\\lib01\\ISO\\win2022.iso"
    vm = running_vm(h1, write_rate_kbps=0, iso=unc)
    assert vm["isos"] == [unc] and vm["dvd_drives"][0]["path"] == unc
    snap = h1.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "quickmig-x"})["vm"]
    move = Move(h1, h2)
    for d in snap["disks"]:
        for hp in d["chain"][1:]:
            move.copy(hp)
    for s in snap["snapshots"]:
        for hp in s["files"]:
            move.copy(hp)
    move.copy(snap["config_path"])
    args = move.compare_args({**snap, "isos": []})  # the library image stays where it is
    assert incompatibilities(h2, args) == []  # hv2 reaches the lab's library share
    assert h2.run("host_info", {"unc_paths": [unc]})["unc_reachable"] == {unc: True}
    h2.set_props({"unc_shares": []})
    assert h2.run("host_info", {"unc_paths": [unc]})["unc_reachable"] == {unc: False}
    assert incompatibilities(h2, args) == [f"Could not find the ISO image '{unc}'."]
    assert incompatibilities(h2, {**args, "eject_isos": [unc]}) == []  # Set-VMDvdDrive -Path $null


def test_a_dvd_image_path_is_checked_as_a_unc_path_and_start_vm_needs_it_reachable(lab):
    _, make = lab
    h1 = make("hv1")
    for bad in ("\\\\lib01\\ISO\\..\\x.iso", "\\\\lib01\\x.iso", "\\\\?\\C:\\x.iso", "\\\\lib01\\ISO\\a:b.iso"):
        with expect_error("InvalidArgument"):
            running_vm(h1, name="bad", iso=bad)
    vm = running_vm(h1, name="off", iso="\\\\lib01\\ISO\\tools.iso", start=False)
    h1.set_props({"unc_shares": []})
    with expect_error("NotSpecified", "OperationFailed"):
        h1.run("start_vm", {"vm_id": vm["id"]})
    h1.set_props({"unc_shares": ["\\\\lib01\\ISO"]})
    assert h1.run("start_vm", {"vm_id": vm["id"]})["vm"]["state"] == "Running"
