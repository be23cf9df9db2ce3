"""Taking in a VM whose files were copied here: Compare-VM and Import-VM -Register, as the
shipped compare_vm and import_vm scripts run them (docs/hyperv-rules.md, "Validation and
import", has each rule with its source).

`Compare-VM -Path <definition> -Register` is ImportSystemDefinition: it makes a planned VM
(Msvm_PlannedComputerSystem) from a VM's definition file, keeping its id. The scripts fix
the planned VM through the report (its hard disk drives, DVD drives, checkpoint file
location and Smart Paging folder), compare again (`Compare-VM -CompatibilityReport`), and
then either realize it (`Import-VM -CompatibilityReport`, RealizePlannedSystem) or destroy
it (DestroySystem). The model:

- Only a VM's own definition (`Virtual Machines\\<ID>.vmcx`) is taken; a checkpoint's
  (`Snapshots\\<SID>.vmcx`) is refused: ImportSystemDefinition takes the definition of the
  virtual machine, checkpoints come in with it (ImportSnapshotDefinitions). Whether
  Compare-VM accepts a checkpoint's file is undocumented: harsher reading.
- The id is kept: a VM or a planned VM with that id already here is refused, and so is a
  definition file a planned VM still uses ("must not already be in use").
- Every path is looked for where the definition (or the fix through the report) says, on
  this host; nothing is re-rooted. A differencing disk's parent is looked for at the parent
  path written in the child.
- The checkpoints the definition lists are looked for in `Snapshots` beside the folder that
  holds the definition (Compare-VM's report: SnapshotPath), every file of each: its .vmcx,
  .vmgs and, if it kept memory, .vmrs (harsher reading: the documentation names the folder,
  not the files).
- The checkpoint file location and the Smart Paging folder the VM will use must be folders
  of this host (harsher reading).
- A planned VM lasts until it is realized or destroyed, across restarts, and keeps its
  definition file in use meanwhile (Remove-Item of it fails).

Simplifications (documented gaps): a checkpoint's definition names its disks by the paths
they had on the source, and the cmdlets cannot change a checkpoint; how Hyper-V relates
them to the moved chain is not documented, and the emulator relates them by file name
within the VM's chain (checkpoint disks are named `<base>_<SID>.avhdx`). ACL grants are
logged only.
"""
from __future__ import annotations

import copy
import logging
import os
import time

from lab.emulator import disk
from lab.emulator.checkpoints import Checkpoints
from lab.emulator.errors import OpError, fqid, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.faults import FaultTable
from lab.emulator.hostpaths import is_guid, leaf_name, parent_folder, same_path
from lab.emulator.hostprops import CPU_VENDOR
from lab.emulator.registry import Registry
from lab.emulator.vm import CHECKPOINT_TYPES, VM, MiB
from lab.emulator.vmcx import hardware_settings, is_checkpoint_definition, lifecycle_settings, read_config

log = logging.getLogger("lab.emulator.vmimport")

# Compare-VM message ids. 33012 (switch not found) is Hyper-V's; the others are this
# emulator's own numbers for the other incompatibilities it reports.
MSG_SWITCH = 33012
MSG_VHD = 40010
MSG_ISO = 40012
MSG_FOLDER = 40016
MSG_CHECKPOINT = 40020
MSG_VERSION = 14004
MSG_CPU = 24004
MSG_CONFIG = 16010


def _inc(mid: int, msg: str) -> dict:
    return {"message_id": mid, "message": msg}


def snapshot_folder(definition: str) -> str:
    """Where -Register looks for a VM's checkpoints: `Snapshots` beside the folder holding its
    definition (`D:\\vm1\\Virtual Machines\\<ID>.vmcx` -> `D:\\vm1\\Snapshots`)."""
    return parent_folder(parent_folder(definition)) + "\\Snapshots"


def _checkpoint_names(s: dict) -> list[str]:
    """The file names of a checkpoint listed in a VM's definition, its .vmcx first."""
    sid = s["id"].upper()
    names = [leaf_name(f) for f in s.get("files") or [] if isinstance(f, str)]
    first = f"{sid}.vmcx"
    return [first] + [n for n in names if n.lower() != first.lower()]


