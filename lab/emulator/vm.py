"""The VM record: what the host knows about one VM, where its files are, and how Get-VM shows it.

Layout, as Hyper-V names things (the VM folder is named by the VM id):

    <vm_root>\\<id>\\Virtual Hard Disks\\disk0.vhdx              base disk
    <vm_root>\\<id>\\Virtual Hard Disks\\disk0_<sid>.avhdx       checkpoint leaf (same folder as its parent)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmcx                 configuration (JSON, see `vmcx.vmcx_doc`)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmgs                 guest state (64 KiB)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmrs                 saved memory (Save-VM; removed by Start-VM)
    <vm_root>\\<id>\\Snapshots\\<SID>.vmcx                        checkpoint configuration
    <vm_root>\\<id>\\Snapshots\\<SID>.vmgs, <SID>.vmrs             its guest state, and its memory (Standard)
    <vm_root>\\ISO\\lab-tools.iso                                  one shared 4 MiB ISO per host

The VM folder is named by the lowercase id; the files in it by the UPPERCASE GUID, as
Hyper-V names them (and as the shipped scripts compute them). The checkpoint files go to
`<snapshot_location>\\Snapshots` (Get-VM's SnapshotFileLocation) and the Smart Paging file
to `smart_paging_path`; New-VM sets both to the VM's folder, and both travel in its .vmcx.

Locks: the registry's `lock` guards the host's table of VMs; each VM has `op_lock` (one
operation on that VM at a time) and `io_lock` (shared with its guest writer; held while the
active disk is switched). Order: op_lock -> lock -> io_lock. A guest writer is never stopped
while io_lock is held.

What moves with a VM and what a host must offer it (docs/hyperv-rules.md, "What a host
offers"): its Heartbeat integration service (enabled, and whether the guest runs it), its
processor compatibility mode and the processor features it started with (`cpu_set`), its
virtual TPM and key protector (the guardians that can unwrap it), its devices (`devices`:
an assigned PCIe device, a GPU partition, an SR-IOV virtual function, a virtual Fibre
Channel adapter); and what only its host knows: whether it is a clustered role and whether
it replicates (Hyper-V Replica).

A VM may have several disks (the lab's `add-vm --disks N --disk-folder PATH`), on SCSI
controllers (Generation 2), in any storage folder of its host; its guest writes to each in turn.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from lab.emulator import disk
from lab.emulator.errors import OpError, fqid
from lab.emulator.guest import GuestWriter
from lab.emulator.hostpaths import HostPaths, parent_folder
from lab.emulator.hostprops import CPU_VENDOR, SWITCHES

MiB = 1024 * 1024
MAX_NAME = 100
CHECKPOINT_TYPES = ("Standard", "Production", "ProductionOnly", "Disabled")
# Set-VM -AutomaticStartAction: what the VM does when its host starts (docs/hyperv-rules.md)
START_ACTIONS = ("Nothing", "StartIfRunning", "Start")
DEFAULT_START_ACTION = "StartIfRunning"  # a new VM's, as Hyper-V sets it
# Devices a VM may have that do not move with it (Get-VMAssignableDevice, Get-VMGpuPartitionAdapter,
# Get-VMNetworkAdapter's IovWeight, Get-VMFibreChannelHba)
DEVICE_KINDS = ("assignable", "gpu_partition", "sriov", "fibre_channel")
# A device whose state a saved state cannot hold: Save-VM (and a checkpoint with memory) refused
UNSAVABLE_DEVICES = ("assignable", "gpu_partition", "sriov")


@dataclass
class VM:
    id: str
    name: str
    path: str              # VM folder (host path)
    config_path: str       # ...\Virtual Machines\<id>.vmcx
    state: str = "Off"
    generation: int = 2
    version: str = "10.0"
    memory_startup_bytes: int = 64 * MiB
    checkpoint_type: str = "Standard"
    switches: list[str] = field(default_factory=lambda: list(SWITCHES))
    # per network adapter, in the order of `switches`: legacy (emulated, Generation 1 only),
    # vlan_id (access VLAN, 0 untagged), static_mac ("" dynamic); see `adapters`
    nics: list[dict] = field(default_factory=list)
    disks: list[dict] = field(default_factory=list)      # controller_* + path (active leaf)
    isos: list[str] = field(default_factory=list)
    # id, name, config_path, files (every file of the checkpoint), disks (frozen paths), created
    snapshots: list[dict] = field(default_factory=list)
    snapshot_location: str = ""   # SnapshotFileLocation: its checkpoints' files are in <this>\Snapshots
    smart_paging_path: str = ""   # SmartPagingFilePath
    write_rate_kbps: float = 64.0
    cpu_vendor: str = CPU_VENDOR
    counter: int = 0       # last acknowledged guest seq when the writer last stopped
    automatic_start_action: str = DEFAULT_START_ACTION
    dynamic_memory_enabled: bool = False
    memory_maximum_bytes: int = 0      # Dynamic Memory's ceiling (0: the startup memory)
    memory_assigned_bytes: int = 0     # what the guest holds while it runs (0: the startup memory)
    heartbeat_enabled: bool = True     # its Heartbeat integration service (Enable/Disable-VMIntegrationService)
    guest_heartbeat: bool = True       # the guest runs the Heartbeat service (the lab's --no-heartbeat: it does not)
    compat_migration: bool = False     # Set-VMProcessor -CompatibilityForMigrationEnabled
    cpu_set: str = ""                  # the processor features the running guest started with (hostresources.py)
    tpm_enabled: bool = False          # a virtual TPM (Enable-VMTPM)
    key_protector: list[dict] = field(default_factory=list)  # its guardians (owner first): name, thumbprints
    devices: list[dict] = field(default_factory=list)        # {"kind": one of DEVICE_KINDS, ...}
    is_clustered: bool = False         # a clustered role of a failover cluster (Get-VM's IsClustered)
    replication_mode: str = "None"     # Hyper-V Replica: None, Primary, Replica, ...
    numa_node: int | None = None       # the NUMA node it runs in when the host does not let VMs span nodes
    # runtime only
    op_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    io_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    writer: GuestWriter | None = field(default=None, repr=False, compare=False)
    heartbeat_at: float = field(default=0.0, repr=False, compare=False)

    PERSISTED = ("id", "name", "path", "config_path", "state", "generation", "version",
                 "memory_startup_bytes", "checkpoint_type", "switches", "nics", "disks", "isos", "snapshots",
                 "write_rate_kbps", "cpu_vendor", "counter", "snapshot_location", "smart_paging_path",
                 "automatic_start_action", "dynamic_memory_enabled", "memory_maximum_bytes", "memory_assigned_bytes",
                 "heartbeat_enabled", "guest_heartbeat", "compat_migration", "cpu_set", "tpm_enabled",
                 "key_protector", "devices", "is_clustered", "replication_mode", "numa_node")

    def __post_init__(self) -> None:
        # New-VM puts both in the VM's folder
        self.snapshot_location = self.snapshot_location or self.path
        self.smart_paging_path = self.smart_paging_path or self.path

    def to_state(self) -> dict:
        d = {k: getattr(self, k) for k in self.PERSISTED}
        if self.writer is not None:
            d["counter"] = self.writer.counter
        return json.loads(json.dumps(d))  # deep copy

    @classmethod
    def from_state(cls, d: dict) -> VM:
        return cls(**{k: d[k] for k in cls.PERSISTED if k in d})

    @property
    def config_dir(self) -> str:
        return parent_folder(self.config_path)

    def state_file(self, ext: str) -> str:
        return f"{self.config_dir}\\{self.id.upper()}.{ext}"

    @property
    def running_memory_bytes(self) -> int:
        """The memory the guest holds while it runs, which Save-VM writes to the .vmrs: with
        Dynamic Memory what it was assigned (more or less than its startup memory)."""
        if self.dynamic_memory_enabled and self.memory_assigned_bytes:
            return self.memory_assigned_bytes
        return self.memory_startup_bytes

    @property
    def live_counter(self) -> int:
        return self.writer.counter if self.writer is not None else self.counter

    def file_disks(self) -> list[int]:
        """The indexes of its disks that are files (not pass-through physical disks)."""
        return [i for i, d in enumerate(self.disks) if d.get("disk_number") is None]

    def chain(self, paths: HostPaths, index: int = 0) -> list[disk.ChainLink]:
        """The disk chain of disk `index`, active leaf first."""
        return disk.read_chain(self.disks[index]["path"], paths.local)


def invalid_state(vm: VM, cmdlet: str, verb: str) -> OpError:
    return OpError(f"'{vm.name}' failed to {verb}. The operation cannot be performed while the "
                   f"object is in its current state. (Virtual machine ID {vm.id}, state {vm.state})",
                   "InvalidOperation", fqid("InvalidState", cmdlet), vm.name)


def _describe_disk(vm: VM, paths: HostPaths, i: int, d: dict) -> dict:
    where = {"controller_type": d["controller_type"], "controller_number": d["controller_number"],
             "controller_location": d["controller_location"], "path": d["path"]}
    if d.get("disk_number") is not None:  # pass-through: Get-VMHardDiskDrive shows no file chain
        return {**where, "chain": [], "passthrough": True}
    try:
        chain = [link.host_path for link in vm.chain(paths, i)]
    except (OSError, disk.DiskFormatError, OpError):
        chain = [d["path"]]
    return {**where, "chain": chain}


def describe(vm: VM, paths: HostPaths) -> dict:
    """The VM as Get-VM (with its hard disk drives, DVD drives and checkpoints) shows it."""
    disks = [_describe_disk(vm, paths, i, d) for i, d in enumerate(vm.disks)]
    state_files = _existing(paths, [vm.state_file(ext) for ext in ("vmcx", "vmgs", "vmrs")])
    return {
        "id": vm.id, "name": vm.name, "state": vm.state, "generation": vm.generation,
        "version": vm.version, "memory_startup_bytes": vm.memory_startup_bytes,
        # Get-VM's MemoryAssigned is what a running VM holds; a VM that does not run holds none
        "memory_assigned_bytes": vm.running_memory_bytes if vm.state == "Running" else 0,
        "memory_maximum_bytes": vm.memory_maximum_bytes or vm.memory_startup_bytes,
        "dynamic_memory_enabled": vm.dynamic_memory_enabled, "automatic_start_action": vm.automatic_start_action,
        "checkpoint_type": vm.checkpoint_type, "path": vm.path, "config_path": vm.config_path,
        "state_files": state_files, "disks": disks, "isos": list(vm.isos), "dvd_drives": dvd_drives(vm),
        "snapshot_location": vm.snapshot_location, "smart_paging_path": vm.smart_paging_path,
        "snapshots": [{"id": s["id"], "name": s["name"], "config_path": s["config_path"],
                       "files": _existing(paths, checkpoint_files(s))} for s in vm.snapshots],
        "switches": list(vm.switches), "adapters": adapters(vm),
    }


def dvd_drives(vm: VM) -> list[dict]:
    """Its DVD drives as Get-VMDvdDrive shows them (ControllerType, ControllerNumber,
    ControllerLocation, Path): one per image, in the slots after its hard disks (a Generation 1
    VM's on IDE, where its disks leave room, else SCSI; a Generation 2 VM's on SCSI)."""
    taken = {(d.get("controller_type", "SCSI"), int(d.get("controller_number", 0)),
              int(d.get("controller_location", 0))) for d in vm.disks}
    free = [("IDE", c, loc) for c in (0, 1) for loc in (0, 1)] if vm.generation == 1 else []
    free += [("SCSI", c, loc) for c in range(4) for loc in range(64)]
    slots = [s for s in free if s not in taken]
    return [{"controller_type": t, "controller_number": c, "controller_location": loc, "path": p}
            for (t, c, loc), p in zip(slots, vm.isos, strict=False)]


NO_NIC = {"legacy": False, "vlan_id": 0, "static_mac": ""}


def adapters(vm: VM) -> list[dict]:
    """Its network adapters as Get-VMNetworkAdapter (IsLegacy, MacAddress with
    DynamicMacAddressEnabled) and Get-VMNetworkAdapterVlan (AccessVlanId) show them."""
    return adapters_of(vm.switches, vm.nics)


def adapters_of(switches: list[str], nics: list[dict]) -> list[dict]:
    """The adapters of a VM record (VM.to_state) with these `switches` and `nics`."""
    nics = (list(nics) + [NO_NIC] * len(switches))[:len(switches)]
    return [{"switch": sw, **{k: n.get(k, v) for k, v in NO_NIC.items()}}
            for sw, n in zip(switches, nics, strict=True)]


def static_macs(vm: VM) -> list[str]:
    return [a["static_mac"] for a in adapters(vm) if a["static_mac"]]


def checkpoint_files(snap: dict) -> list[str]:
    """Every file of a checkpoint (its .vmcx, .vmgs and, with memory, .vmrs)."""
    return list(snap.get("files") or [snap["config_path"]])


def _existing(paths: HostPaths, host_paths: list[str]) -> list[str]:
    out = []
    for hp in host_paths:
        try:
            if paths.local(hp).is_file():
                out.append(hp)
        except OpError:
            pass
    return out
