"""Checkpoints and the differencing-disk chains they make.

Checkpoint-VM freezes each disk's active leaf and gives it a child `<base>_<sid>.avhdx` in the
same folder, which the guest writes from then on, and writes the checkpoint's files to
`<SnapshotFileLocation>\\Snapshots`: its configuration `<SID>.vmcx`, its guest state
`<SID>.vmgs` and, for a Standard checkpoint of a running VM, its memory `<SID>.vmrs` (a
Production checkpoint takes no memory: Microsoft's "Using checkpoints"). Remove-VMSnapshot
merges the child of a checkpoint's disk back into it and deletes the checkpoint's files;
Set-VHD -ParentPath points a child at a moved parent (after a copy to another host).

Simplifications (documented gaps): a checkpoint's memory is never restored (nothing applies a
checkpoint); the process runs as root, so the 0444 mode of parents is advisory (the model
only ever writes to a VM's leaf).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

from lab.emulator import disk
from lab.emulator.errors import OpError, fqid
from lab.emulator.events import EventLog
from lab.emulator.hostpaths import leaf_name, parent_folder, same_path
from lab.emulator.hostresources import HostResources
from lab.emulator.lifecycle import VMGS_BYTES
from lab.emulator.registry import Registry
from lab.emulator.vm import VM, checkpoint_files
from lab.emulator.vmcx import vmcx_doc

log = logging.getLogger("lab.emulator.checkpoints")

_SET_VHD_FQID = "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.SetVHD"

# Plan for Hyper-V scalability in Windows Server, "Maximums for virtual machines": Checkpoints 50
MAX_CHECKPOINTS = 50


class Checkpoints:
    def __init__(self, registry: Registry, events: EventLog):
        self.reg = registry
        self.paths = registry.paths
        self.events = events

    # -- Checkpoint-VM -----------------------------------------------------------------
    def checkpoint(self, vm: VM, sname: str) -> dict:
        """Checkpoint-VM (the caller holds vm.op_lock): the new checkpoint's record."""
        if vm.checkpoint_type == "Disabled":
            raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are disabled for this "
                          f"virtual machine (CheckpointType is Disabled).", "InvalidOperation",
                          fqid("CheckpointsDisabled", "CheckpointVM"), vm.name)
        if any(d.get("disk_number") is not None for d in vm.disks):
            raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are not supported for "
                          f"virtual machines with pass-through disks.", "InvalidOperation",
                          fqid("OperationFailed", "CheckpointVM"), vm.name)
        if len(vm.snapshots) >= MAX_CHECKPOINTS:
            raise OpError(f"Checkpoint operation failed for '{vm.name}': the virtual machine already has "
                          f"{len(vm.snapshots)} checkpoints, the most Hyper-V allows ({MAX_CHECKPOINTS}).",
                          "LimitsExceeded", fqid("OperationFailed", "CheckpointVM"), vm.name)
        folder = f"{vm.snapshot_location}\\Snapshots"
        if not self.paths.is_under(folder):
            raise OpError(f"Checkpoint operation failed for '{vm.name}': the checkpoint file location "
                          f"'{vm.snapshot_location}' is not available on this host.", "ObjectNotFound",
                          fqid("OperationFailed", "CheckpointVM"), vm.name)
        sid = str(uuid.uuid4())
        base = f"{folder}\\{sid.upper()}"
        memory = vm.checkpoint_type == "Standard" and vm.state == "Running"
        if memory:  # its memory is saved as Save-VM saves it (harsher reading: refused alike)
            HostResources.check_save(vm, "CheckpointVM")
        frozen = self._freeze_disks(vm, sid)
        snap = {"id": sid, "name": sname, "config_path": base + ".vmcx",
                "files": [base + ".vmcx", base + ".vmgs"] + ([base + ".vmrs"] if memory else []),
                "disks": frozen, "created": time.time()}
        snap_doc = vmcx_doc(vm, self.paths.vm_root, snapshot={"id": sid, "name": sname, "created": snap["created"]})
        for i, d in enumerate(snap_doc["disks"]):
            d["path"] = frozen[i]
        sp = self.paths.local(snap["config_path"])
        sp.parent.mkdir(parents=True, exist_ok=True)
        sp.write_text(json.dumps(snap_doc, indent=1, ensure_ascii=False))
        disk.write_filler(self.paths.local(base + ".vmgs"), VMGS_BYTES, seed=f"{vm.id}:{sid}:vmgs")
        if memory:  # a Standard checkpoint of a running VM keeps its memory
            disk.write_vmrs(self.paths.local(base + ".vmrs"), vm.id, vm.live_counter, vm.memory_startup_bytes,
                            self.reg.name, snap["created"])
        vm.snapshots.append(snap)
        self.reg.save(vm)
        self.events.event(vm, "checkpoint", snapshot=sname, snapshot_id=sid)
        log.info("checkpoint %s of VM %s on %s", sid, vm.id, self.reg.name)
        return snap

    def _freeze_disks(self, vm: VM, sid: str) -> list[str]:
        """Give each disk's leaf a child the guest writes from now on; the frozen leaves."""
        frozen: list[str] = []
        with vm.io_lock:
            links = [vm.chain(self.paths, i) for i in range(len(vm.disks))]
            for i, d in enumerate(vm.disks):
                leaf = links[i][0]
                # named after the disk the drive had before any checkpoint (not a golden parent below it)
                own = next(link for link in links[i] if not link.host_path.lower().endswith((".avhdx", ".avhd")))
                stem = leaf_name(own.host_path).rsplit(".", 1)[0]
                new_hp = f"{parent_folder(leaf.host_path)}\\{stem}_{sid}.avhdx"
                disk.create_child(self.paths.local(new_hp), leaf.host_path, leaf.header)
                os.chmod(leaf.local, 0o444)  # a parent is read-only while it has a child
                frozen.append(leaf.host_path)
                d["path"] = new_hp
        return frozen

    # -- Remove-VMSnapshot -------------------------------------------------------------
    def merge(self, vm: VM, snap: dict) -> None:
        """Remove-VMSnapshot: merge the checkpoint's child disk into the checkpoint's disk."""
        with vm.io_lock:
            for i, frozen in enumerate(snap["disks"]):
                self._merge_disk(vm, snap, i, frozen)
        for hp in checkpoint_files(snap):
            try:
                self.paths.local(hp).unlink(missing_ok=True)
            except OpError:
                pass
        vm.snapshots.remove(snap)
        self.reg.save(vm)
        self.events.event(vm, "merge", snapshot=snap["name"], snapshot_id=snap["id"])
        log.info("merged checkpoint %s of VM %s on %s", snap["id"], vm.id, self.reg.name)

    def _merge_disk(self, vm: VM, snap: dict, i: int, frozen: str) -> None:
        chain = vm.chain(self.paths, i)
        idx = next((k for k, link in enumerate(chain) if same_path(link.host_path, frozen)), None)
        if idx is None:
            raise OpError(f"Cannot remove checkpoint '{snap['name']}' of '{vm.name}': its disk "
                          f"'{frozen}' is not in the VM's disk chain.", "InvalidOperation",
                          fqid("OperationFailed", "RemoveVMSnapshot"), vm.name)
        if idx == 0:
            return  # nothing was written after it (already merged)
        parent, child = chain[idx], chain[idx - 1]
        disk.merge_into_parent(child.local, parent.local)
        if idx >= 2:
            grand = chain[idx - 2]
            disk.set_parent(grand.local, parent.host_path, parent.header.uid, verify=False)
        else:
            vm.disks[i]["path"] = parent.host_path  # the running leaf was merged away
            os.chmod(parent.local, 0o644)
        os.chmod(child.local, 0o644)
        child.local.unlink()
        for other in vm.snapshots:
            if other is not snap and i < len(other["disks"]) and same_path(other["disks"][i], child.host_path):
                other["disks"][i] = parent.host_path

    # -- Set-VHD -ParentPath -----------------------------------------------------------
    def set_parents(self, fixes: list[dict]) -> None:
        """Set-VHD -ParentPath for each fix; every path is checked before anything changes."""
        for fx in fixes:
            self.paths.local(fx["path"], "SetVHD")
            self.paths.local(fx["parent_path"], "SetVHD")
        for fx in fixes:
            child, parent = self.paths.local(fx["path"], "SetVHD"), self.paths.local(fx["parent_path"], "SetVHD")
            for hp, lp in ((fx["path"], child), (fx["parent_path"], parent)):
                if not lp.is_file():
                    raise OpError(f"Set-VHD: the virtual hard disk '{hp}' was not found.", "InvalidArgument",
                                  _SET_VHD_FQID, hp)
            try:
                disk.set_parent(child, fx["parent_path"], disk.read_header(parent).uid, verify=True)
            except disk.DiskFormatError as e:
                raise OpError(f"Failed to set the parent of '{fx['path']}' to '{fx['parent_path']}': {e}",
                              "InvalidArgument", _SET_VHD_FQID, fx["path"]) from None