class Importer:
    def __init__(self, registry: Registry, events: EventLog, checkpoints: Checkpoints,
                 faults: FaultTable | None = None):
        self.reg = registry
        self.paths = registry.paths
        self.events = events
        self.checkpoints = checkpoints
        self.faults = faults if faults is not None else FaultTable()

    # -- the operations, step by step as their scripts run -------------------------------
    def compare(self, config_path: object, disk_map: dict[str, str], iso_map: dict[str, str],
                folder: str | None, switch_map: dict[str, str] | None = None, eject: list[str] | None = None) -> dict:
        """compare_vm.ps1: Compare-VM -Register, the fixes through the report, the report again,
        then DestroySystem of the planned VM. What the clean-up could not remove is named."""
        planned = self.plan(config_path, "CompareVM")
        try:
            self.fix(planned, disk_map, iso_map, folder, switch_map, eject)
            inc, _ = self.check(planned)
        except OpError as e:
            raise self._with_left(e, self._clean_up(planned, "compare_vm")) from None
        left = self._clean_up(planned, "compare_vm")
        return {"incompatibilities": inc, "left_behind": [left] if left else []}

    def import_vm(self, config_path: str, disk_map: dict[str, str], iso_map: dict[str, str],
                  fixes: list[dict], folder: str | None, switch_map: dict[str, str] | None = None,
                  eject: list[str] | None = None) -> VM:
        """import_vm.ps1: Set-VHD -ParentPath for each fix, then as compare, and if nothing is left
        to fix Import-VM -CompatibilityReport (the planned VM is realized); else DestroySystem."""
        with self.reg.lock:
            self.checkpoints.set_parents(fixes)
            planned = self.plan(config_path, "ImportVM")
            try:
                self.fix(planned, disk_map, iso_map, folder, switch_map, eject)
                inc, checked = self.check(planned)
                if inc:
                    raise OpError(f"Cannot register {config_path} on this host: " +
                                  "; ".join(f"{i['message_id']}: {i['message']}" for i in inc),
                                  "InvalidData", "IncompatibleVM", str(config_path))
                vm = self.realize(planned, checked)
            except OpError as e:
                raise self._with_left(e, self._clean_up(planned, "import_vm")) from None
        self.events.event(vm, "import", state=vm.state)
        log.info("imported VM %s (%s) on %s", vm.id, vm.state, self.reg.name)
        return vm

    def _clean_up(self, planned: dict, op: str) -> dict | None:
        """DestroySystem of a planned VM; what is left (and why) if that failed."""
        try:
            self.destroy(planned["id"], op)
            return None
        except OpError as e:
            return {"kind": "planned_vm", "id": planned["id"], "name": planned["name"], "error": e.message}

    @staticmethod
    def _with_left(e: OpError, left: dict | None) -> OpError:
        if left is None:
            return e
        return OpError(f"{e.message} (left behind: planned virtual machine {left['id']}: {left['error']})",
                       e.category, e.fqid, e.target)

    # -- Compare-VM -Register: ImportSystemDefinition -------------------------------------
    def plan(self, config_path: object, cmdlet: str) -> dict:
        """A planned VM from a VM's definition file, its id kept; refused if that id or that
        file is already in use here."""
        doc, _ = read_config(self.paths, config_path, cmdlet)
        assert isinstance(config_path, str)
        if is_checkpoint_definition(doc):
            raise OpError(f"The file '{config_path}' is the configuration of a checkpoint, not of a virtual "
                          f"machine: checkpoints are imported with their virtual machine.", "InvalidArgument",
                          fqid("InvalidConfiguration", cmdlet), config_path)
        vm_id = doc["id"]
        with self.reg.lock:
            if vm_id in self.reg.vms:
                raise OpError(f"Failed to import the virtual machine: a virtual machine with identifier {vm_id} "
                              f"already exists on {self.reg.name} (-Register keeps the ID).",
                              "ResourceExists", fqid("ObjectAlreadyExists", cmdlet), vm_id)
            for other in self.reg.planned.values():
                if other["id"] == vm_id or same_path(other["definition"], config_path):
                    raise OpError(f"The virtual machine configuration '{config_path}' is in use by planned virtual "
                                  f"machine {other['id']} on {self.reg.name}.", "ResourceBusy",
                                  fqid("ObjectInUse", cmdlet), config_path)
            planned = {"id": vm_id, "name": doc["name"], "definition": config_path, "created": time.time(),
                       "doc": doc,
                       "disks": [{"controller_type": d.get("controller_type", "SCSI"),
                                  "controller_number": int(d.get("controller_number", 0)),
                                  "controller_location": int(d.get("controller_location", i)),
                                  "path": d["path"]} for i, d in enumerate(doc["disks"])],
                       "isos": list(doc.get("isos", [])),
                       "snapshot_location": doc.get("snapshot_location") or doc["path"],
                       "smart_paging_path": doc.get("smart_paging_path") or doc["path"]}
            self.reg.planned[vm_id] = planned
            self.reg.persist()
        log.info("planned VM %s from %s on %s", vm_id, config_path, self.reg.name)
        return planned

    def fix(self, planned: dict, disk_map: dict[str, str], iso_map: dict[str, str], folder: str | None,
            switch_map: dict[str, str] | None = None, eject: list[str] | None = None) -> None:
        """Set-VMHardDiskDrive / Set-VMDvdDrive on the report's VM for every drive whose path is
        in the maps; Set-VM -SnapshotFileLocation -SmartPagingFilePath `folder`, a folder here;
        Connect-VMNetworkAdapter of every adapter whose switch is in `switch_map` to its switch
        here (a switch this host does not have: refused, the harsher reading); Set-VMDvdDrive
        -Path $null of every drive whose image is in `eject` (Set-VMDvdDrive.md, example 2)."""
        for sw in (switch_map or {}).values():
            if sw not in self.reg.props["switches"]:
                raise OpError(f"Connect-VMNetworkAdapter: the virtual switch '{sw}' was not found on this host.",
                              "ObjectNotFound", fqid("InvalidParameter", "ConnectVMNetworkAdapter"), sw)
        dmap = {k.lower(): v for k, v in disk_map.items()}
        imap = {k.lower(): v for k, v in iso_map.items()}
        if folder is not None and not self.paths.is_root(folder):
            local = self.paths.local(folder, "SetVM")
            if not local.is_dir():
                raise OpError(f"Set-VM: the folder '{folder}' does not exist.", "ObjectNotFound",
                              fqid("InvalidParameter", "SetVM"), folder)
        with self.reg.lock:
            for d in planned["disks"]:
                d["path"] = dmap.get(d["path"].lower(), d["path"])
            gone = {e.lower() for e in eject or []}
            planned["isos"] = [imap.get(i.lower(), i) for i in planned["isos"]
                               if i.lower() in imap or i.lower() not in gone]
            if folder is not None:
                planned["snapshot_location"] = planned["smart_paging_path"] = folder
            if switch_map:
                doc = planned["doc"]
                doc["switches"] = [switch_map.get(s, s) for s in doc.get("switches", [])]

    # -- Compare-VM -CompatibilityReport ----------------------------------------------------
    def check(self, planned: dict) -> tuple[list[dict], dict]:
        """What keeps this planned VM from being realized here, and (if nothing) what realizing
        needs: the disk chains, the checkpoints as found here, the VM's state."""
        doc = planned["doc"]
        inc = self._host_incompatibilities(doc)
        chains: list[list[disk.ChainLink] | None] = []
        for d in planned["disks"]:
            found = self._disk_incompatibility(d["path"])
            if found is not None:
                inc.append(found)
                chains.append(None)
            else:
                chains.append(disk.read_chain(d["path"], lambda p: self.paths.local(p, "CompareVM")))
        for iso in planned["isos"]:
            local = self.paths.medium(iso, self.reg.props["unc_shares"])
            if local is None or not local.is_file():
                inc.append(_inc(MSG_ISO, f"Could not find the ISO image '{iso}'."))
        for what, folder in (("checkpoint file location", planned["snapshot_location"]),
                             ("Smart Paging folder", planned["smart_paging_path"])):
            if not self._is_folder(folder):
                inc.append(_inc(MSG_FOLDER, f"The {what} '{folder}' of the virtual machine is not a folder "
                                            f"of this host."))
        snapshots, problems = self._checkpoints(planned, chains)
        inc += problems
        state, problem = self._saved_state(doc, planned["definition"])
        if problem:
            inc.append(_inc(MSG_CONFIG, problem))
        return inc, {"chains": chains, "snapshots": snapshots, "state": state}

    def _host_incompatibilities(self, doc: dict) -> list[dict]:
        inc = []
        versions, vendor = self.reg.props["supported_versions"], self.reg.props["cpu_vendor"]
        if doc.get("version") not in versions:
            inc.append(_inc(MSG_VERSION, f"The virtual machine's configuration version {doc.get('version')!r} is "
                                         f"not supported by this host (supported: {', '.join(versions)})."))
        if doc.get("cpu_vendor", vendor) != vendor:
            inc.append(_inc(MSG_CPU, f"The virtual machine uses processor features of {doc.get('cpu_vendor')} that "
                                     f"this host ({vendor}) does not have; it cannot be restored here."))
        for sw in doc.get("switches", []):
            if sw not in self.reg.props["switches"]:
                inc.append(_inc(MSG_SWITCH, f"Could not find Ethernet switch '{sw}'."))
        return inc

    def _is_file(self, hp: str) -> bool:
        try:
            return self.paths.local(hp, "CompareVM").is_file()
        except OpError:
            return False

    def _is_folder(self, hp: str) -> bool:
        if self.paths.is_root(hp):
            return True
        try:
            return self.paths.local(hp, "CompareVM").is_dir()
        except OpError:
            return False

    def _disk_incompatibility(self, path: str) -> dict | None:
        """The first thing wrong with a disk's chain, each parent where its child says; None if nothing."""
        seen = 0
        while path and seen < 256:
            seen += 1
            if not self.paths.is_under(path):  # a folder of another host (or none): nothing there
                return _inc(MSG_VHD, f"Could not find the virtual hard disk '{path}'.")
            try:
                local = self.paths.local(path, "CompareVM")
            except OpError as e:
                return _inc(MSG_VHD, f"Virtual hard disk '{path}' cannot be used here: {e.message}")
            if not local.is_file():
                return _inc(MSG_VHD, f"Could not find the virtual hard disk '{path}'.")
            try:
                hdr = disk.read_header(local)
            except disk.DiskFormatError as e:
                return _inc(MSG_VHD, f"The virtual hard disk '{path}' is damaged: {e}")
            path = hdr.parent_path if hdr.type == "differencing" else ""  # type: ignore[assignment]
        return None

    def _checkpoints(self, planned: dict, chains: list) -> tuple[list[dict], list[dict]]:
        """The definition's checkpoints as found in the snapshot folder beside it, and what is
        missing or wrong about them."""
        folder = snapshot_folder(planned["definition"])
        found, inc = [], []
        for s in planned["doc"].get("snapshots", []):
            if not (isinstance(s, dict) and is_guid(s.get("id")) and isinstance(s.get("disks"), list)):
                continue
            label = f"checkpoint '{s.get('name', '')}' ({s['id']})"
            files = [f"{folder}\\{n}" for n in _checkpoint_names(s)]
            missing = [f for f in files if not self._is_file(f)]
            if missing:
                inc.append(_inc(MSG_CHECKPOINT, f"Could not find the {label}: {', '.join(missing)} missing "
                                                f"(its files are looked for in '{folder}')."))
                continue
            try:
                sdoc, _ = read_config(self.paths, files[0], "CompareVM")
            except OpError as e:
                inc.append(_inc(MSG_CHECKPOINT, f"The {label} is damaged: {e.message}"))
                continue
            if not is_checkpoint_definition(sdoc) or sdoc["id"] != planned["id"] \
                    or (sdoc.get("snapshot") or {}).get("id") != s["id"]:
                inc.append(_inc(MSG_CHECKPOINT, f"'{files[0]}' is not the configuration of the {label}."))
                continue
            disks = []
            for i, p in enumerate(x for x in s["disks"] if isinstance(x, str)):
                chain = chains[i] if i < len(chains) else None
                if chain is None:
                    continue  # that disk's own problem is reported already
                match = [link for link in chain if same_path(link.host_path, p)] or \
                    [link for link in chain if same_path(leaf_name(link.host_path), leaf_name(p))]
                if len(match) == 1:
                    disks.append(match[0].host_path)
                else:
                    inc.append(_inc(MSG_CHECKPOINT, f"The {label} refers to the virtual hard disk '{p}', which is "
                                                    f"not in the disk chain of the virtual machine."))
            found.append({"id": s["id"], "name": str(s.get("name", "")), "config_path": files[0], "files": files,
                          "disks": disks, "created": s.get("created", 0)})
        return found, inc

    def _saved_state(self, doc: dict, definition: str) -> tuple[str, str | None]:
        """The VM's state once realized (Saved if its saved memory is beside the definition,
        else Off) and what is wrong with that saved memory."""
        vm_id = doc["id"]
        vmrs_hp = f"{parent_folder(definition)}\\{vm_id.upper()}.vmrs"
        if doc.get("state") not in ("Saved", "Running"):
            return "Off", None
        try:
            vmrs = disk.read_vmrs(self.paths.local(vmrs_hp, "CompareVM"))
        except FileNotFoundError:
            if doc.get("state") == "Saved":
                return "Off", f"The saved state file '{vmrs_hp}' was not found."
            return "Off", None
        except disk.DiskFormatError as e:
            return "Off", str(e)
        if vmrs["vm_id"] != vm_id:
            return "Off", f"The saved state file '{vmrs_hp}' belongs to VM {vmrs['vm_id']}."
        return "Saved", None

    # -- Import-VM -CompatibilityReport: RealizePlannedSystem ------------------------------
    def realize(self, planned: dict, checked: dict) -> VM:
        doc, definition = planned["doc"], planned["definition"]
        with self.reg.lock:
            if self.reg.planned.get(planned["id"]) is not planned:
                raise OpError(f"The planned virtual machine {planned['id']} no longer exists.", "ObjectNotFound",
                              fqid("ObjectNotFound", "ImportVM"), planned["id"])
            vm = VM(id=doc["id"], name=doc["name"], path=parent_folder(parent_folder(definition)),
                    config_path=definition, state=checked["state"], generation=int(doc.get("generation", 2)),
                    version=str(doc.get("version")),
                    memory_startup_bytes=int(doc.get("memory_startup_bytes", 64 * MiB)),
                    checkpoint_type=doc.get("checkpoint_type") if doc.get("checkpoint_type") in CHECKPOINT_TYPES
                    else "Standard",
                    switches=list(doc.get("switches", [])), disks=copy.deepcopy(planned["disks"]),
                    isos=list(planned["isos"]), snapshots=checked["snapshots"],
                    write_rate_kbps=float((doc.get("guest") or {}).get("write_rate_kbps", 64.0)),
                    cpu_vendor=str(doc.get("cpu_vendor", CPU_VENDOR)),
                    snapshot_location=planned["snapshot_location"], smart_paging_path=planned["smart_paging_path"],
                    **lifecycle_settings(doc), **hardware_settings(doc))
            for chain in checked["chains"]:
                for k, link in enumerate(chain or []):
                    os.chmod(link.local, 0o644 if k == 0 else 0o444)
            log.info("import %s on %s: granting NT VIRTUAL MACHINE\\%s full control on its files (modelled)",
                     vm.id, self.reg.name, vm.id)
            del self.reg.planned[planned["id"]]
            self.reg.vms[vm.id] = vm
            self.reg.save(vm)
        return vm

    # -- DestroySystem --------------------------------------------------------------------
    def destroy(self, planned_id: str, op: str) -> None:
        """DestroySystem of a planned VM (an injected `<op>:DestroySystem` fault makes it fail)."""
        fault = self.faults.take_step(op, "DestroySystem")
        if fault is not None and fault.action == "delay":
            time.sleep(fault.seconds)
        elif fault is not None:
            raise OpError(fault.message or f"DestroySystem of planned virtual machine {planned_id} failed.",
                          "NotSpecified", "QuickmigInjectedFault", planned_id)
        with self.reg.lock:
            if self.reg.planned.pop(planned_id, None) is not None:
                self.reg.persist()
        log.info("destroyed planned VM %s on %s", planned_id, self.reg.name)


