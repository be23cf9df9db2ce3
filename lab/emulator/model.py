"""The model of one Hyper-V host: its VMs, their files on the host's share, and Hyper-V's rules.

Storage. The host's disk is the folder `DIR/hosts/<host>/share/`, which is also the root of
that host's SMB share: host path `<vm_root>\\a\\b.vhdx` <-> `share/a/b.vhdx`. Every path that
arrives from the network goes through `HostPaths.local`, which refuses anything outside
vm_root, `.`/`..`/empty components, characters Windows forbids, trailing dots/spaces
(Windows drops them, so they could alias another name) and symlink escapes.

Layout, as Hyper-V names things (the VM folder is named by the VM id):

    <vm_root>\\<id>\\Virtual Hard Disks\\disk0.vhdx              base disk
    <vm_root>\\<id>\\Virtual Hard Disks\\disk0_<sid>.avhdx       checkpoint leaf (same folder as its parent)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmcx                 configuration (JSON, see `vmcx_doc`)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmgs                 guest state (64 KiB)
    <vm_root>\\<id>\\Virtual Machines\\<ID>.vmrs                 saved memory (Save-VM; removed by Start-VM)
    <vm_root>\\<id>\\Snapshots\\<SID>.vmcx                        checkpoint configuration
    <vm_root>\\ISO\\lab-tools.iso                                  one shared 4 MiB ISO per host

The VM folder is named by the lowercase id; the files in it by the UPPERCASE GUID, as
Hyper-V names them (and as the shipped scripts compute them). Host paths compare without
case, as on Windows: `HostPaths.local` matches an existing file or folder whatever the
case of the request.

The registry (VMMS database) is `DIR/hosts/<host>/emulator/state.json`, rewritten atomically
on every change. Crash choice: a VM that was Running when the emulator process stopped is
Running again after a restart (the guest is treated as having kept running, as a VM does
when only VMMS restarts); its writer continues after the highest record on its disk chain
and the journal gets a `recover` line.

Locks: `HyperVHost.lock` guards the registry; each VM has `op_lock` (one operation on that
VM at a time) and `io_lock` (shared with its guest writer; held while the active disk is
switched). Order: op_lock -> lock -> io_lock. A guest writer is never stopped while io_lock
is held.

Simplifications (documented gaps): one disk per VM (SCSI 0:0); checkpoints write no memory
.vmrs (as a Production checkpoint); ACL grants are logged only; the process runs as root, so
the 0444 mode of parents is advisory (the model only ever writes to a VM's leaf); compare_vm
looks for the copied config's disks re-rooted under the given vm_root (a real Compare-VM -Copy
looks at the config's own paths unless told -VhdSourcePath); an imported VM's checkpoints come
from its main .vmcx (their own Snapshots\\<SID>.vmcx files are not required on import).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lab.emulator import disk
from lab.emulator.guest import GuestWriter, append_line
from workers.model import chunks

log = logging.getLogger("lab.emulator.model")

MiB = 1024 * 1024
SUPPORTED_VERSIONS = ["9.0", "10.0"]
SWITCHES = ["lab-switch"]
CPU_VENDOR = "GenuineIntel"
ISO_NAME = "lab-tools.iso"
ISO_BYTES = 4 * MiB
VMGS_BYTES = 64 * 1024
VMCX_FORMAT = "quickmig-emulator-vmcx/1"
CHECKPOINT_TYPES = ("Standard", "Production", "ProductionOnly", "Disabled")
# What a test may change about a host (POST /lab/host) to make a pre-flight check fail.
HOST_PROPS = ("supported_versions", "switches", "cpu_vendor", "free_bytes")
HEARTBEAT_DELAY_S = 0.2  # the guest's integration services answer this long after start
MAX_NAME = 100

# Compare-VM message ids. 33012 (switch not found) is Hyper-V's; the others are this
# emulator's own numbers for the other incompatibilities it reports.
MSG_SWITCH = 33012
MSG_VHD = 40010
MSG_ISO = 40012
MSG_VERSION = 14004
MSG_CPU = 24004
MSG_CONFIG = 16010

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BAD_PATH_CHARS = set('<>"/|?*:') | {chr(i) for i in range(32)}


def _fqid(ident: str, cmdlet: str) -> str:
    return f"{ident},Microsoft.HyperV.PowerShell.Commands.{cmdlet}"


class OpError(Exception):
    """An operation failed the way a cmdlet fails: message, ErrorCategory, FullyQualifiedErrorId."""

    def __init__(self, message: str, category: str = "NotSpecified", fqid: str = "", target: str = ""):
        super().__init__(message)
        self.message = message
        self.category = category
        self.fqid = fqid or "NotSpecified"
        self.target = target


def _whole(value, low: int, high: int | None = None) -> bool:
    """Whether value is a whole number (not a bool) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _invalid_arg(message: str, cmdlet: str = "GetVM") -> OpError:
    return OpError(message, "InvalidArgument", _fqid("InvalidParameter", cmdlet))


