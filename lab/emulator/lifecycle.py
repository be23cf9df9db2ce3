"""A VM's lifecycle on one host: New-VM, Start-VM, Save-VM, Stop-VM -TurnOff, Remove-VM, and
its guest writer (guest.py), which runs exactly while the VM is Running.

Crash choice: a VM that was Running when the emulator process stopped is Running again after
a restart (the guest is treated as having kept running, as a VM does when only VMMS
restarts); its writer continues after the highest record on its disk chain and the journal
gets a `recover` line.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path

from lab.emulator import disk
from lab.emulator.errors import OpError, fqid, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.guest import GuestWriter
from lab.emulator.hostprops import SWITCHES
from lab.emulator.registry import Registry
from lab.emulator.vm import CHECKPOINT_TYPES, MAX_NAME, VM, MiB, checkpoint_files, invalid_state

log = logging.getLogger("lab.emulator.lifecycle")

ISO_NAME = "lab-tools.iso"
ISO_BYTES = 4 * MiB
VMGS_BYTES = 64 * 1024
HEARTBEAT_DELAY_S = 0.2  # the guest's integration services answer this long after start


def _check_new_vm(name: object, memory_mb: object, disk_mb: object, write_rate_kbps: object,
                  checkpoint_type: object, version: object, switches: object) -> list[str]:
    """New-VM's parameters, checked; the switches to connect (OpError if any is not valid)."""
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
    return switches


def _highest_record(chain: list[disk.ChainLink]) -> int:
    return max((max(disk.read_records(link.local), default=0) for link in chain), default=0)


