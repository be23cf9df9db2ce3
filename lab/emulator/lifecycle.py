"""A VM's lifecycle on one host: New-VM, Start-VM, Save-VM, Stop-VM -TurnOff,
Remove-VMSavedState, Set-VM -AutomaticStartAction, Remove-VM, the host's own shutdown and
start, and the guest writer (guest.py), which runs exactly while the VM is Running.

Crash choice: a VM that was Running when the emulator process stopped is Running again after
a restart (the guest is treated as having kept running, as a VM does when only VMMS
restarts); its writer continues after the highest record on its disk chain and the journal
gets a `recover` line.

A host restart (`quickmig lab restart-host`) is not a crash: `host_shutdown` saves every
running VM (AutomaticStopAction Save, Hyper-V's default; the other stop actions are not
modelled; a VM that cannot be saved, one with an assigned device, is turned off, as its
documentation asks its stop action to be) and `boot` then does what each VM's
AutomaticStartAction says. The rules and their sources are in docs/hyperv-rules.md ("VM
lifecycle"). What Start-VM and Save-VM check against the host (memory, processor features,
key protector, virtual SAN, devices) is in hostresources.py; the heartbeat comes only from a
guest that runs the Heartbeat service, with the service enabled.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lab.emulator import disk
from lab.emulator.errors import OpError, fqid, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.guest import GuestWriter
from lab.emulator.hostpaths import is_guid, same_path
from lab.emulator.hostprops import SWITCHES
from lab.emulator.hostresources import HostResources, start_set
from lab.emulator.registry import Registry
from lab.emulator.vm import (
    CHECKPOINT_TYPES,
    DEFAULT_START_ACTION,
    DEVICE_KINDS,
    MAX_NAME,
    START_ACTIONS,
    VM,
    MiB,
    checkpoint_files,
    invalid_state,
    static_macs,
)

log = logging.getLogger("lab.emulator.lifecycle")

ISO_NAME = "lab-tools.iso"
ISO_BYTES = 4 * MiB
VMGS_BYTES = 64 * 1024
# Plan for Hyper-V scalability: 4 SCSI controllers of 64 disks; Generation 1 also 2 IDE
# controllers of 2 devices, its startup disk on one of them
SCSI_DISKS, IDE_DISKS = 256, 4
HEARTBEAT_DELAY_S = 0.2  # the guest's integration services answer this long after start


def _slot(generation: int, i: int) -> dict:
    """Where disk `i` of a new VM is attached: Generation 1 fills its two IDE controllers
    first (the startup disk on IDE 0:0), then SCSI; Generation 2 has SCSI only."""
    if generation == 1 and i < IDE_DISKS:
        return {"controller_type": "IDE", "controller_number": i // 2, "controller_location": i % 2}
    i -= IDE_DISKS if generation == 1 else 0
    return {"controller_type": "SCSI", "controller_number": i // 64, "controller_location": i % 64}


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


MAC = re.compile(r"[0-9A-F]{12}")


def _check_nics(generation: int, switches: list[str], legacy: object, vlan_id: object,
                static_mac: object) -> list[dict]:
    """The lab's settings of a new VM's first network adapter (docs/hyperv-rules.md, "Network
    adapters"): Add-VMNetworkAdapter -IsLegacy (Generation 1 only), Set-VMNetworkAdapterVlan
    -Access -VlanId, Add-VMNetworkAdapter -StaticMacAddress (12 hex digits, unicast)."""
    if legacy is False and vlan_id is None and static_mac is None:
        return []
    if not switches:
        raise invalid_arg("legacy_adapter, vlan_id and static_mac need a network adapter (a switch).", "NewVM")
    if not isinstance(legacy, bool):
        raise invalid_arg("legacy_adapter must be true or false.", "AddVMNetworkAdapter")
    if legacy and generation != 1:
        raise invalid_arg("A legacy network adapter can be added to a Generation 1 virtual machine only.",
                          "AddVMNetworkAdapter")
    vlan = 0 if vlan_id is None else vlan_id  # 0: untagged, Set-VMNetworkAdapterVlan -Untagged
    if vlan_id is not None and (isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094):
        raise invalid_arg("Cannot validate argument on parameter 'VlanId': it must be from 1 to 4094.",
                          "SetVMNetworkAdapterVlan")
    mac = "" if static_mac is None else static_mac
    if mac:
        mac = mac.replace("-", "").replace(":", "").upper() if isinstance(mac, str) else ""
        if not MAC.fullmatch(mac) or int(mac[1], 16) & 1 or mac == "0" * 12:
            raise invalid_arg("static_mac must be a unicast MAC address of 12 hexadecimal digits.",
                              "AddVMNetworkAdapter")
    return [{"legacy": legacy, "vlan_id": vlan, "static_mac": mac}]


MAX_MEMORY_MB = 1048576  # Hyper-V's largest MemoryMaximum (1 TB), a Dynamic Memory VM's default


def _check_start_action(action: object, cmdlet: str) -> str:
    if action not in START_ACTIONS:
        raise invalid_arg(f"Cannot validate argument on parameter 'AutomaticStartAction': it must be one of "
                          f"{', '.join(START_ACTIONS)}.", cmdlet)
    return action  # type: ignore[return-value]


def _check_memory(memory_mb: int, dynamic: object, maximum_mb: object, assigned_mb: object) -> tuple[int, int]:
    """Dynamic Memory's settings (Set-VM -DynamicMemory -MemoryMaximumBytes): (maximum, assigned)
    in bytes; 0 for a VM with static memory."""
    if not isinstance(dynamic, bool):
        raise invalid_arg("dynamic_memory must be true or false.", "NewVM")
    if not dynamic:
        if maximum_mb is not None or assigned_mb is not None:
            raise invalid_arg("memory_maximum_mb and memory_assigned_mb go with dynamic_memory only.", "NewVM")
        return 0, 0
    maximum = MAX_MEMORY_MB if maximum_mb is None else maximum_mb
    if isinstance(maximum, bool) or not isinstance(maximum, int) or not memory_mb <= maximum <= MAX_MEMORY_MB:
        raise invalid_arg(f"memory_maximum_mb must be a whole number from memory_mb ({memory_mb}) to "
                          f"{MAX_MEMORY_MB}.", "NewVM")
    assigned = memory_mb if assigned_mb is None else assigned_mb
    if isinstance(assigned, bool) or not isinstance(assigned, int) or not 1 <= assigned <= min(maximum, 65536):
        raise invalid_arg(f"memory_assigned_mb must be a whole number from 1 to memory_maximum_mb ({maximum}, "
                          "at most 65536 in the lab).", "NewVM")
    return maximum * MiB, assigned * MiB


def _check_hardware(devices: object, switches: list[str], dynamic: object) -> list[dict]:
    """The lab's devices of a new VM (lab control: `devices`, a list of kinds or {"kind", ...}),
    each as Get-VM's companion cmdlets describe it."""
    if devices is None:
        return []
    if not isinstance(devices, list):
        raise invalid_arg(f"devices must be a list of {', '.join(DEVICE_KINDS)}.", "NewVM")
    out = []
    for i, d in enumerate(devices):
        d = {"kind": d} if isinstance(d, str) else d
        if not isinstance(d, dict) or d.get("kind") not in DEVICE_KINDS:
            raise invalid_arg(f"devices must be a list of {', '.join(DEVICE_KINDS)}.", "NewVM")
        kind = d["kind"]
        if kind == "assignable":  # Add-VMAssignableDevice -LocationPath
            if dynamic:  # Discrete Device Assignment: "The use of dynamic memory" is not available
                raise invalid_arg("A VM with an assigned device cannot use Dynamic Memory.", "NewVM")
            out.append({"kind": kind, "location_path": f"PCIROOT(0)#PCI(03{i:02d})#PCI(0000)",
                        "instance_path": f"PCI\\VEN_10DE&DEV_1EB8\\{i}"})
        elif kind == "gpu_partition":  # Add-VMGpuPartitionAdapter
            out.append({"kind": kind, "adapter_id": f"gpu-partition-{i}"})
        elif kind == "sriov":  # Set-VMNetworkAdapter -IovWeight on an adapter of an SR-IOV switch
            if not switches:
                raise invalid_arg("An SR-IOV network adapter needs a virtual switch.", "NewVM")
            out.append({"kind": kind, "adapter": "Network Adapter", "switch": switches[0], "iov_weight": 100})
        else:  # Add-VMFibreChannelHba -SanName
            san = d.get("san")
            if not isinstance(san, str) or not san or len(san) > MAX_NAME:
                raise invalid_arg("A virtual Fibre Channel adapter needs the name of a virtual SAN (san).", "NewVM")
            out.append({"kind": kind, "san": san})
    return out


def _highest_record(chains: list[list[disk.ChainLink]]) -> int:
    """The newest record the guest wrote on any of its disks (each disk's whole chain)."""
    return max((max(disk.read_records(link.local), default=0) for chain in chains for link in chain), default=0)


class VMLifecycle:
    def __init__(self, registry: Registry, events: EventLog, heartbeat_delay_s: float = HEARTBEAT_DELAY_S):
        self.reg = registry
        self.paths = registry.paths
        self.events = events
        self.heartbeat_delay_s = heartbeat_delay_s
        self.resources = HostResources(registry)

    # -- create ------------------------------------------------------------------------
    def ensure_iso(self) -> str:
        hp = f"{self.paths.vm_root}\\ISO\\{ISO_NAME}"
        local = self.paths.local(hp)
        with self.reg.lock:
            if not local.is_file():
                disk.write_filler(local, ISO_BYTES, seed=ISO_NAME)  # same bytes on every host
        return hp

    def place_iso(self, hp: str) -> str:
        """The lab puts an ISO image at `hp` (Add-VMDvdDrive -Path names one that is there): a
        storage path, a UNC path on a library share this host reaches, or any other local path
        of this host (outside its storage). Made if it is not there (the same bytes wherever)."""
        local = self.paths.medium(hp, self.reg.props["unc_shares"])
        if local is None or not hp.lower().endswith(".iso"):
            raise invalid_arg(f"Add-VMDvdDrive: the ISO image '{hp}' is not a file path this host reaches.",
                              "AddVMDvdDrive")
        with self.reg.lock:
            if not local.is_file():
                local.parent.mkdir(parents=True, exist_ok=True)
                disk.write_filler(local, ISO_BYTES, seed=ISO_NAME)
        return hp

    def create(self, name: object, memory_mb: object = 64, disk_mb: object = 128,
               write_rate_kbps: object = 64, iso: object = True, checkpoint_type: object = "Standard",
               start: object = True, version: object = "10.0", switches: object = None,
               passthrough_disk: object = False, vm_id: object = None, parent: object = None,
               path: object = None, automatic_start_action: object = DEFAULT_START_ACTION,
               dynamic_memory: object = False, memory_maximum_mb: object = None,
               memory_assigned_mb: object = None, heartbeat: object = True, heartbeat_enabled: object = True,
               compat_migration: object = False, vtpm: object = False, clustered: object = False,
               replica: object = False, devices: object = None, disks: object = 1,
               disk_folders: object = None, generation: object = 2, legacy_adapter: object = False,
               vlan_id: object = None, static_mac: object = None) -> VM:
        r"""New-VM + New-VHD + Add-VMDvdDrive (+ Set-VM + Start-VM): the lab's way to make a VM.

        `vm_id`: the VM's id (a GUID) instead of a new one: a VM that shares its id with one on
        another host, as a Hyper-V Replica replica does. `path`: the folder of its files
        (New-VM -Path; default `<vm_root>\<id>`). `parent`: the VM's disk is a differencing disk
        on this base disk (New-VHD -Differencing -ParentPath), made first (disk_mb) if it is not
        there yet: two VMs given the same parent share one golden image.

        What moves with it or not: `heartbeat` (its guest runs the Heartbeat service),
        `heartbeat_enabled` (Enable/Disable-VMIntegrationService), `compat_migration`
        (Set-VMProcessor -CompatibilityForMigrationEnabled), `vtpm` (Enable-VMTPM with a key
        protector owned by this host's guardian), `clustered` (a clustered role), `replica`
        (replicating with Hyper-V Replica, as its primary), `devices` (`_check_hardware`; a
        virtual SAN a Fibre Channel adapter names is made here first, as New-VMSan would).

        `disks`: how many virtual disks (New-VHD + Add-VMHardDiskDrive): a Generation 2 VM's on
        SCSI controller 0 and on, 64 locations each; a Generation 1 VM's (`generation` 1) first
        on IDE 0:0, 0:1, 1:0, 1:1 (the startup disk on IDE 0:0), then on SCSI; `disk_folders`:
        host folders (any storage folder of the host) the disks are placed in, in turn
        (default: the VM's `Virtual Hard Disks`). Disk i is `disk<i>.vhdx`; `parent` applies
        to disk 0. `legacy_adapter`, `vlan_id`, `static_mac`: the first network adapter's
        (`_check_nics`)."""
        switches = _check_new_vm(name, memory_mb, disk_mb, write_rate_kbps, checkpoint_type, version, switches)
        for what, flag in (("heartbeat", heartbeat), ("heartbeat_enabled", heartbeat_enabled),
                           ("compat_migration", compat_migration), ("vtpm", vtpm), ("clustered", clustered),
                           ("replica", replica)):
            if not isinstance(flag, bool):
                raise invalid_arg(f"{what} must be true or false.", "NewVM")
        hardware = _check_hardware(devices, switches, dynamic_memory)
        key_protector = []
        if vtpm:  # New-HgsKeyProtector -Owner (this host's guardian), Set-VMKeyProtector, Enable-VMTPM
            owner = next((g for g in self.reg.props["guardians"] if g["private_keys"]), None)
            if owner is None:
                raise invalid_arg("A virtual TPM needs a guardian with its private keys on this host.", "NewVM")
            key_protector = [{k: owner[k] for k in ("name", "encryption_thumbprint", "signing_thumbprint")}]
        action = _check_start_action(automatic_start_action, "NewVM")
        maximum, assigned = _check_memory(int(memory_mb), dynamic_memory, memory_maximum_mb,  # type: ignore[call-overload]
                                          memory_assigned_mb)
        if generation not in (1, 2) or isinstance(generation, bool):
            raise invalid_arg("generation must be 1 or 2.", "NewVM")
        nics = _check_nics(int(generation), switches, legacy_adapter, vlan_id, static_mac)  # type: ignore[call-overload]
        vm_id, folder = self._id_and_folder(vm_id, path)
        vm = VM(id=vm_id, name=name, path=folder,
                config_path=f"{folder}\\Virtual Machines\\{vm_id.upper()}.vmcx",
                memory_startup_bytes=int(memory_mb) * MiB, checkpoint_type=checkpoint_type,  # type: ignore[arg-type]
                write_rate_kbps=float(write_rate_kbps), version=version,  # type: ignore[arg-type]
                switches=list(switches), cpu_vendor=self.reg.props["cpu_vendor"],
                automatic_start_action=action, dynamic_memory_enabled=bool(dynamic_memory),
                memory_maximum_bytes=maximum, memory_assigned_bytes=assigned, guest_heartbeat=bool(heartbeat),
                heartbeat_enabled=bool(heartbeat_enabled), compat_migration=bool(compat_migration),
                tpm_enabled=bool(vtpm), key_protector=key_protector, devices=hardware,
                is_clustered=bool(clustered), replication_mode="Primary" if replica else "None",
                generation=int(generation), nics=nics)  # type: ignore[call-overload]
        paths = self._disk_paths(folder, disks, disk_folders, vm.generation)
        base = paths[0]
        with self.reg.lock:
            self._refuse_existing(vm, *paths)
        if parent is None:
            disk.create_base(self.paths.local(base), int(disk_mb), seed=vm_id)  # type: ignore[arg-type]
        else:
            self._create_child_of(base, parent, int(disk_mb))  # type: ignore[arg-type]
        for i, hp in enumerate(paths[1:], 1):
            disk.create_base(self.paths.local(hp, "NewVHD"), int(disk_mb), seed=f"{vm_id}:{i}")  # type: ignore[arg-type]
        vm.disks = [{**_slot(vm.generation, i), "path": hp} for i, hp in enumerate(paths)]
        if passthrough_disk:  # Add-VMHardDiskDrive -DiskNumber: a physical disk of this host, no file
            vm.disks.append({**_slot(vm.generation, len(paths)),
                             "path": "Disk 2 10.00 GB Bus 0 Lun 1 Target 0", "disk_number": 2})
        if isinstance(iso, str):
            vm.isos = [self.place_iso(iso)]
        elif iso:
            vm.isos = [self.ensure_iso()]
        disk.write_filler(self.paths.local(vm.state_file("vmgs")), VMGS_BYTES, seed=vm_id + ":vmgs")
        with self.reg.lock:
            if vm_id in self.reg.vms:  # made meanwhile
                raise self._id_taken(vm_id)
            for d in hardware:
                if d["kind"] == "fibre_channel" and d["san"] not in self.reg.props["sans"]:
                    self.reg.props["sans"] = [*self.reg.props["sans"], d["san"]]
            self.reg.vms[vm_id] = vm
            self.reg.save(vm)
        self.events.event(vm, "create", nics=vm.nics)
        log.info("created VM %s (%r) on %s", vm_id, name, self.reg.name)
        if start:
            with vm.op_lock:
                self.start(vm)
        return vm

    def _id_and_folder(self, vm_id: object, path: object) -> tuple[str, str]:
        """The new VM's id (given, or a new one) and its folder (given, or <vm_root>\\<id>)."""
        if vm_id is None:
            vm_id = str(uuid.uuid4())
        if not isinstance(vm_id, str) or not is_guid(vm_id.lower()):
            raise invalid_arg("vm_id must be a VM id (a GUID).", "NewVM")
        vm_id = vm_id.lower()
        folder = f"{self.paths.vm_root}\\{vm_id}" if path is None else path
        if not isinstance(folder, str) or not self.paths.is_under(folder):
            raise invalid_arg(f"path must be a folder under {self.paths.vm_root}.", "NewVM")
        folder = folder.rstrip("\\")
        self.paths.local(folder, "NewVM")
        return vm_id, folder

    def _disk_paths(self, folder: str, count: object, folders: object, generation: int) -> list[str]:
        """The host paths of a new VM's disks: `disk<i>.vhdx` in `folders` in turn."""
        most = SCSI_DISKS + (IDE_DISKS if generation == 1 else 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
            raise invalid_arg(f"disks must be a whole number from 1 to {most}.", "NewVHD")
        if folders is None or folders == []:
            folders = [f"{folder}\\Virtual Hard Disks"]
        if not isinstance(folders, list) or not all(isinstance(f, str) and self.paths.is_under(f) for f in folders):
            raise invalid_arg(f"disk_folders must be folders under {', '.join(self.paths.roots)}.", "NewVHD")
        out = [f"{folders[i % len(folders)].rstrip(chr(92))}\\disk{i}.vhdx" for i in range(count)]
        for hp in out:
            self.paths.local(hp, "NewVHD")  # a plain path, inside the storage
        return out

    def _id_taken(self, vm_id: str) -> OpError:
        return OpError(f"A virtual machine with identifier {vm_id} already exists on {self.reg.name}.",
                       "ResourceExists", fqid("ObjectAlreadyExists", "NewVM"), vm_id)

    def _refuse_existing(self, vm: VM, *disks: str) -> None:
        if vm.id in self.reg.vms:  # Import-VM.md: each virtual machine must have a unique identifier
            raise self._id_taken(vm.id)
        for hp in (*disks, vm.config_path):
            if self.paths.local(hp, "NewVM").exists():  # New-VHD and New-VM never overwrite a file
                raise OpError(f"The file '{hp}' already exists.", "ResourceExists",
                              fqid("ObjectAlreadyExists", "NewVM"), hp)

    def _create_child_of(self, child: str, parent: object, disk_mb: int) -> None:
        """New-VHD -Differencing: `child` on the base disk `parent`, which is made first if it
        is not there; a parent is read-only while it has a child."""
        if not isinstance(parent, str) or not self.paths.is_under(parent) or same_path(parent, child):
            raise invalid_arg(f"parent must be another disk under {self.paths.vm_root}.", "NewVHD")
        local = self.paths.local(parent, "NewVHD")
        if not local.exists():
            disk.create_base(local, disk_mb, seed=parent.lower())
        try:
            hdr = disk.read_header(local)
        except (OSError, disk.DiskFormatError) as e:
            raise OpError(f"The parent '{parent}' is not a virtual hard disk: {e}", "InvalidArgument",
                          fqid("InvalidParameter", "NewVHD"), parent) from None
        disk.create_child(self.paths.local(child, "NewVHD"), parent, hdr)
        os.chmod(local, 0o444)

    # -- start -------------------------------------------------------------------------
    def _target(self, vm: VM, seq: int) -> Path:
        """The disk record `seq` goes to: the VM's file disks in turn (guest.py)."""
        files = vm.file_disks()
        return self.paths.local(vm.disks[files[(seq - 1) % len(files)]]["path"])

    def _writer(self, vm: VM, counter: int) -> GuestWriter:
        return GuestWriter(vm.id, self.reg.name, self.events.journal_path(vm.id), vm.io_lock,
                           lambda seq: self._target(vm, seq), vm.write_rate_kbps, counter)

    def _check_bootable(self, vm: VM) -> list[list[disk.ChainLink]]:
        """Every file disk's chain, whole (a disk missing anywhere keeps the VM from starting)."""
        try:
            chain = [vm.chain(self.paths, i) for i in vm.file_disks()]
        except FileNotFoundError as e:
            raise OpError(f"'{vm.name}' failed to start. Synthetic SCSI Controller: Failed to power on with "
                          f"error 'The system cannot find the file specified.' ({e.args[0]})",
                          "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name) from None
        except disk.DiskFormatError as e:
            raise OpError(f"'{vm.name}' failed to start: the virtual hard disk chain is broken: {e}",
                          "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name) from None
        for iso in vm.isos:
            local = self.paths.medium(iso, self.reg.props["unc_shares"])
            if local is None or not local.is_file():
                raise OpError(f"'{vm.name}' failed to start. The ISO image '{iso}' was not found.",
                              "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)
        return chain

    def _saved_state(self, vm: VM) -> dict:
        """Start-VM of a Saved VM: its saved memory (.vmrs), read."""
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
        return doc

    def _restore(self, vm: VM, doc: dict) -> int:
        """The guest's counter from its saved memory; the saved state goes."""
        counter = doc["counter"]
        self.events.journal(vm, f"start resumed_from={counter}")
        self.paths.local(vm.state_file("vmrs")).unlink()  # Hyper-V deletes the saved state once the VM runs from it
        return counter

    def _check_macs(self, vm: VM) -> None:
        """A static MAC address that a running VM of this host already has is refused (harsher
        reading: Hyper-V's documentation does not say what two ports with one MAC address do)."""
        mine = set(static_macs(vm))
        if not mine:
            return
        with self.reg.lock:
            other = next(((o, m) for o in self.reg.vms.values() if o.id != vm.id and o.state == "Running"
                          for m in static_macs(o) if m in mine), None)
        if other is not None:
            raise OpError(f"'{vm.name}' failed to start: the MAC address {other[1]} is in use by the running "
                          f"virtual machine '{other[0].name}'.", "NotSpecified",
                          fqid("OperationFailed", "StartVM"), vm.name)

    def start(self, vm: VM, **why) -> None:
        """Start-VM (the caller holds vm.op_lock); `why` goes into the start event."""
        if vm.state == "Running":
            log.warning("Start-VM %s: the virtual machine is already in the specified state", vm.id)
            return
        chain = self._check_bootable(vm)
        self._check_macs(vm)
        saved = self._saved_state(vm) if vm.state == "Saved" else None
        # a saved state of before the processor features were recorded resumes anywhere
        cpu_set = saved.get("cpu_set") if saved is not None else None
        vm.numa_node = self.resources.check_start(vm, cpu_set if isinstance(cpu_set, str) else None)
        if saved is not None:
            counter = self._restore(vm, saved)
            resumed = str(counter)
        else:
            counter = _highest_record(chain)
            resumed = "cold"
            self.events.journal(vm, f"start resumed_from=cold disk_seq={counter}")
        # a resumed guest keeps the processor features it started with; a booted one gets this host's
        vm.cpu_set = cpu_set if isinstance(cpu_set, str) else start_set(self.reg.props, vm)
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.state = "Running"
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        self.reg.save(vm)
        self.events.event(vm, "start", resumed_from=resumed, **why)
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
            counter = _highest_record([vm.chain(self.paths, i) for i in vm.file_disks()])
        except Exception as e:  # noqa: BLE001 - any failure: the VM stays Running with a failed writer (a hung guest)
            log.error("cannot recover running VM %s: %s", vm.id, e)
            vm.writer = self._writer(vm, vm.counter)
            vm.writer.error = f"recovery failed: {e}"
            return
        self.events.journal(vm, f"recover resumed_from={counter}")
        vm.cpu_set = vm.cpu_set or start_set(self.reg.props, vm)
        vm.counter = counter
        vm.writer = self._writer(vm, counter)
        vm.heartbeat_at = time.monotonic() + self.heartbeat_delay_s
        vm.writer.start()
        self.events.event(vm, "recover", resumed_from=str(counter))
        log.info("recovered running VM %s on %s (counter %d)", vm.id, self.reg.name, counter)

    # -- heartbeat ---------------------------------------------------------------------
    @staticmethod
    def heartbeat_status(vm: VM) -> str:
        """The Heartbeat integration service's PrimaryStatusDescription of a running VM: OK only
        while the service is enabled, the guest runs it, has booted and answers. A guest without
        the service never answers; a disabled service reports no heartbeat (harsher reading)."""
        if not (vm.heartbeat_enabled and vm.guest_heartbeat) or time.monotonic() < vm.heartbeat_at:
            return "No Contact"
        w = vm.writer
        return "OK" if w is None or w.error is None else "Lost Communication"

    def wait_heartbeat(self, vm: VM, timeout: float) -> dict:
        """Get-VMIntegrationService Heartbeat, polled until OK or `timeout` seconds."""
        t0 = time.monotonic()
        while True:
            if vm.state != "Running":
                raise OpError(f"VM {vm.id} is {vm.state}; its heartbeat cannot come up.", "InvalidOperation",
                              "InvalidStateForHeartbeat", vm.id)
            status = self.heartbeat_status(vm)
            if status == "OK":
                return {"heartbeat": "OK", "waited_s": round(time.monotonic() - t0, 3)}
            if time.monotonic() - t0 >= timeout:
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
        """Stop-VM -TurnOff (the caller saves the VM's records). Stop-VM's page says nothing of
        a Saved VM; the harsher reading: refused there, its saved state kept
        (Remove-VMSavedState is the documented way to discard it)."""
        if vm.state == "Saved":
            raise invalid_state(vm, "StopVM", "change state")
        if vm.state == "Running":
            counter = self.stop_writer(vm)
            vm.state = "Off"
            self.events.journal(vm, f"stop counter={counter}")
            self.events.event(vm, "stop", turn_off=True)

    def remove_saved_state(self, vm: VM) -> None:
        """Remove-VMSavedState (the caller holds vm.op_lock): a Saved VM loses its saved memory
        and is Off; its disks are unaffected. Any other state: refused (the page speaks of a
        saved virtual machine only). No journal line: the guest may run on in another host's
        copy of this VM, and this copy's memory just goes."""
        if vm.state != "Saved":
            raise invalid_state(vm, "RemoveVMSavedState", "delete the saved state")
        self.paths.local(vm.state_file("vmrs")).unlink(missing_ok=True)
        vm.state = "Off"
        self.reg.save(vm)
        self.events.event(vm, "stop", discarded_saved_state=True)

    def set_start_action(self, vm: VM, action: object) -> None:
        """Set-VM -AutomaticStartAction (the caller holds vm.op_lock). Set-VM's page does not say
        in which states it may change a VM; its examples set an automatic action without
        stopping the VM and stop it first only for processor and memory. The harsher reading:
        Running or Off, never Saved (or Paused), whose configuration goes with the saved state."""
        action = _check_start_action(action, "SetVM")
        if vm.state not in ("Running", "Off"):
            raise invalid_state(vm, "SetVM", "modify its settings")
        if vm.automatic_start_action != action:
            vm.automatic_start_action = action  # type: ignore[assignment]
            self.reg.save(vm)
            self.events.event(vm, "set", automatic_start_action=action)

    def save(self, vm: VM, **why) -> None:
        """Save-VM (the caller holds vm.op_lock): memory to the .vmrs, the VM Saved."""
        if vm.state != "Running":
            raise invalid_state(vm, "SaveVM", "change state")
        self.resources.check_save(vm)
        counter = self.stop_writer(vm)
        vmrs_hp = vm.state_file("vmrs")
        # the memory as the guest holds it: with Dynamic Memory its assigned memory, not its startup;
        # and the processor features it runs with, which only a host offering the same may resume
        disk.write_vmrs(self.paths.local(vmrs_hp), vm.id, counter, vm.running_memory_bytes,
                        self.reg.name, time.time(), cpu_set=vm.cpu_set or start_set(self.reg.props, vm))
        vm.state = "Saved"
        self.reg.save(vm)
        self.events.journal(vm, f"save counter={counter}")
        self.events.event(vm, "save", counter=counter, **why)
        log.info("saved VM %s on %s (counter %d)", vm.id, self.reg.name, counter)

    # -- the host's own shutdown and start ----------------------------------------------
    def host_shutdown(self) -> list[str]:
        """The host shuts down: every Running VM is saved (AutomaticStopAction Save); one that
        cannot be saved (an assigned device) is turned off. Returns the ids of those saved."""
        saved = []
        for vm in list(self.reg.vms.values()):
            with vm.op_lock:
                if vm.state != "Running":
                    continue
                try:
                    self.save(vm, reason="host shutdown")
                    saved.append(vm.id)
                except OpError:
                    self.turn_off(vm)
                    self.reg.save(vm)
        return saved

    @staticmethod
    def starts_at_boot(vm: VM) -> bool:
        """AutomaticStartAction at host start: Start starts any VM (a Saved one resumes, an Off
        one boots); StartIfRunning ("restart if previously active") resumes a Saved VM, with
        the harsher reading that a VM saved before the host went down counts as active too; an
        Off one stays off; Nothing leaves every VM as it is."""
        if vm.automatic_start_action == "Start":
            return vm.state in ("Off", "Saved")
        return vm.automatic_start_action == "StartIfRunning" and vm.state == "Saved"

    def boot(self) -> list[str]:
        """The host started after `host_shutdown`: each VM does what its AutomaticStartAction
        says. Returns the ids of those started."""
        started = []
        for vm in list(self.reg.vms.values()):
            with vm.op_lock:
                if vm.state == "Running":  # not saved by the shutdown (the process died in it)
                    self._recover(vm)
                    continue
                if not self.starts_at_boot(vm):
                    continue
                try:
                    self.start(vm, reason="automatic start action " + vm.automatic_start_action)
                    started.append(vm.id)
                except OpError as e:  # a real host logs it and leaves the VM as it was
                    log.error("automatic start of VM %s on %s failed: %s", vm.id, self.reg.name, e.message)
                    self.events.event(vm, "start_failed", error=e.message)
        return started

    def shutdown(self) -> None:
        """Stop every guest writer (process exit); VM states are kept (see _recover)."""
        for vm in list(self.reg.vms.values()):
            if vm.writer is not None:
                vm.counter = vm.writer.stop()
        self.reg.persist()

    # -- remove ------------------------------------------------------------------------
    def unregister(self, vm: VM, turn_off: bool, merge: Callable[[VM, dict], None]) -> list[Path] | None:
        """Remove-VM (the caller holds vm.op_lock): the configuration files it deleted, or
        None if the VM was removed meanwhile. Its checkpoints are merged into its disks first
        (`merge`: Remove-VMSnapshot, which the shipped remove_vm does before Remove-VM; Remove-VM
        itself would merge them after the VM is gone, in the background)."""
        if vm.state == "Running" and not turn_off:
            raise OpError(f"VM {vm.id} is Running; remove_vm turns a VM off only when asked (turn_off).",
                          "InvalidOperation", "InvalidState", vm.id)
        with self.reg.lock:
            if vm.id not in self.reg.vms:  # removed meanwhile
                return None
            if vm.state == "Running":
                self.turn_off(vm)
            self.stop_writer(vm)
            for snap in list(vm.snapshots):
                merge(vm, snap)
            # Remove-VM deletes the configuration and saved state, never the disks (Remove-VM.md)
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