def _invalid_state(vm: "VM", cmdlet: str, verb: str) -> OpError:
    return OpError(f"'{vm.name}' failed to {verb}. The operation cannot be performed while the "
                   f"object is in its current state. (Virtual machine ID {vm.id}, state {vm.state})",
                   "InvalidOperation", _fqid("InvalidState", cmdlet), vm.name)


def is_guid(s: object) -> bool:
    return isinstance(s, str) and bool(_GUID.match(s))


# ---- paths ----------------------------------------------------------------------------

class HostPaths:
    """Host paths (D:\\VMs\\hv1\\...) <-> files under this host's share folder."""

    def __init__(self, vm_root: str, share: Path):
        self.vm_root = vm_root.rstrip("\\")
        self.share = Path(share)

    def is_under(self, host_path: str) -> bool:
        return isinstance(host_path, str) and host_path.lower().startswith(self.vm_root.lower() + "\\")

    def local(self, host_path: object, cmdlet: str = "GetVM") -> Path:
        """The local file for a host path; OpError for anything not strictly inside vm_root."""
        if not isinstance(host_path, str) or not host_path:
            raise _invalid_arg(f"Cannot validate argument: the path {host_path!r} is not a non-empty string.", cmdlet)
        if len(host_path) > 1024:
            raise _invalid_arg("Cannot validate argument: the path is longer than 1024 characters.", cmdlet)
        if not self.is_under(host_path):
            raise OpError(f"Access is denied. The path '{host_path}' is outside this host's virtual machine "
                          f"storage '{self.vm_root}'.", "PermissionDenied",
                          _fqid("UnauthorizedAccess", cmdlet), host_path)
        rel = host_path[len(self.vm_root) + 1:]
        parts = rel.split("\\")
        for p in parts:
            if p in ("", ".", "..") or any(c in _BAD_PATH_CHARS for c in p) or p != p.rstrip(" ."):
                raise _invalid_arg(f"The path '{host_path}' is not a valid file path "
                                   f"(empty, '.' or '..' component, or a character Windows forbids).", cmdlet)
        local = self.share
        for p in parts:  # Windows paths compare without case: use an existing entry's spelling
            cand = local / p
            if not os.path.lexists(cand) and local.is_dir():
                low = p.lower()
                cand = next((local / e for e in sorted(os.listdir(local)) if e.lower() == low), cand)
            local = cand
        real = os.path.realpath(local)
        root = os.path.realpath(self.share)
        if not real.startswith(root + os.sep):
            raise OpError(f"Access is denied. The path '{host_path}' leaves this host's storage.",
                          "PermissionDenied", _fqid("UnauthorizedAccess", cmdlet), host_path)
        return local

    def host(self, local: Path) -> str:
        rel = Path(local).relative_to(self.share)
        return self.vm_root + "\\" + "\\".join(rel.parts)


def _parent(host_path: str) -> str:
    return host_path.rsplit("\\", 1)[0]


def _leaf_name(host_path: str) -> str:
    return host_path.rsplit("\\", 1)[-1]


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