class VMLifecycle:
    def __init__(self, registry: Registry, events: EventLog, heartbeat_delay_s: float = HEARTBEAT_DELAY_S):
        self.reg = registry
        self.paths = registry.paths
        self.events = events
        self.heartbeat_delay_s = heartbeat_delay_s

    # -- create ------------------------------------------------------------------------
    def ensure_iso(self) -> str:
        hp = f"{self.paths.vm_root}\\ISO\\{ISO_NAME}"
        local = self.paths.local(hp)
        with self.reg.lock:
            if not local.is_file():
                disk.write_filler(local, ISO_BYTES, seed=ISO_NAME)  # same bytes on every host
        return hp

    def create(self, name: object, memory_mb: object = 64, disk_mb: object = 128,
               write_rate_kbps: object = 64, iso: object = True, checkpoint_type: object = "Standard",
               start: object = True, version: object = "10.0", switches: object = None,
               passthrough_disk: object = False) -> VM:
        """New-VM + New-VHD + Add-VMDvdDrive (+ Start-VM): the lab's way to make a VM."""
        switches = _check_new_vm(name, memory_mb, disk_mb, write_rate_kbps, checkpoint_type, version, switches)
        vm_id = str(uuid.uuid4())
        folder = f"{self.paths.vm_root}\\{vm_id}"
        vm = VM(id=vm_id, name=name, path=folder,
                config_path=f"{folder}\\Virtual Machines\\{vm_id.upper()}.vmcx",
                memory_startup_bytes=int(memory_mb) * MiB, checkpoint_type=checkpoint_type,  # type: ignore[arg-type]
                write_rate_kbps=float(write_rate_kbps), version=version,  # type: ignore[arg-type]
                switches=list(switches), cpu_vendor=self.reg.props["cpu_vendor"])
        base = f"{folder}\\Virtual Hard Disks\\disk0.vhdx"
        disk.create_base(self.paths.local(base), int(disk_mb), seed=vm_id)  # type: ignore[arg-type]
        vm.disks = [{"controller_type": "SCSI", "controller_number": 0, "controller_location": 0, "path": base}]
        if passthrough_disk:  # Add-VMHardDiskDrive -DiskNumber: a physical disk of this host, no file
            vm.disks.append({"controller_type": "SCSI", "controller_number": 0, "controller_location": 1,
                             "path": "Disk 2 10.00 GB Bus 0 Lun 1 Target 0", "disk_number": 2})
        if iso:
            vm.isos = [self.ensure_iso()]
        disk.write_filler(self.paths.local(vm.state_file("vmgs")), VMGS_BYTES, seed=vm_id + ":vmgs")
        with self.reg.lock:
            self.reg.vms[vm_id] = vm
            self.reg.save(vm)
        self.events.event(vm, "create")
        log.info("created VM %s (%r) on %s", vm_id, name, self.reg.name)
        if start:
            with vm.op_lock:
                self.start(vm)
        return vm

    # -- start -------------------------------------------------------------------------
    def _target(self, vm: VM) -> Path:
        return self.paths.local(vm.disks[0]["path"])

    def _writer(self, vm: VM, counter: int) -> GuestWriter:
        return GuestWriter(vm.id, self.reg.name, self.events.journal_path(vm.id), vm.io_lock,
                           lambda: self._target(vm), vm.write_rate_kbps, counter)

    def _check_bootable(self, vm: VM) -> list[disk.ChainLink]:
        try:
            chain = vm.chain(self.paths)
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

    def _restore(self, vm: VM) -> int:
        """Start-VM of a Saved VM: the guest's counter from its saved memory (.vmrs)."""
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
        self.events.journal(vm, f"start resumed_from={counter}")
        vmrs.unlink()  # Hyper-V deletes the saved state once the VM runs from it
        return counter

    def start(self, vm: VM) -> None:
        """Start-VM (the caller holds vm.op_lock)."""
        if vm.state == "Running":
            log.warning("Start-VM %s: the virtual machine is already in the specified state", vm.id)
            return
        chain = self._check_bootable(vm)
        if vm.state == "Saved":
            counter = self._restore(vm)
            resumed = str(counter)
        else:
            counter = _highest_record(chain)
            resumed = "cold"
            self.events.journal(vm, f"start resumed_from=cold disk_seq={counter}")
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.state = "Running"
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        self.reg.save(vm)
        self.events.event(vm, "start", resumed_from=resumed)
        log.info("started VM %s on %s (resumed_from=%s)", vm.id, self.reg.name, resumed)

    # -- recover after a restart -------------------------------------------------------
    def recover_running(self) -> None:
        for vm in self.reg.vms.values():
            if vm.state == "Running":
                self._recover(vm)

    def _recover(self, vm: VM) -> None:
        """After an emulator restart: the VM was Running, so it is Running again."""
        try:
            stale = self.paths.local(vm.state_file("vmrs"))
            if stale.is_file():
                stale.unlink()  # an interrupted Save-VM: the VM never reached Saved
            counter = _highest_record(vm.chain(self.paths))
        except Exception as e:  # noqa: BLE001 - any failure: the VM stays Running with a failed writer (a hung guest)
            log.error("cannot recover running VM %s: %s", vm.id, e)
            vm.writer = self._writer(vm, vm.counter)
            vm.writer.error = f"recovery failed: {e}"
            return
        self.events.journal(vm, f"recover resumed_from={counter}")
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        self.events.event(vm, "recover", resumed_from=str(counter))
        log.info("recovered running VM %s on %s (counter %d)", vm.id, self.reg.name, counter)

    # -- heartbeat ---------------------------------------------------------------------
    def wait_heartbeat(self, vm: VM, timeout: float) -> dict:
        """Get-VMIntegrationService Heartbeat, polled until OK or `timeout` seconds."""
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

    # -- save / stop -------------------------------------------------------------------
    def stop_writer(self, vm: VM) -> int:
        if vm.writer is not None:
            vm.counter = vm.writer.stop()
            vm.writer = None
        return vm.counter

    def turn_off(self, vm: VM) -> None:
        """Stop-VM -TurnOff (the caller saves the VM's records)."""
        if vm.state == "Running":
            counter = self.stop_writer(vm)
            vm.state = "Off"
            self.events.journal(vm, f"stop counter={counter}")
            self.events.event(vm, "stop", turn_off=True)
        elif vm.state == "Saved":  # Stop-VM -TurnOff discards the saved state
            self.paths.local(vm.state_file("vmrs")).unlink(missing_ok=True)
            vm.state = "Off"
            self.events.event(vm, "stop", discarded_saved_state=True)

    def save(self, vm: VM) -> None:
        """Save-VM (the caller holds vm.op_lock): memory to the .vmrs, the VM Saved."""
        if vm.state != "Running":
            raise invalid_state(vm, "SaveVM", "change state")
        counter = self.stop_writer(vm)
        vmrs_hp = vm.state_file("vmrs")
        disk.write_vmrs(self.paths.local(vmrs_hp), vm.id, counter, vm.memory_startup_bytes,
                        self.reg.name, time.time())
        vm.state = "Saved"
        self.reg.save(vm)
        self.events.journal(vm, f"save counter={counter}")
        self.events.event(vm, "save", counter=counter)
        log.info("saved VM %s on %s (counter %d)", vm.id, self.reg.name, counter)

    def shutdown(self) -> None:
        """Stop every guest writer (process exit); VM states are kept (see _recover)."""
        for vm in list(self.reg.vms.values()):
            if vm.writer is not None:
                vm.counter = vm.writer.stop()
        self.reg.persist()

    # -- remove ------------------------------------------------------------------------
    def unregister(self, vm: VM, turn_off: bool) -> list[Path] | None:
        """Remove-VM (the caller holds vm.op_lock): the configuration files it deleted, or
        None if the VM was removed meanwhile."""
        if vm.state == "Running" and not turn_off:
            raise OpError(f"VM {vm.id} is Running; remove_vm turns a VM off only when asked (turn_off).",
                          "InvalidOperation", "InvalidState", vm.id)
        with self.reg.lock:
            if vm.id not in self.reg.vms:  # removed meanwhile
                return None
            if vm.state == "Running":
                self.turn_off(vm)
            self.stop_writer(vm)
            # Remove-VM deletes the configuration, saved state and checkpoints, never the disks
            config_files = []
            for hp in [vm.config_path, vm.state_file("vmgs"), vm.state_file("vmrs")] + \
                      [f for s in vm.snapshots for f in checkpoint_files(s)]:
                try:
                    local = self.paths.local(hp)
                except OpError:
                    continue
                if local.is_file():
                    local.unlink()
                    config_files.append(local)
            del self.reg.vms[vm.id]
            self.reg.persist()
        return config_files
