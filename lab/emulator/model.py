"""The model of one Hyper-V host: its VMs, their files on the host's share, and Hyper-V's rules.

Host paths and the rules they must pass are in hostpaths.py; what the host offers (versions,
switches, CPU vendor, free space) in hostprops.py; the VM record, the layout of its files and
the lock order in vm.py; the configuration file in vmcx.py.

The registry (VMMS database) is `DIR/hosts/<host>/emulator/state.json`, rewritten atomically
on every change. Crash choice: a VM that was Running when the emulator process stopped is
Running again after a restart (the guest is treated as having kept running, as a VM does
when only VMMS restarts); its writer continues after the highest record on its disk chain
and the journal gets a `recover` line.

Simplifications (documented gaps): checkpoints write no memory .vmrs (as a Production
checkpoint); ACL grants are logged only; the process runs as root, so the 0444 mode of
parents is advisory (the model only ever writes to a VM's leaf); compare_vm looks for the
copied config's disks re-rooted under the given vm_root (a real Compare-VM -Copy looks at the
config's own paths unless told -VhdSourcePath); an imported VM's checkpoints come from its
main .vmcx (their own Snapshots\\<SID>.vmcx files are not required on import).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path

from lab.emulator import disk, hostprops
from lab.emulator.errors import OpError, fqid, invalid_arg
from lab.emulator.guest import GuestWriter, append_line
from lab.emulator.hostpaths import HostPaths, is_guid, leaf_name, parent_folder, same_path
from lab.emulator.hostprops import CPU_VENDOR, HOST_PROPS, SWITCHES
from lab.emulator.vm import CHECKPOINT_TYPES, MAX_NAME, VM, MiB, describe, invalid_state
from lab.emulator.vmcx import read_config, vmcx_doc, write_vmcx
from workers.smb import chunks

log = logging.getLogger("lab.emulator.model")

ISO_NAME = "lab-tools.iso"
ISO_BYTES = 4 * MiB
VMGS_BYTES = 64 * 1024
HEARTBEAT_DELAY_S = 0.2  # the guest's integration services answer this long after start

# Compare-VM message ids. 33012 (switch not found) is Hyper-V's; the others are this
# emulator's own numbers for the other incompatibilities it reports.
MSG_SWITCH = 33012
MSG_VHD = 40010
MSG_ISO = 40012
MSG_VERSION = 14004
MSG_CPU = 24004
MSG_CONFIG = 16010


def _whole(value, low: int, high: int | None = None) -> bool:
    """Whether value is a whole number (not a bool) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