def check_switch_map(args: dict, cmdlet: str) -> dict[str, str]:
    """switch_map (the VM's switch -> this host's) of compare_vm / import_vm."""
    m = args.get("switch_map", {}) or {}
    if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in m.items()):
        raise invalid_arg("switch_map must map switch names to switch names.", cmdlet)
    return m


def check_eject(args: dict, cmdlet: str) -> list[str]:
    """eject_isos of compare_vm / import_vm: the images whose drives are emptied (a list of paths)."""
    e = args.get("eject_isos", []) or []
    if not isinstance(e, list) or not all(isinstance(p, str) and p for p in e):
        raise invalid_arg("eject_isos must be a list of ISO image paths.", cmdlet)
    return e


def check_maps(args: dict, cmdlet: str) -> tuple[dict[str, str], dict[str, str], str | None]:
    """disk_paths, iso_paths (old host path -> new) and vm_folder of compare_vm / import_vm."""
    maps = []
    for what in ("disk_paths", "iso_paths"):
        m = args.get(what, {}) or {}
        if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
            raise invalid_arg(f"{what} must map old host paths to new host paths.", cmdlet)
        maps.append(m)
    folder = args.get("vm_folder")
    if folder is not None and (not isinstance(folder, str) or not folder):
        raise invalid_arg("vm_folder must be a host folder.", cmdlet)
    return maps[0], maps[1], folder