# ---- the VM record --------------------------------------------------------------------

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
    disks: list[dict] = field(default_factory=list)      # controller_* + path (active leaf)
    isos: list[str] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)  # id, name, config_path, disks (frozen paths), created
    write_rate_kbps: float = 64.0
    cpu_vendor: str = CPU_VENDOR
    counter: int = 0       # last acknowledged guest seq when the writer last stopped
    # runtime only
    op_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    io_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    writer: GuestWriter | None = field(default=None, repr=False, compare=False)
    heartbeat_at: float = field(default=0.0, repr=False, compare=False)

    PERSISTED = ("id", "name", "path", "config_path", "state", "generation", "version",
                 "memory_startup_bytes", "checkpoint_type", "switches", "disks", "isos", "snapshots",
                 "write_rate_kbps", "cpu_vendor", "counter")

    def to_state(self) -> dict:
        d = {k: getattr(self, k) for k in self.PERSISTED}
        if self.writer is not None:
            d["counter"] = self.writer.counter
        return json.loads(json.dumps(d))  # deep copy

    @classmethod
    def from_state(cls, d: dict) -> "VM":
        return cls(**{k: d[k] for k in cls.PERSISTED if k in d})

    @property
    def config_dir(self) -> str:
        return _parent(self.config_path)

    def state_file(self, ext: str) -> str:
        return f"{self.config_dir}\\{self.id.upper()}.{ext}"

    @property
    def live_counter(self) -> int:
        return self.writer.counter if self.writer is not None else self.counter