class HyperVHost:
    def __init__(self, lab_dir: Path, name: str, vm_root: str, *, recover: bool = True,
                 heartbeat_delay_s: float = HEARTBEAT_DELAY_S):
        self.lab_dir = Path(lab_dir)
        self.name = name
        self.share = self.lab_dir / "hosts" / name / "share"
        self.state_dir = self.lab_dir / "hosts" / name / "emulator"
        self.state_file = self.state_dir / "state.json"
        self.guests_dir = self.lab_dir / "guests"
        self.events_file = self.lab_dir / "events.jsonl"
        self.paths = HostPaths(vm_root, self.share)
        self.heartbeat_delay_s = heartbeat_delay_s
        self.lock = threading.RLock()
        self.vms: dict[str, VM] = {}
        self.props: dict = hostprops.defaults()
        for d in (self.share, self.state_dir, self.guests_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._load(recover)

    # -- persistence -------------------------------------------------------------------
    def _load(self, recover: bool) -> None:
        try:
            doc = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        self.props.update({k: v for k, v in (doc.get("host_props") or {}).items() if k in HOST_PROPS})
        for d in doc.get("vms", []):
            vm = VM.from_state(d)
            self.vms[vm.id] = vm
        if not recover:
            return
        for vm in self.vms.values():
            if vm.state == "Running":
                self._recover(vm)

    def persist(self) -> None:
        with self.lock:
            doc = {"format": 1, "host": self.name, "vm_root": self.paths.vm_root, "host_props": dict(self.props),
                   "saved_at": time.time(), "vms": [vm.to_state() for vm in self.vms.values()]}
            tmp = self.state_file.with_name(f".state.{threading.get_ident()}.tmp")
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)

    def event(self, vm: VM, event: str, **extra) -> None:
        self._append_event(vm.id, event, vm_name=vm.name, **extra)

    def _append_event(self, vm_id: str, event: str, **extra) -> None:
        rec = {"t": time.time(), "host": self.name, "vm_id": vm_id, "event": event}
        rec.update(extra)
        append_line(self.events_file, json.dumps(rec, ensure_ascii=True))

    def file_event(self, event: str, host_path: str) -> None:
        """A file operation in a VM's folder (named by its id), registered here or not: so
        the record shows a destination's part in a migration before any import."""
        rel = host_path[len(self.paths.vm_root) + 1:] if self.paths.is_under(host_path) else ""
        folder = rel.split("\\", 1)[0].lower()
        if is_guid(folder):
            self._append_event(folder, event, path=host_path)

    def journal_path(self, vm_id: str) -> Path:
        return self.guests_dir / f"{vm_id}.journal"

    def journal(self, vm: VM, line: str) -> None:
        append_line(self.journal_path(vm.id), f"{line} host={self.name} t={time.time():.6f}")

    def write_vmcx(self, vm: VM) -> None:
        write_vmcx(self.paths, vm)

    # -- lookups -----------------------------------------------------------------------
    def _get(self, vm_id: object, cmdlet: str = "GetVM") -> VM:
        if not isinstance(vm_id, str) or not vm_id:
            raise invalid_arg("Cannot validate argument on parameter 'vm_id': it must be a VM id (GUID).", cmdlet)
        vm = self.vms.get(vm_id.lower())
        if vm is None:
            raise OpError(f"Hyper-V was unable to find a virtual machine with ID \"{vm_id}\".",
                          "ObjectNotFound", "VMNotFound", vm_id)
        return vm

    def chain(self, vm: VM, index: int = 0) -> list[disk.ChainLink]:
        return vm.chain(self.paths, index)

    def vm_info(self, vm: VM) -> dict:
        return describe(vm, self.paths)

    # -- dispatch ----------------------------------------------------------------------
    OPS = ("list_vms", "describe_vm", "host_info", "checkpoint_vm", "save_vm", "start_vm",
           "wait_heartbeat", "compare_vm", "import_vm", "remove_snapshots", "remove_vm", "delete_files",
           "reparent_disks", "stop_vm", "file_hash")

    def run(self, op: str, args: object) -> dict:
        if op not in self.OPS:
            raise OpError(f"The operation '{op}' is not supported by this host.", "NotImplemented",
                          "QuickmigUnknownOperation")
        if not isinstance(args, dict):
            raise invalid_arg("The arguments must be a JSON object.")
        return getattr(self, f"op_{op}")(args)

    # -- read-only operations ----------------------------------------------------------
    def op_list_vms(self, args: dict) -> dict:
        with self.lock:
            return {"vms": [{"id": v.id, "name": v.name, "state": v.state} for v in self.vms.values()]}

    def op_describe_vm(self, args: dict) -> dict:
        if args.get("vm_id") is not None:
            vm = self._get(args["vm_id"])
            return {"vm": self.vm_info(vm)}
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_arg("describe_vm needs 'name' or 'vm_id'.")
        with self.lock:
            # exact and case-sensitive, as the shipped script compares (-ceq): Get-VM -Name is a wildcard
            found = [v for v in self.vms.values() if v.name == name]
        if not found:
            raise OpError(f"Hyper-V was unable to find a virtual machine with name \"{name}\".",
                          "ObjectNotFound", "VMNotFound", name)
        if len(found) > 1:
            ids = ", ".join(v.id for v in found)
            raise OpError(f"More than one virtual machine is named \"{name}\" (ids {ids}); ask by vm_id.",
                          "InvalidResult", "AmbiguousVMName", name)
        return {"vm": self.vm_info(found[0])}

    def free_bytes(self) -> int:
        return hostprops.free_bytes(self.props, self.share)

    def set_props(self, doc: object) -> dict:
        """Lab control: change what this host offers (switches, versions, CPU vendor, free space)."""
        doc = hostprops.check(doc)
        with self.lock:
            self.props.update(doc)
            self.persist()
        return dict(self.props)

    def reset_props(self) -> dict:
        return self.set_props(hostprops.defaults())

    def op_host_info(self, args: dict) -> dict:
        free = self.free_bytes()
        p = self.props
        return {"name": self.name, "supported_versions": list(p["supported_versions"]),
                "switches": list(p["switches"]), "cpu_vendor": p["cpu_vendor"], "free_bytes": free,
                "vm_root_free_bytes": free}

    def op_wait_heartbeat(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "GetVMIntegrationService")
        timeout = args.get("timeout_s", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
            raise invalid_arg("timeout_s must be a number of seconds between 0 and 3600.", "GetVMIntegrationService")
        t0 = time.monotonic()
        while True:
            if vm.state != "Running":
                raise OpError(f"VM {vm.id} is {vm.state}; its heartbeat cannot come up.", "InvalidOperation",
                              "InvalidStateForHeartbeat", vm.id)
            w = vm.writer
            booting = time.monotonic() < vm.heartbeat_at
            if not booting and (w is None or w.error is None):
                return {"heartbeat": "OK", "waited_s": round(time.monotonic() - t0, 3)}
            if time.monotonic() - t0 >= timeout:
                status = "No Contact" if booting else "Lost Communication"
                raise OpError(f"Heartbeat of VM {vm.id} is \"{status}\", not OK, after {int(timeout)} s.",
                              "OperationTimeout", "HeartbeatTimeout", vm.id)
            time.sleep(0.02)

    # -- lab: create -------------------------------------------------------------------
    def ensure_iso(self) -> str:
        hp = f"{self.paths.vm_root}\\ISO\\{ISO_NAME}"
        local = self.paths.local(hp)
        with self.lock:
            if not local.is_file():
                disk.write_filler(local, ISO_BYTES, seed=ISO_NAME)  # same bytes on every host
        return hp

    def create_vm(self, name: object, memory_mb: object = 64, disk_mb: object = 128,
                  write_rate_kbps: object = 64, iso: object = True, checkpoint_type: object = "Standard",
                  start: object = True, version: object = "10.0", switches: object = None,
                  passthrough_disk: object = False) -> dict:
        """New-VM + New-VHD + Add-VMDvdDrive (+ Start-VM): the lab's way to make a VM."""
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name:
            raise invalid_arg(f"The VM name must be 1-{MAX_NAME} characters.", "NewVM")
        for what, v, hi in (("memory_mb", memory_mb, 65536), ("disk_mb", disk_mb, 65536),
                            ("write_rate_kbps", write_rate_kbps, 1 << 20)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise invalid_arg(f"{what} must be a number between 0 and {hi}.", "NewVM")
        if isinstance(memory_mb, float) or isinstance(disk_mb, float) or memory_mb < 1:
            raise invalid_arg("memory_mb (>= 1) and disk_mb must be integers.", "NewVM")
        if checkpoint_type not in CHECKPOINT_TYPES:
            raise invalid_arg(f"checkpoint_type must be one of {', '.join(CHECKPOINT_TYPES)}.", "NewVM")
        if not isinstance(version, str) or not re.fullmatch(r"\d{1,2}\.\d{1,2}", version):
            raise invalid_arg("version must look like 10.0.", "NewVM")
        if switches is None:
            switches = list(SWITCHES)
        if not isinstance(switches, list) or not all(isinstance(x, str) and 0 < len(x) <= MAX_NAME for x in switches):
            raise invalid_arg("switches must be a list of switch names.", "NewVM")
        vm_id = str(uuid.uuid4())
        folder = f"{self.paths.vm_root}\\{vm_id}"
        vm = VM(id=vm_id, name=name, path=folder,
                config_path=f"{folder}\\Virtual Machines\\{vm_id.upper()}.vmcx",
                memory_startup_bytes=int(memory_mb) * MiB, checkpoint_type=checkpoint_type,  # type: ignore[arg-type]
                write_rate_kbps=float(write_rate_kbps), version=version,  # type: ignore[arg-type]
                switches=list(switches), cpu_vendor=self.props["cpu_vendor"])
        base = f"{folder}\\Virtual Hard Disks\\disk0.vhdx"
        disk.create_base(self.paths.local(base), int(disk_mb), seed=vm_id)  # type: ignore[arg-type]
        vm.disks = [{"controller_type": "SCSI", "controller_number": 0, "controller_location": 0, "path": base}]
        if passthrough_disk:  # Add-VMHardDiskDrive -DiskNumber: a physical disk of this host, no file
            vm.disks.append({"controller_type": "SCSI", "controller_number": 0, "controller_location": 1,
                             "path": "Disk 2 10.00 GB Bus 0 Lun 1 Target 0", "disk_number": 2})
        if iso:
            vm.isos = [self.ensure_iso()]
        disk.write_filler(self.paths.local(vm.state_file("vmgs")), VMGS_BYTES, seed=vm_id + ":vmgs")
        with self.lock:
            self.vms[vm_id] = vm
            self.write_vmcx(vm)
            self.persist()
        self.event(vm, "create")
        log.info("created VM %s (%r) on %s", vm_id, name, self.name)
        if start:
            with vm.op_lock:
                self._start(vm)
        return {"vm": self.vm_info(vm)}

    # -- start / save / stop -----------------------------------------------------------
    def _target(self, vm: VM) -> Path:
        return self.paths.local(vm.disks[0]["path"])

    def _writer(self, vm: VM, counter: int) -> GuestWriter:
        return GuestWriter(vm.id, self.name, self.journal_path(vm.id), vm.io_lock,
                           lambda: self._target(vm), vm.write_rate_kbps, counter)

    def _check_bootable(self, vm: VM) -> list[disk.ChainLink]:
        try:
            chain = self.chain(vm)
        except FileNotFoundError as e:
            raise OpError(f"'{vm.name}' failed to start. Synthetic SCSI Controller: Failed to power on with "
                          f"error 'The system cannot find the file specified.' ({e.args[0]})",
                          "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name) from None
        except disk.DiskFormatError as e:
            raise OpError(f"'{vm.name}' failed to start: the virtual hard disk chain is broken: {e}",
                          "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name) from None
        for iso in vm.isos:
            if not self.paths.local(iso).is_file():
                raise OpError(f"'{vm.name}' failed to start. The ISO image '{iso}' was not found.",
                              "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)
        return chain

    def _start(self, vm: VM) -> None:
        if vm.state == "Running":
            log.warning("Start-VM %s: the virtual machine is already in the specified state", vm.id)
            return
        chain = self._check_bootable(vm)
        if vm.state == "Saved":
            vmrs_hp = vm.state_file("vmrs")
            vmrs = self.paths.local(vmrs_hp)
            try:
                doc = disk.read_vmrs(vmrs)
            except FileNotFoundError:
                raise OpError(f"'{vm.name}' failed to restore from its saved state: the saved state file "
                              f"'{vmrs_hp}' was not found.", "NotSpecified",
                              fqid("OperationFailed", "StartVM"), vm.name) from None
            except disk.DiskFormatError as e:
                raise OpError(f"'{vm.name}' failed to restore from its saved state: {e}", "NotSpecified",
                              fqid("OperationFailed", "StartVM"), vm.name) from None
            if doc["vm_id"] != vm.id:
                raise OpError(f"'{vm.name}' failed to restore: the saved state file belongs to VM {doc['vm_id']}.",
                              "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)
            counter = doc["counter"]
            resumed = str(counter)
            self.journal(vm, f"start resumed_from={counter}")
            vmrs.unlink()  # Hyper-V deletes the saved state once the VM runs from it
        else:
            counter = max((max(disk.read_records(l.local), default=0) for l in chain), default=0)
            resumed = "cold"
            self.journal(vm, f"start resumed_from=cold disk_seq={counter}")
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.state = "Running"
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        with self.lock:
            self.write_vmcx(vm)
            self.persist()
        self.event(vm, "start", resumed_from=resumed)
        log.info("started VM %s on %s (resumed_from=%s)", vm.id, self.name, resumed)

    def _recover(self, vm: VM) -> None:
        """After an emulator restart: the VM was Running, so it is Running again."""
        stale = None
        try:
            stale = self.paths.local(vm.state_file("vmrs"))
            if stale.is_file():
                stale.unlink()  # an interrupted Save-VM: the VM never reached Saved
            chain = self.chain(vm)
            counter = max((max(disk.read_records(l.local), default=0) for l in chain), default=0)
        except Exception as e:
            log.error("cannot recover running VM %s: %s", vm.id, e)
            vm.writer = self._writer(vm, vm.counter)
            vm.writer.error = f"recovery failed: {e}"
            return
        self.journal(vm, f"recover resumed_from={counter}")
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        self.event(vm, "recover", resumed_from=str(counter))
        log.info("recovered running VM %s on %s (counter %d)", vm.id, self.name, counter)

    def _stop_writer(self, vm: VM) -> int:
        if vm.writer is not None:
            vm.counter = vm.writer.stop()
            vm.writer = None
        return vm.counter

    def _turn_off(self, vm: VM) -> None:
        if vm.state == "Running":
            counter = self._stop_writer(vm)
            vm.state = "Off"
            self.journal(vm, f"stop counter={counter}")
            self.event(vm, "stop", turn_off=True)
        elif vm.state == "Saved":  # Stop-VM -TurnOff discards the saved state
            self.paths.local(vm.state_file("vmrs")).unlink(missing_ok=True)
            vm.state = "Off"
            self.event(vm, "stop", discarded_saved_state=True)

    def shutdown(self) -> None:
        """Stop every guest writer (process exit); VM states are kept (see _recover)."""
        for vm in list(self.vms.values()):
            if vm.writer is not None:
                vm.counter = vm.writer.stop()
        self.persist()

    def op_stop_vm(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "StopVM")
        with vm.op_lock:
            self._turn_off(vm)
            with self.lock:
                self.write_vmcx(vm)
                self.persist()
            return {"state": vm.state}

    def op_start_vm(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "StartVM")
        with vm.op_lock:
            self._start(vm)
            return {"vm": self.vm_info(vm)}

    def op_save_vm(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "SaveVM")
        with vm.op_lock:
            if vm.state != "Running":
                raise invalid_state(vm, "SaveVM", "change state")
            counter = self._stop_writer(vm)
            vmrs_hp = vm.state_file("vmrs")
            disk.write_vmrs(self.paths.local(vmrs_hp), vm.id, counter, vm.memory_startup_bytes,
                            self.name, time.time())
            vm.state = "Saved"
            with self.lock:
                self.write_vmcx(vm)
                self.persist()
            self.journal(vm, f"save counter={counter}")
            self.event(vm, "save", counter=counter)
            log.info("saved VM %s on %s (counter %d)", vm.id, self.name, counter)
            return {"vm": self.vm_info(vm)}

    # -- checkpoints -------------------------------------------------------------------
    def op_checkpoint_vm(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "CheckpointVM")
        sname = args.get("snapshot_name")
        if not isinstance(sname, str) or not sname or len(sname) > MAX_NAME or "\0" in sname:
            raise invalid_arg(f"snapshot_name must be 1-{MAX_NAME} characters.", "CheckpointVM")
        with vm.op_lock:
            if vm.checkpoint_type == "Disabled":
                raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are disabled for this "
                              f"virtual machine (CheckpointType is Disabled).", "InvalidOperation",
                              fqid("CheckpointsDisabled", "CheckpointVM"), vm.name)
            if any(d.get("disk_number") is not None for d in vm.disks):
                raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are not supported for "
                              f"virtual machines with pass-through disks.", "InvalidOperation",
                              fqid("OperationFailed", "CheckpointVM"), vm.name)
            sid = str(uuid.uuid4())
            frozen: list[str] = []
            with vm.io_lock:
                links = [self.chain(vm, i) for i in range(len(vm.disks))]
                for i, d in enumerate(vm.disks):
                    leaf = links[i][0]
                    stem = leaf_name(links[i][-1].host_path).rsplit(".", 1)[0]
                    new_hp = f"{parent_folder(leaf.host_path)}\\{stem}_{sid}.avhdx"
                    disk.create_child(self.paths.local(new_hp), leaf.host_path, leaf.header)
                    os.chmod(leaf.local, 0o444)  # a parent is read-only while it has a child
                    frozen.append(leaf.host_path)
                    d["path"] = new_hp
            snap = {"id": sid, "name": sname, "config_path": f"{vm.path}\\Snapshots\\{sid.upper()}.vmcx",
                    "disks": frozen, "created": time.time()}
            snap_doc = vmcx_doc(vm, self.paths.vm_root, snapshot={"id": sid, "name": sname, "created": snap["created"]})
            for i, d in enumerate(snap_doc["disks"]):
                d["path"] = frozen[i]
            sp = self.paths.local(snap["config_path"])
            sp.parent.mkdir(parents=True, exist_ok=True)
            sp.write_text(json.dumps(snap_doc, indent=1, ensure_ascii=False))
            vm.snapshots.append(snap)
            with self.lock:
                self.write_vmcx(vm)
                self.persist()
            self.event(vm, "checkpoint", snapshot=sname, snapshot_id=sid)
            log.info("checkpoint %s of VM %s on %s", sid, vm.id, self.name)
            return {"snapshot": {"id": sid, "name": sname, "config_path": snap["config_path"]},
                    "vm": self.vm_info(vm)}

    def op_remove_snapshots(self, args: dict) -> dict:
        vm = self._get(args.get("vm_id"), "RemoveVMSnapshot")
        ids = args.get("snapshot_ids")
        if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
            raise invalid_arg("snapshot_ids must be a list of checkpoint ids.", "RemoveVMSnapshot")
        wanted = {s.lower() for s in ids}
        with vm.op_lock:
            # ids that are not (or no longer) checkpoints of this VM are skipped, as
            # Get-VMSnapshot | Where-Object Id -in ... would skip them
            for snap in [s for s in vm.snapshots if s["id"] in wanted]:
                self._merge_snapshot(vm, snap)
            return {"vm": self.vm_info(vm)}

    def _merge_snapshot(self, vm: VM, snap: dict) -> None:
        """Remove-VMSnapshot: merge the checkpoint's child disk into the checkpoint's disk."""
        with vm.io_lock:
            for i, frozen in enumerate(snap["disks"]):
                chain = self.chain(vm, i)
                idx = next((k for k, l in enumerate(chain) if same_path(l.host_path, frozen)), None)
                if idx is None:
                    raise OpError(f"Cannot remove checkpoint '{snap['name']}' of '{vm.name}': its disk "
                                  f"'{frozen}' is not in the VM's disk chain.", "InvalidOperation",
                                  fqid("OperationFailed", "RemoveVMSnapshot"), vm.name)
                if idx == 0:
                    continue  # nothing was written after it (already merged)
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
        try:
            self.paths.local(snap["config_path"]).unlink(missing_ok=True)
        except OpError:
            pass
        vm.snapshots.remove(snap)
        with self.lock:
            self.write_vmcx(vm)
            self.persist()
        self.event(vm, "merge", snapshot=snap["name"], snapshot_id=snap["id"])
        log.info("merged checkpoint %s of VM %s on %s", snap["id"], vm.id, self.name)

    # -- removal and deletion ----------------------------------------------------------
    def _locked_files(self, exclude: str | None = None) -> set[str]:
        """Local paths held open by running VMs (their disk chains, ISOs, config files)."""
        held: set[str] = set()
        for vm in list(self.vms.values()):
            if vm.id == exclude or vm.state != "Running":
                continue
            for i in range(len(vm.disks)):
                try:
                    held.update(os.path.realpath(l.local) for l in self.chain(vm, i))
                except (OSError, disk.DiskFormatError, OpError):
                    pass
            for hp in vm.isos + [vm.config_path, vm.state_file("vmgs")]:
                try:
                    held.add(os.path.realpath(self.paths.local(hp)))
                except OpError:
                    pass
        return held

    def _checked_paths(self, paths: object, what: str, cmdlet: str) -> list[tuple[str, Path]]:
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise invalid_arg(f"{what} must be a list of host paths.", cmdlet)
        out = []
        for hp in paths:
            local = self.paths.local(hp, cmdlet)
            if local.is_dir():
                raise OpError(f"delete_files removes files only; {hp} is a folder.", "InvalidArgument",
                              "NotAFile", hp)
            out.append((hp, local))
        return out

    def _delete(self, items: list[tuple[str, Path]], exclude_vm: str | None) -> list[str]:
        held = self._locked_files(exclude_vm)
        for hp, local in items:
            if os.path.realpath(local) in held:
                raise OpError(f"Cannot remove item {hp}: The process cannot access the file '{hp}' because "
                              f"it is being used by another process.", "WriteError",
                              "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand", hp)
        deleted = []
        for hp, local in items:
            if local.is_file() or local.is_symlink():
                local.unlink()
                deleted.append(hp)
                self.file_event("delete", hp)
        return deleted

    def _prune(self, locals_: list[Path]) -> None:
        """Remove folders left empty: only Hyper-V's own folder names and GUID-named VM folders,
        never vm_root itself (the rule of the shipped remove_vm script)."""
        root = self.share.resolve()
        for p in locals_:
            d = p.parent
            while d.resolve() != root and root in d.resolve().parents:
                if d.name not in ("Virtual Hard Disks", "Virtual Machines", "Snapshots") and \
                        not is_guid(d.name.lower()):
                    break
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent

    def op_file_hash(self, args: dict) -> dict:
        hp, scheme = args.get("path"), args.get("scheme")
        if not isinstance(hp, str):
            raise invalid_arg("path must be a host path.", "GetFileHash")
        if scheme not in ("sha256", "sha256-chunks-8MiB"):
            raise OpError(f"file_hash knows the schemes sha256 and sha256-chunks-8MiB, not {scheme}.",
                          "InvalidArgument", "UnknownScheme", str(scheme))
        local = self.paths.local(hp, "GetFileHash")
        if not local.is_file():
            raise OpError(f"file_hash hashes files only; {hp} is not a file.", "InvalidArgument", "NotAFile", hp)
        ranged = "first" in args or "count" in args
        if ranged:  # a range of chunks, their digests listed (file_hash.ps1 does the same)
            first, count = args.get("first"), args.get("count")
            if scheme != chunks.SCHEME or not _whole(first, 0) or not _whole(count, 1, chunks.MAX_RANGE):
                raise invalid_arg(f"first and count (a range of at most {chunks.MAX_RANGE} chunks) go with the "
                                   f"scheme {chunks.SCHEME} only, as whole numbers >= 0 and 1..{chunks.MAX_RANGE}.",
                                   "GetFileHash")
            each = chunks.local_chunk_digests(local, first, count)  # outside self.lock: it takes a while
            result = {"path": hp, "scheme": scheme, "first": first, "chunks": each,
                      "digest": chunks.file_digest(each)}
        else:
            result = {"path": hp, "scheme": scheme, "digest": chunks.digest_of_local(local, scheme)}
        self.file_event("file_hash", hp)
        return result

    def op_delete_files(self, args: dict) -> dict:
        items = self._checked_paths(args.get("paths"), "paths", "RemoveItem")
        with self.lock:
            return {"deleted": self._delete(items, None)}

    def op_remove_vm(self, args: dict) -> dict:
        turn_off = args.get("turn_off", False)
        if not isinstance(turn_off, bool):
            raise invalid_arg("turn_off must be true or false.", "RemoveVM")
        items = self._checked_paths(args.get("delete_paths", []), "delete_paths", "RemoveVM")
        vm_id = args.get("vm_id")
        if not is_guid(vm_id if not isinstance(vm_id, str) else vm_id.lower()):
            raise invalid_arg("vm_id must be a VM id (GUID).", "RemoveVM")
        vm = self.vms.get(vm_id.lower())  # type: ignore[union-attr]
        removed = False
        config_files: list[Path] = []
        if vm is not None:
            with vm.op_lock:
                if vm.state == "Running" and not turn_off:
                    raise OpError(f"VM {vm.id} is Running; remove_vm turns a VM off only when asked (turn_off).",
                                  "InvalidOperation", "InvalidState", vm.id)
                with self.lock:
                    if vm.id not in self.vms:  # removed meanwhile
                        vm = None
                    else:
                        if vm.state == "Running":
                            self._turn_off(vm)
                        self._stop_writer(vm)
                        # Remove-VM deletes the configuration and saved state, never the disks
                        for hp in [vm.config_path, vm.state_file("vmgs"), vm.state_file("vmrs")] + \
                                  [s["config_path"] for s in vm.snapshots]:
                            try:
                                local = self.paths.local(hp)
                            except OpError:
                                continue
                            if local.is_file():
                                local.unlink()
                                config_files.append(local)
                        del self.vms[vm.id]
                        self.persist()
                        removed = True
            if removed:
                self.event(vm, "remove")  # type: ignore[arg-type]
                log.info("removed VM %s from %s", vm_id, self.name)
        with self.lock:
            deleted = self._delete(items, None)
        self._prune(config_files + [local for _, local in items])
        return {"removed": removed, "deleted": deleted}

    # -- compare and import ------------------------------------------------------------
    def _read_config(self, config_path: object, cmdlet: str) -> tuple[dict, Path]:
        return read_config(self.paths, config_path, cmdlet)

    def op_compare_vm(self, args: dict) -> dict:
        """Compare-VM -Copy -GenerateNewId on a copied config: report, register nothing.

        Paths in the copied config are the source host's. Each is relocated under the given
        `vm_root`: relative to the source VM folder when vm_root names the VM folder
        (its last component is the VM id), else relative to the source host's vm_root.
        """
        doc, _ = self._read_config(args.get("config_path"), "CompareVM")
        vm_root = args.get("vm_root")
        if not isinstance(vm_root, str) or not vm_root:
            raise invalid_arg("vm_root must be a host folder.", "CompareVM")
        vm_root = vm_root.rstrip("\\")
        if not (same_path(vm_root, self.paths.vm_root) or self.paths.is_under(vm_root)):
            raise OpError(f"Access is denied. '{vm_root}' is outside this host's virtual machine storage "
                          f"'{self.paths.vm_root}'.", "PermissionDenied", fqid("UnauthorizedAccess", "CompareVM"))
        src_root = str(doc.get("vm_root") or parent_folder(doc["path"]))
        if leaf_name(vm_root).lower() == doc["id"]:
            base_from, base_to = doc["path"], vm_root
        else:
            base_from, base_to = src_root, vm_root

        def relocate(p: str) -> str:
            if same_path(p[:len(base_from) + 1], base_from + "\\"):
                return base_to + p[len(base_from):]
            return p

        inc: list[dict] = []

        def add(mid: int, msg: str) -> None:
            inc.append({"message_id": mid, "message": msg})

        versions, vendor = self.props["supported_versions"], self.props["cpu_vendor"]
        if doc.get("version") not in versions:
            add(MSG_VERSION, f"The virtual machine's configuration version {doc.get('version')!r} is not supported "
                             f"by this host (supported: {', '.join(versions)}).")
        if doc.get("cpu_vendor", vendor) != vendor:
            add(MSG_CPU, f"The virtual machine uses processor features of {doc.get('cpu_vendor')} that this host "
                         f"({vendor}) does not have; it cannot be restored here.")
        for sw in doc.get("switches", []):
            if sw not in self.props["switches"]:
                add(MSG_SWITCH, f"Could not find Ethernet switch '{sw}'.")
        for d in doc["disks"]:
            path = relocate(d["path"])
            seen = 0
            while path and seen < 256:
                seen += 1
                try:
                    local = self.paths.local(path, "CompareVM")
                except OpError as e:
                    add(MSG_VHD, f"Virtual hard disk '{path}' cannot be used here: {e.message}")
                    break
                if not local.is_file():
                    add(MSG_VHD, f"Could not find the virtual hard disk '{path}'.")
                    break
                try:
                    hdr = disk.read_header(local)
                except disk.DiskFormatError as e:
                    add(MSG_VHD, f"The virtual hard disk '{path}' is damaged: {e}")
                    break
                path = relocate(hdr.parent_path) if hdr.type == "differencing" else ""  # type: ignore[arg-type]
        for iso in doc.get("isos", []):
            path = relocate(iso)
            try:
                ok = self.paths.local(path, "CompareVM").is_file()
            except OpError:
                ok = False
            if not ok:
                add(MSG_ISO, f"Could not find the ISO image '{path}'.")
        return {"incompatibilities": inc,
                "vm": {"id": doc["id"], "name": doc["name"], "version": doc.get("version")}}

    def _set_parents(self, fixes: list[dict]) -> None:
        """Set-VHD -ParentPath for each fix; every path is checked before anything changes."""
        for fx in fixes:
            self.paths.local(fx["path"], "SetVHD")
            self.paths.local(fx["parent_path"], "SetVHD")
        for fx in fixes:
            child, parent = self.paths.local(fx["path"], "SetVHD"), self.paths.local(fx["parent_path"], "SetVHD")
            for hp, lp in ((fx["path"], child), (fx["parent_path"], parent)):
                if not lp.is_file():
                    raise OpError(f"Set-VHD: the virtual hard disk '{hp}' was not found.", "InvalidArgument",
                                  "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.SetVHD", hp)
            try:
                disk.set_parent(child, fx["parent_path"], disk.read_header(parent).uid, verify=True)
            except disk.DiskFormatError as e:
                raise OpError(f"Failed to set the parent of '{fx['path']}' to '{fx['parent_path']}': {e}",
                              "InvalidArgument", "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.SetVHD",
                              fx["path"]) from None

    def op_reparent_disks(self, args: dict) -> dict:
        fixes = args.get("parent_fixes")
        if not isinstance(fixes, list) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("parent_path"), str)
                for f in fixes):
            raise invalid_arg("parent_fixes must be a list of {path, parent_path}.", "SetVHD")
        with self.lock:
            self._set_parents(fixes)
        return {"fixed": [f["path"] for f in fixes]}

    def op_import_vm(self, args: dict) -> dict:
        config_path = args.get("config_path")
        disk_map = args.get("disk_paths", {}) or {}
        iso_map = args.get("iso_paths", {}) or {}
        fixes = args.get("parent_fixes", []) or []
        for what, m in (("disk_paths", disk_map), ("iso_paths", iso_map)):
            if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
                raise invalid_arg(f"{what} must map old host paths to new host paths.", "ImportVM")
        if not isinstance(fixes, list) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("parent_path"), str)
                for f in fixes):
            raise invalid_arg("parent_fixes must be a list of {path, parent_path}.", "ImportVM")
        doc, _ = self._read_config(config_path, "ImportVM")
        vm_id = doc["id"]
        dmap = {k.lower(): v for k, v in disk_map.items()}
        imap = {k.lower(): v for k, v in iso_map.items()}
        with self.lock:
            if vm_id in self.vms:
                raise OpError(f"Failed to import the virtual machine: a virtual machine with identifier {vm_id} "
                              f"already exists on {self.name} (Import-VM -Register keeps the ID).",
                              "ResourceExists", fqid("ObjectAlreadyExists", "ImportVM"), vm_id)
            # 1. Set-VHD -ParentPath
            self._set_parents(fixes)
            # 2. re-point disks and ISOs
            new_path = parent_folder(parent_folder(config_path))  # ...\<id>\Virtual Machines\<id>.vmcx -> ...\<id>
            if not self.paths.is_under(new_path):
                new_path = parent_folder(config_path)
            old_path = doc["path"]

            def relocate_vm_file(p: str) -> str:
                if same_path(p[:len(old_path) + 1], old_path + "\\"):
                    return new_path + p[len(old_path):]
                return p

            disks = []
            for d in doc["disks"]:
                nd = {"controller_type": d.get("controller_type", "SCSI"),
                      "controller_number": int(d.get("controller_number", 0)),
                      "controller_location": int(d.get("controller_location", len(disks))),
                      "path": dmap.get(d["path"].lower(), d["path"])}
                disks.append(nd)
            isos = [imap.get(i.lower(), i) for i in doc.get("isos", [])]
            snapshots = []
            for s in doc.get("snapshots", []):
                if not (isinstance(s, dict) and is_guid(s.get("id")) and isinstance(s.get("disks"), list)):
                    continue
                snapshots.append({"id": s["id"], "name": str(s.get("name", "")),
                                  "config_path": relocate_vm_file(str(s.get("config_path", ""))),
                                  "disks": [dmap.get(p.lower(), p) for p in s["disks"] if isinstance(p, str)],
                                  "created": s.get("created", 0)})
            # 3. Compare-VM -Register: everything the VM refers to must be here
            problems: list[str] = []
            chains: list[list[disk.ChainLink]] = []
            for d in disks:
                try:
                    self.paths.local(d["path"], "ImportVM")
                    chains.append(disk.read_chain(d["path"], lambda p: self.paths.local(p, "ImportVM")))
                except FileNotFoundError as e:
                    problems.append(f"virtual hard disk '{e.args[0]}' (in the chain of '{d['path']}') was not found")
                except disk.DiskFormatError as e:
                    problems.append(f"virtual hard disk chain of '{d['path']}' is broken: {e}")
                except OpError as e:
                    problems.append(e.message)
            for iso in isos:
                try:
                    if not self.paths.local(iso, "ImportVM").is_file():
                        problems.append(f"ISO image '{iso}' was not found")
                except OpError as e:
                    problems.append(e.message)
            for s in snapshots:
                for i, p in enumerate(s["disks"]):
                    if i >= len(chains) or any(same_path(l.host_path, p) for l in chains[i]):
                        continue
                    # not in disk_paths: the checkpoint's disk is the chain member with its file name
                    # (checkpoint disks are named <base>_<snapshot id>.avhdx, so names are unique)
                    match = [l for l in chains[i] if same_path(leaf_name(l.host_path), leaf_name(p))]
                    if len(match) == 1:
                        s["disks"][i] = match[0].host_path
                    else:
                        problems.append(f"checkpoint '{s['name']}' refers to '{p}', which is not in the disk chain")
            if doc.get("version") not in self.props["supported_versions"]:
                problems.append(f"configuration version {doc.get('version')!r} is not supported "
                                f"(supported: {', '.join(self.props['supported_versions'])})")
            for sw in doc.get("switches", []):
                if sw not in self.props["switches"]:
                    problems.append(f"Ethernet switch '{sw}' was not found")
            state = "Off"
            vmrs_hp = f"{parent_folder(config_path)}\\{vm_id.upper()}.vmrs"
            if doc.get("state") in ("Saved", "Running") and doc.get("snapshot") is None:
                try:
                    vmrs = disk.read_vmrs(self.paths.local(vmrs_hp, "ImportVM"))
                    if vmrs["vm_id"] != vm_id:
                        problems.append(f"saved state file '{vmrs_hp}' belongs to VM {vmrs['vm_id']}")
                    state = "Saved"
                except FileNotFoundError:
                    if doc.get("state") == "Saved":
                        problems.append(f"saved state file '{vmrs_hp}' was not found")
                except disk.DiskFormatError as e:
                    problems.append(str(e))
            if problems:
                raise OpError(f"Cannot register {config_path} on this host: " + "; ".join(problems),
                              "InvalidData", "IncompatibleVM", str(config_path))
            # 4. register
            vm = VM(id=vm_id, name=doc["name"], path=new_path, config_path=config_path, state=state,
                    generation=int(doc.get("generation", 2)), version=str(doc.get("version")),
                    memory_startup_bytes=int(doc.get("memory_startup_bytes", 64 * MiB)),
                    checkpoint_type=doc.get("checkpoint_type", "Standard")
                    if doc.get("checkpoint_type") in CHECKPOINT_TYPES else "Standard",
                    switches=list(doc.get("switches", [])), disks=disks, isos=isos, snapshots=snapshots,
                    write_rate_kbps=float((doc.get("guest") or {}).get("write_rate_kbps", 64.0)),
                    cpu_vendor=str(doc.get("cpu_vendor", CPU_VENDOR)))
            for chain in chains:
                for k, link in enumerate(chain):
                    os.chmod(link.local, 0o644 if k == 0 else 0o444)
            log.info("import %s on %s: granting NT VIRTUAL MACHINE\\%s full control on its files (modelled)",
                     vm_id, self.name, vm_id)
            self.vms[vm_id] = vm
            self.write_vmcx(vm)
            self.persist()
        self.event(vm, "import", state=state)
        log.info("imported VM %s (%s) on %s", vm_id, state, self.name)
        return {"vm": self.vm_info(vm)}

    # -- lab state ---------------------------------------------------------------------
    def lab_state(self) -> dict:
        with self.lock:
            vms = list(self.vms.values())
        out = []
        for vm in vms:
            info = self.vm_info(vm)
            w = vm.writer
            info["lab"] = {"counter": vm.live_counter, "write_rate_kbps": vm.write_rate_kbps,
                           "writer_running": bool(w is not None and w.alive and w.rate_kbps > 0),
                           "writer_error": w.error if w is not None else None}
            out.append(info)
        return {"host": self.name, "vm_root": self.paths.vm_root, "vms": out}
