"""The model of one Hyper-V host: its VMs, their files on the host's share, and Hyper-V's rules.

`HyperVHost` composes the parts; each lives in its own module with the rules it enforces:

    hostpaths.py     host paths <-> files on the share, and the rules every path must pass
    hostprops.py     what the host offers (versions, switches, processor, memory and NUMA nodes,
                     guardians, virtual SANs, free space, FIPS policy)
    hostresources.py what Start-VM and Save-VM check against the host: memory, processor
                     features, key protector, virtual SAN, devices a saved state cannot hold
    messages.py      the host's display language: every message it writes, translated
    vm.py            the VM record, the layout of its files, the lock order, Get-VM's view
    vmcx.py          the configuration file (.vmcx)
    registry.py      the registered VMs and the host properties (state.json)
    events.py        events.jsonl and the host's lines in the guest journals
    lifecycle.py     New-VM, Start-VM, Save-VM, Stop-VM, Remove-VMSavedState, Set-VM
                     -AutomaticStartAction, Remove-VM; recovery after a restart; the host's
                     own shutdown and start (automatic stop and start actions)
    checkpoints.py   Checkpoint-VM, Remove-VMSnapshot, Set-VHD -ParentPath
    files.py         files in use, Remove-Item, pruning empty folders, Get-FileHash
    vmimport.py      Compare-VM, Import-VM, the planned VMs between them, DestroySystem
    vmfacts.py       what describe_vm reports for pre-flight (heartbeat, processor, vTPM,
                     cluster, replication, devices)
    operations.py    the operation table the WinRM server dispatches by script name
    scriptfacts.py   what the shipped scripts do that changes how a real host answers them

The WinRM server (wsman.py) runs operations through `HyperVHost.run`; the lab control API
uses `create_vm`, `lab_state` and the host properties. The modules' docstrings name the
simplifications (documented gaps) of each part.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from lab.emulator import hostprops, messages
from lab.emulator.checkpoints import MAX_CHECKPOINTS, Checkpoints
from lab.emulator.errors import invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.faults import FaultTable
from lab.emulator.files import HostFiles
from lab.emulator.hostpaths import HostPaths, storage_dir
from lab.emulator.lifecycle import HEARTBEAT_DELAY_S, VMLifecycle
from lab.emulator.operations import Operations
from lab.emulator.registry import Registry
from lab.emulator.vm import VM, describe
from lab.emulator.vmcx import write_vmcx
from lab.emulator.vmimport import Importer

# Left by `host_shutdown` in the host's state folder: the next start of the process is the
# host starting (each VM's automatic start action), not a restart of VMMS alone.
BOOT_MARKER = "boot-pending"

# create_vm's user checkpoints: the kinds taken in turn, and the guest's time to write between them
CHECKPOINT_CYCLE = ("Standard", "Production")
CHECKPOINT_GAP_S = 0.1
VM_STATES = ("Running", "Off", "Saved")
GOLDEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class HyperVHost:
    """One emulated host: its registry and records, and the parts that act on them."""

    def __init__(self, lab_dir: Path, name: str, vm_root: str, *, recover: bool = True,
                 heartbeat_delay_s: float = HEARTBEAT_DELAY_S, locale: str = messages.DEFAULT_LOCALE,
                 faults: FaultTable | None = None, more_storage: list[tuple[str, str]] | None = None):
        """`more_storage`: (folder, share name) of each storage folder after vm_root."""
        self.lab_dir = Path(lab_dir)
        self.name = name
        self.locale = messages.check_locale(locale)  # its display language, for the life of the host
        self.share = self.lab_dir / "hosts" / name / "share"
        self.state_dir = self.lab_dir / "hosts" / name / "emulator"
        self.paths = HostPaths(vm_root, self.share, [(root, storage_dir(self.lab_dir, name, i + 1, share))
                                                     for i, (root, share) in enumerate(more_storage or [])],
                               library=self.lab_dir / "library",
                               elsewhere=self.lab_dir / "hosts" / name / "elsewhere")
        self.registry = Registry(name, self.paths, self.state_dir / "state.json")
        self.events = EventLog(name, self.lab_dir, self.paths)
        self.lifecycle = VMLifecycle(self.registry, self.events, heartbeat_delay_s)
        self.checkpoints = checkpoints = Checkpoints(self.registry, self.events)
        # the WinRM server's fault table: a rule for "<op>:<step>" fails one step inside an operation
        self.faults = faults if faults is not None else FaultTable()
        self.operations = Operations(self.registry, self.events, self.lifecycle, checkpoints,
                                     HostFiles(self.registry, self.events),
                                     Importer(self.registry, self.events, checkpoints, self.faults))
        for d in ([top for _, top in self.paths.storage] + [self.state_dir, self.events.guests_dir]):
            d.mkdir(parents=True, exist_ok=True)
        self.registry.load()
        if recover:
            marker = self.state_dir / BOOT_MARKER
            if marker.is_file():
                self.lifecycle.boot()
                marker.unlink()
            else:
                self.lifecycle.recover_running()

    @property
    def vms(self) -> dict[str, VM]:
        return self.registry.vms

    @property
    def props(self) -> dict:
        return self.registry.props

    def run(self, op: str, args: object) -> dict:
        """Run one operation of the table (operations.py), as the WinRM server does."""
        return self.operations.run(op, args)

    def hash_request(self, roots: object, req: dict) -> dict:
        """One request of a hash_stream process (operations.py)."""
        return self.operations.hash_request(roots, req)

    def write_vmcx(self, vm: VM) -> None:
        write_vmcx(self.paths, vm)

    def shutdown(self) -> None:
        """Stop every guest writer (process exit); VM states are kept (see lifecycle.py)."""
        self.lifecycle.shutdown()

    def host_shutdown(self) -> dict:
        """The host shuts down (`quickmig lab restart-host`): every running VM is saved, and the
        next start of this host is a boot (BOOT_MARKER). The caller then ends the process."""
        saved = self.lifecycle.host_shutdown()
        self.registry.persist()
        (self.state_dir / BOOT_MARKER).write_text(json.dumps({"at": time.time(), "saved": saved}))
        return {"host": self.name, "saved": saved}

    # -- lab control -------------------------------------------------------------------
    def create_vm(self, name: object, memory_mb: object = 64, disk_mb: object = 128,
                  write_rate_kbps: object = 64, iso: object = True, checkpoint_type: object = "Standard",
                  start: object = True, version: object = "10.0", switches: object = None,
                  passthrough_disk: object = False, checkpoints: object = 0, golden: object = None,
                  state: object = "Running", **options: object) -> dict:
        """New-VM + New-VHD + Add-VMDvdDrive (+ Start-VM): the lab's way to make a VM.
        `options`: vm_id, parent, path (a given id, a golden parent disk, a folder of its own),
        automatic_start_action, dynamic_memory, memory_maximum_mb, memory_assigned_mb, heartbeat,
        heartbeat_enabled, compat_migration, vtpm, clustered, replica, devices, disks, disk_folders
        (`VMLifecycle.create`). `checkpoints`: that many user checkpoints in a chain, taken while
        the guest writes (Checkpoint-VM), alternately Standard and Production (Set-VM
        -CheckpointType before each), named `checkpoint 1`, `checkpoint 2`, ...; the VM keeps
        its `checkpoint_type` afterwards. `golden`: the name of a golden image of this host,
        `<vm_root>\\Golden\\<name>.vhdx`, made on first use: the VM's boot disk is a
        differencing disk on it (as `parent`), and every VM given that name shares it.
        `state`: Running, or Off (turned off) or Saved (Save-VM) after it ran and wrote a while
        (and took its checkpoints)."""
        if state not in VM_STATES or (state != "Running" and start is False):
            raise invalid_arg("state must be Running, Off or Saved, and the VM started.", "NewVM")
        if golden is not None:
            if not isinstance(golden, str) or not GOLDEN_NAME.fullmatch(golden) or "parent" in options:
                raise invalid_arg("golden must be a name of letters, digits, '.', '_' or '-', without parent.",
                                  "NewVHD")
            options["parent"] = f"{self.paths.vm_root}\\Golden\\{golden}.vhdx"
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) \
                or not 0 <= checkpoints <= MAX_CHECKPOINTS:
            raise invalid_arg(f"checkpoints must be a whole number from 0 to {MAX_CHECKPOINTS}.", "CheckpointVM")
        vm = self.lifecycle.create(name, memory_mb=memory_mb, disk_mb=disk_mb, write_rate_kbps=write_rate_kbps,
                                   iso=iso, checkpoint_type=checkpoint_type, start=start, version=version,
                                   switches=switches, passthrough_disk=passthrough_disk,
                                   **options)  # type: ignore[arg-type]
        if checkpoints:
            self._take_checkpoints(vm, checkpoints)
        if state != "Running":
            time.sleep(CHECKPOINT_GAP_S)  # the guest writes before it stops
            with vm.op_lock:
                if state == "Saved":
                    self.lifecycle.save(vm, reason="lab")
                else:
                    self.lifecycle.turn_off(vm)
                self.registry.save(vm)
        return {"vm": describe(vm, self.paths)}

    def _take_checkpoints(self, vm: VM, n: int) -> None:
        kept = vm.checkpoint_type
        try:
            for i in range(1, n + 1):
                time.sleep(CHECKPOINT_GAP_S)  # the guest writes between checkpoints
                with vm.op_lock:
                    vm.checkpoint_type = CHECKPOINT_CYCLE[(i - 1) % len(CHECKPOINT_CYCLE)]
                    self.checkpoints.checkpoint(vm, f"checkpoint {i}")
        finally:
            with vm.op_lock:
                vm.checkpoint_type = kept
                self.registry.save(vm)

    def set_props(self, doc: object) -> dict:
        """Lab control: change what this host offers (hostprops.HOST_PROPS)."""
        doc = hostprops.check(doc)
        with self.registry.lock:
            self.registry.props.update(doc)
            self.registry.persist()
        return dict(self.registry.props)

    def reset_props(self) -> dict:
        return self.set_props(hostprops.defaults(self.name))

    def lab_state(self) -> dict:
        with self.registry.lock:
            vms = list(self.registry.vms.values())
            planned = [{"id": p["id"], "name": p["name"], "definition": p["definition"]}
                       for p in self.registry.planned.values()]
        out = []
        for vm in vms:
            info = describe(vm, self.paths)
            w = vm.writer
            info["lab"] = {"counter": vm.live_counter, "write_rate_kbps": vm.write_rate_kbps,
                           "writer_running": bool(w is not None and w.alive and w.rate_kbps > 0),
                           "writer_error": w.error if w is not None else None}
            out.append(info)
        return {"host": self.name, "vm_root": self.paths.vm_root, "locale": self.locale, "vms": out,
                "planned": planned}