# ---- the host -------------------------------------------------------------------------

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
        # free_bytes None: the real free space of the share's file system
        self.props: dict = {"supported_versions": list(SUPPORTED_VERSIONS), "switches": list(SWITCHES),
                            "cpu_vendor": CPU_VENDOR, "free_bytes": None}
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
        path = self.paths.local(vm.config_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.vmcx_doc(vm), indent=1, ensure_ascii=False))
        os.replace(tmp, path)

    def vmcx_doc(self, vm: VM, snapshot: dict | None = None) -> dict:
        """The configuration document (.vmcx): everything needed to register the VM elsewhere."""
        return {
            "format": VMCX_FORMAT, "id": vm.id, "name": vm.name, "state": vm.state,
            "generation": vm.generation, "version": vm.version,
            "memory_startup_bytes": vm.memory_startup_bytes, "checkpoint_type": vm.checkpoint_type,
            "switches": list(vm.switches), "cpu_vendor": vm.cpu_vendor,
            "vm_root": self.paths.vm_root, "path": vm.path,
            "disks": [dict(d) for d in vm.disks], "isos": list(vm.isos),
            "snapshots": [] if snapshot else [dict(s) for s in vm.snapshots],
            "snapshot": snapshot,
            "guest": {"write_rate_kbps": vm.write_rate_kbps},
        }

    # -- lookups -----------------------------------------------------------------------
    def _get(self, vm_id: object, cmdlet: str = "GetVM") -> VM:
        if not isinstance(vm_id, str) or not vm_id:
            raise _invalid_arg("Cannot validate argument on parameter 'vm_id': it must be a VM id (GUID).", cmdlet)
        vm = self.vms.get(vm_id.lower())
        if vm is None:
            raise OpError(f"Hyper-V was unable to find a virtual machine with ID \"{vm_id}\".",
                          "ObjectNotFound", "VMNotFound", vm_id)
        return vm

    def chain(self, vm: VM, index: int = 0) -> list[disk.ChainLink]:
        return disk.read_chain(vm.disks[index]["path"], self.paths.local)

    def vm_info(self, vm: VM) -> dict:
        disks = []
        for i, d in enumerate(vm.disks):
            if d.get("disk_number") is not None:  # pass-through: Get-VMHardDiskDrive shows no file chain
                disks.append({"controller_type": d["controller_type"], "controller_number": d["controller_number"],
                              "controller_location": d["controller_location"], "path": d["path"], "chain": [],
                              "passthrough": True})
                continue
            try:
                chain = [link.host_path for link in self.chain(vm, i)]
            except (OSError, disk.DiskFormatError, OpError):
                chain = [d["path"]]
            disks.append({"controller_type": d["controller_type"], "controller_number": d["controller_number"],
                          "controller_location": d["controller_location"], "path": d["path"], "chain": chain})
        state_files = []
        for ext in ("vmcx", "vmgs", "vmrs"):
            hp = vm.state_file(ext)
            try:
                if self.paths.local(hp).is_file():
                    state_files.append(hp)
            except OpError:
                pass
        return {
            "id": vm.id, "name": vm.name, "state": vm.state, "generation": vm.generation,
            "version": vm.version, "memory_startup_bytes": vm.memory_startup_bytes,
            "checkpoint_type": vm.checkpoint_type, "path": vm.path, "config_path": vm.config_path,
            "state_files": state_files, "disks": disks, "isos": list(vm.isos),
            "snapshots": [{"id": s["id"], "name": s["name"], "config_path": s["config_path"]} for s in vm.snapshots],
            "switches": list(vm.switches),
        }

    # -- dispatch ----------------------------------------------------------------------
    OPS = ("list_vms", "describe_vm", "host_info", "checkpoint_vm", "save_vm", "start_vm",
           "wait_heartbeat", "compare_vm", "import_vm", "remove_snapshots", "remove_vm", "delete_files",
           "reparent_disks", "stop_vm", "file_hash")

    def run(self, op: str, args: object) -> dict:
        if op not in self.OPS:
            raise OpError(f"The operation '{op}' is not supported by this host.", "NotImplemented",
                          "QuickmigUnknownOperation")
        if not isinstance(args, dict):
            raise _invalid_arg("The arguments must be a JSON object.")
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
            raise _invalid_arg("describe_vm needs 'name' or 'vm_id'.")
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
        if self.props["free_bytes"] is not None:
            return int(self.props["free_bytes"])
        return shutil.disk_usage(self.share).free

    def set_props(self, doc: object) -> dict:
        """Lab control: change what this host offers (switches, versions, CPU vendor, free space)."""
        if not isinstance(doc, dict) or set(doc) - set(HOST_PROPS):
            raise _invalid_arg(f"host properties are {', '.join(HOST_PROPS)}", "SetVMHost")
        for k in ("supported_versions", "switches"):
            if k in doc and not (isinstance(doc[k], list) and all(isinstance(x, str) and x for x in doc[k])):
                raise _invalid_arg(f"{k} must be a list of names", "SetVMHost")
        if "cpu_vendor" in doc and not (isinstance(doc["cpu_vendor"], str) and doc["cpu_vendor"]):
            raise _invalid_arg("cpu_vendor must be a name", "SetVMHost")
        fb = doc.get("free_bytes")
        if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or fb < 0):
            raise _invalid_arg("free_bytes must be a byte count, or null for the real free space", "SetVMHost")
        with self.lock:
            self.props.update(doc)
            self.persist()
        return dict(self.props)

    def reset_props(self) -> dict:
        return self.set_props({"supported_versions": list(SUPPORTED_VERSIONS), "switches": list(SWITCHES),
                               "cpu_vendor": CPU_VENDOR, "free_bytes": None})

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
            raise _invalid_arg("timeout_s must be a number of seconds between 0 and 3600.", "GetVMIntegrationService")
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
            raise _invalid_arg(f"The VM name must be 1-{MAX_NAME} characters.", "NewVM")
        for what, v, hi in (("memory_mb", memory_mb, 65536), ("disk_mb", disk_mb, 65536),
                            ("write_rate_kbps", write_rate_kbps, 1 << 20)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise _invalid_arg(f"{what} must be a number between 0 and {hi}.", "NewVM")
        if isinstance(memory_mb, float) or isinstance(disk_mb, float) or memory_mb < 1:
            raise _invalid_arg("memory_mb (>= 1) and disk_mb must be integers.", "NewVM")
        if checkpoint_type not in CHECKPOINT_TYPES:
            raise _invalid_arg(f"checkpoint_type must be one of {', '.join(CHECKPOINT_TYPES)}.", "NewVM")
        if not isinstance(version, str) or not re.fullmatch(r"\d{1,2}\.\d{1,2}", version):
            raise _invalid_arg("version must look like 10.0.", "NewVM")
        if switches is None:
            switches = list(SWITCHES)
        if not isinstance(switches, list) or not all(isinstance(x, str) and 0 < len(x) <= MAX_NAME for x in switches):
            raise _invalid_arg("switches must be a list of switch names.", "NewVM")
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
                          "NotSpecified", _fqid("OperationFailed", "StartVM"), vm.name) from None
        except disk.DiskFormatError as e:
            raise OpError(f"'{vm.name}' failed to start: the virtual hard disk chain is broken: {e}",
                          "NotSpecified", _fqid("OperationFailed", "StartVM"), vm.name) from None
        for iso in vm.isos:
            if not self.paths.local(iso).is_file():
                raise OpError(f"'{vm.name}' failed to start. The ISO image '{iso}' was not found.",
                              "NotSpecified", _fqid("OperationFailed", "StartVM"), vm.name)
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
                              _fqid("OperationFailed", "StartVM"), vm.name) from None
            except disk.DiskFormatError as e:
                raise OpError(f"'{vm.name}' failed to restore from its saved state: {e}", "NotSpecified",
                              _fqid("OperationFailed", "StartVM"), vm.name) from None
            if doc["vm_id"] != vm.id:
                raise OpError(f"'{vm.name}' failed to restore: the saved state file belongs to VM {doc['vm_id']}.",
                              "NotSpecified", _fqid("OperationFailed", "StartVM"), vm.name)
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
                raise _invalid_state(vm, "SaveVM", "change state")
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
            raise _invalid_arg(f"snapshot_name must be 1-{MAX_NAME} characters.", "CheckpointVM")
        with vm.op_lock:
            if vm.checkpoint_type == "Disabled":
                raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are disabled for this "
                              f"virtual machine (CheckpointType is Disabled).", "InvalidOperation",
                              _fqid("CheckpointsDisabled", "CheckpointVM"), vm.name)
            if any(d.get("disk_number") is not None for d in vm.disks):
                raise OpError(f"Checkpoint operation failed for '{vm.name}': checkpoints are not supported for "
                              f"virtual machines with pass-through disks.", "InvalidOperation",
                              _fqid("OperationFailed", "CheckpointVM"), vm.name)
            sid = str(uuid.uuid4())
            frozen: list[str] = []
            with vm.io_lock:
                links = [self.chain(vm, i) for i in range(len(vm.disks))]
                for i, d in enumerate(vm.disks):
                    leaf = links[i][0]
                    stem = _leaf_name(links[i][-1].host_path).rsplit(".", 1)[0]
                    new_hp = f"{_parent(leaf.host_path)}\\{stem}_{sid}.avhdx"
                    disk.create_child(self.paths.local(new_hp), leaf.host_path, leaf.header)
                    os.chmod(leaf.local, 0o444)  # a parent is read-only while it has a child
                    frozen.append(leaf.host_path)
                    d["path"] = new_hp
            snap = {"id": sid, "name": sname, "config_path": f"{vm.path}\\Snapshots\\{sid.upper()}.vmcx",
                    "disks": frozen, "created": time.time()}
            snap_doc = self.vmcx_doc(vm, snapshot={"id": sid, "name": sname, "created": snap["created"]})
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
            raise _invalid_arg("snapshot_ids must be a list of checkpoint ids.", "RemoveVMSnapshot")
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
                idx = next((k for k, l in enumerate(chain) if _same(l.host_path, frozen)), None)
                if idx is None:
                    raise OpError(f"Cannot remove checkpoint '{snap['name']}' of '{vm.name}': its disk "
                                  f"'{frozen}' is not in the VM's disk chain.", "InvalidOperation",
                                  _fqid("OperationFailed", "RemoveVMSnapshot"), vm.name)
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
                    if other is not snap and i < len(other["disks"]) and _same(other["disks"][i], child.host_path):
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
            raise _invalid_arg(f"{what} must be a list of host paths.", cmdlet)
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
            raise _invalid_arg("path must be a host path.", "GetFileHash")
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
                raise _invalid_arg(f"first and count (a range of at most {chunks.MAX_RANGE} chunks) go with the "
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
            raise _invalid_arg("turn_off must be true or false.", "RemoveVM")
        items = self._checked_paths(args.get("delete_paths", []), "delete_paths", "RemoveVM")
        vm_id = args.get("vm_id")
        if not is_guid(vm_id if not isinstance(vm_id, str) else vm_id.lower()):
            raise _invalid_arg("vm_id must be a VM id (GUID).", "RemoveVM")
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
        local = self.paths.local(config_path, cmdlet)
        try:
            doc = json.loads(local.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OpError(f"The virtual machine configuration file '{config_path}' was not found.",
                          "InvalidArgument", _fqid("ConfigNotFound", cmdlet), str(config_path)) from None
        except (UnicodeDecodeError, json.JSONDecodeError, IsADirectoryError):
            raise OpError(f"The file '{config_path}' is not a valid virtual machine configuration.",
                          "InvalidData", _fqid("InvalidConfiguration", cmdlet), str(config_path)) from None
        ok = (isinstance(doc, dict) and doc.get("format") == VMCX_FORMAT and is_guid(doc.get("id"))
              and isinstance(doc.get("name"), str) and isinstance(doc.get("disks"), list)
              and isinstance(doc.get("isos", []), list) and isinstance(doc.get("snapshots", []), list)
              and isinstance(doc.get("switches", []), list) and isinstance(doc.get("path"), str)
              and all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in doc["disks"])
              and all(isinstance(x, str) for x in doc.get("isos", []) + doc.get("switches", [])))
        if not ok:
            raise OpError(f"The file '{config_path}' is not a valid virtual machine configuration.",
                          "InvalidData", _fqid("InvalidConfiguration", cmdlet), str(config_path))
        return doc, local

    def op_compare_vm(self, args: dict) -> dict:
        """Compare-VM -Copy -GenerateNewId on a copied config: report, register nothing.

        Paths in the copied config are the source host's. Each is relocated under the given
        `vm_root`: relative to the source VM folder when vm_root names the VM folder
        (its last component is the VM id), else relative to the source host's vm_root.
        """
        doc, _ = self._read_config(args.get("config_path"), "CompareVM")
        vm_root = args.get("vm_root")
        if not isinstance(vm_root, str) or not vm_root:
            raise _invalid_arg("vm_root must be a host folder.", "CompareVM")
        vm_root = vm_root.rstrip("\\")
        if not (_same(vm_root, self.paths.vm_root) or self.paths.is_under(vm_root)):
            raise OpError(f"Access is denied. '{vm_root}' is outside this host's virtual machine storage "
                          f"'{self.paths.vm_root}'.", "PermissionDenied", _fqid("UnauthorizedAccess", "CompareVM"))
        src_root = str(doc.get("vm_root") or _parent(doc["path"]))
        if _leaf_name(vm_root).lower() == doc["id"]:
            base_from, base_to = doc["path"], vm_root
        else:
            base_from, base_to = src_root, vm_root

        def relocate(p: str) -> str:
            if _same(p[:len(base_from) + 1], base_from + "\\"):
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
            raise _invalid_arg("parent_fixes must be a list of {path, parent_path}.", "SetVHD")
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
                raise _invalid_arg(f"{what} must map old host paths to new host paths.", "ImportVM")
        if not isinstance(fixes, list) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("parent_path"), str)
                for f in fixes):
            raise _invalid_arg("parent_fixes must be a list of {path, parent_path}.", "ImportVM")
        doc, _ = self._read_config(config_path, "ImportVM")
        vm_id = doc["id"]
        dmap = {k.lower(): v for k, v in disk_map.items()}
        imap = {k.lower(): v for k, v in iso_map.items()}
        with self.lock:
            if vm_id in self.vms:
                raise OpError(f"Failed to import the virtual machine: a virtual machine with identifier {vm_id} "
                              f"already exists on {self.name} (Import-VM -Register keeps the ID).",
                              "ResourceExists", _fqid("ObjectAlreadyExists", "ImportVM"), vm_id)
            # 1. Set-VHD -ParentPath
            self._set_parents(fixes)
            # 2. re-point disks and ISOs
            new_path = _parent(_parent(config_path))  # ...\<id>\Virtual Machines\<id>.vmcx -> ...\<id>
            if not self.paths.is_under(new_path):
                new_path = _parent(config_path)
            old_path = doc["path"]

            def relocate_vm_file(p: str) -> str:
                if _same(p[:len(old_path) + 1], old_path + "\\"):
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
                    if i >= len(chains) or any(_same(l.host_path, p) for l in chains[i]):
                        continue
                    # not in disk_paths: the checkpoint's disk is the chain member with its file name
                    # (checkpoint disks are named <base>_<snapshot id>.avhdx, so names are unique)
                    match = [l for l in chains[i] if _same(_leaf_name(l.host_path), _leaf_name(p))]
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
            vmrs_hp = f"{_parent(config_path)}\\{vm_id.upper()}.vmrs"
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
