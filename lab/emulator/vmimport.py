"""Taking in a VM whose files were copied here: Compare-VM (report what this host lacks) and
Import-VM -Register (re-point the copied configuration at the copies and register it).

Simplifications (documented gaps): compare_vm looks for the copied config's disks re-rooted
under the given vm_root (a real Compare-VM -Copy looks at the config's own paths unless told
-VhdSourcePath); an imported VM's checkpoints come from its main .vmcx (their own
Snapshots\\<SID>.vmcx files are not required on import); ACL grants are logged only.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

from lab.emulator import disk
from lab.emulator.checkpoints import Checkpoints
from lab.emulator.errors import OpError, fqid, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.hostpaths import is_guid, leaf_name, parent_folder, same_path
from lab.emulator.hostprops import CPU_VENDOR
from lab.emulator.registry import Registry
from lab.emulator.vm import CHECKPOINT_TYPES, VM, MiB
from lab.emulator.vmcx import lifecycle_settings, read_config

log = logging.getLogger("lab.emulator.vmimport")

# Compare-VM message ids. 33012 (switch not found) is Hyper-V's; the others are this
# emulator's own numbers for the other incompatibilities it reports.
MSG_SWITCH = 33012
MSG_VHD = 40010
MSG_ISO = 40012
MSG_VERSION = 14004
MSG_CPU = 24004
MSG_CONFIG = 16010


def _rebase(p: str, base_from: str, base_to: str) -> str:
    """p with the folder base_from replaced by base_to; p itself if it is not under base_from."""
    if same_path(p[:len(base_from) + 1], base_from + "\\"):
        return base_to + p[len(base_from):]
    return p


def _inc(mid: int, msg: str) -> dict:
    return {"message_id": mid, "message": msg}


def _repoint_disks(doc: dict, dmap: dict[str, str]) -> list[dict]:
    disks: list[dict] = []
    for d in doc["disks"]:
        nd = {"controller_type": d.get("controller_type", "SCSI"),
              "controller_number": int(d.get("controller_number", 0)),
              "controller_location": int(d.get("controller_location", len(disks))),
              "path": dmap.get(d["path"].lower(), d["path"])}
        disks.append(nd)
    return disks


def _repoint_snapshots(doc: dict, dmap: dict[str, str], new_path: str) -> list[dict]:
    snapshots = []
    for s in doc.get("snapshots", []):
        if not (isinstance(s, dict) and is_guid(s.get("id")) and isinstance(s.get("disks"), list)):
            continue
        snapshots.append({"id": s["id"], "name": str(s.get("name", "")),
                          "config_path": _rebase(str(s.get("config_path", "")), doc["path"], new_path),
                          "disks": [dmap.get(p.lower(), p) for p in s["disks"] if isinstance(p, str)],
                          "created": s.get("created", 0)})
    return snapshots


def _match_checkpoint_disks(snapshots: list[dict], chains: list[list[disk.ChainLink]]) -> list[str]:
    """Point each checkpoint's disks at members of the imported chains; the ones that are not."""
    problems = []
    for s in snapshots:
        for i, p in enumerate(s["disks"]):
            if i >= len(chains) or any(same_path(link.host_path, p) for link in chains[i]):
                continue
            # not in disk_paths: the checkpoint's disk is the chain member with its file name
            # (checkpoint disks are named <base>_<snapshot id>.avhdx, so names are unique)
            match = [link for link in chains[i] if same_path(leaf_name(link.host_path), leaf_name(p))]
            if len(match) == 1:
                s["disks"][i] = match[0].host_path
            else:
                problems.append(f"checkpoint '{s['name']}' refers to '{p}', which is not in the disk chain")
    return problems


def _vm_from_doc(doc: dict, new_path: str, config_path: str, state: str, disks: list[dict], isos: list[str],
                 snapshots: list[dict]) -> VM:
    return VM(id=doc["id"], name=doc["name"], path=new_path, config_path=config_path, state=state,
              generation=int(doc.get("generation", 2)), version=str(doc.get("version")),
              memory_startup_bytes=int(doc.get("memory_startup_bytes", 64 * MiB)),
              checkpoint_type=doc.get("checkpoint_type", "Standard")
              if doc.get("checkpoint_type") in CHECKPOINT_TYPES else "Standard",
              switches=list(doc.get("switches", [])), disks=disks, isos=isos, snapshots=snapshots,
              write_rate_kbps=float((doc.get("guest") or {}).get("write_rate_kbps", 64.0)),
              cpu_vendor=str(doc.get("cpu_vendor", CPU_VENDOR)), **lifecycle_settings(doc))


class Importer:
    def __init__(self, registry: Registry, events: EventLog, checkpoints: Checkpoints):
        self.reg = registry
        self.paths = registry.paths
        self.events = events
        self.checkpoints = checkpoints

    # -- Compare-VM --------------------------------------------------------------------
    def compare(self, config_path: object, vm_root: object) -> dict:
        """Compare-VM -Copy -GenerateNewId on a copied config: report, register nothing.

        Paths in the copied config are the source host's. Each is relocated under the given
        `vm_root`: relative to the source VM folder when vm_root names the VM folder
        (its last component is the VM id), else relative to the source host's vm_root.
        """
        doc, _ = read_config(self.paths, config_path, "CompareVM")
        if not isinstance(vm_root, str) or not vm_root:
            raise invalid_arg("vm_root must be a host folder.", "CompareVM")
        vm_root = vm_root.rstrip("\\")
        if not (same_path(vm_root, self.paths.vm_root) or self.paths.is_under(vm_root)):
            raise OpError(f"Access is denied. '{vm_root}' is outside this host's virtual machine storage "
                          f"'{self.paths.vm_root}'.", "PermissionDenied", fqid("UnauthorizedAccess", "CompareVM"))
        src_root = str(doc.get("vm_root") or parent_folder(doc["path"]))
        base_from = doc["path"] if leaf_name(vm_root).lower() == doc["id"] else src_root

        def relocate(p: str) -> str:
            return _rebase(p, base_from, vm_root)

        inc = self._host_incompatibilities(doc)
        for d in doc["disks"]:
            found = self._disk_incompatibility(relocate(d["path"]), relocate)
            if found is not None:
                inc.append(found)
        for iso in doc.get("isos", []):
            path = relocate(iso)
            try:
                ok = self.paths.local(path, "CompareVM").is_file()
            except OpError:
                ok = False
            if not ok:
                inc.append(_inc(MSG_ISO, f"Could not find the ISO image '{path}'."))
        return {"incompatibilities": inc,
                "vm": {"id": doc["id"], "name": doc["name"], "version": doc.get("version")}}

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

    def _disk_incompatibility(self, path: str, relocate: Callable[[str], str]) -> dict | None:
        """The first thing wrong with a disk's chain, relocated link by link; None if nothing."""
        seen = 0
        while path and seen < 256:
            seen += 1
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
            path = relocate(hdr.parent_path) if hdr.type == "differencing" else ""  # type: ignore[arg-type]
        return None

    # -- Import-VM ---------------------------------------------------------------------
    def import_vm(self, config_path: str, disk_map: dict[str, str], iso_map: dict[str, str],
                  fixes: list[dict]) -> VM:
        """Import-VM -Register of a copied configuration, its disks and ISOs at their new paths."""
        doc, _ = read_config(self.paths, config_path, "ImportVM")
        vm_id = doc["id"]
        dmap = {k.lower(): v for k, v in disk_map.items()}
        imap = {k.lower(): v for k, v in iso_map.items()}
        with self.reg.lock:
            if vm_id in self.reg.vms:
                raise OpError(f"Failed to import the virtual machine: a virtual machine with identifier {vm_id} "
                              f"already exists on {self.reg.name} (Import-VM -Register keeps the ID).",
                              "ResourceExists", fqid("ObjectAlreadyExists", "ImportVM"), vm_id)
            # 1. Set-VHD -ParentPath
            self.checkpoints.set_parents(fixes)
            # 2. re-point disks and ISOs
            new_path = parent_folder(parent_folder(config_path))  # ...\<id>\Virtual Machines\<id>.vmcx -> ...\<id>
            if not self.paths.is_under(new_path):
                new_path = parent_folder(config_path)
            disks = _repoint_disks(doc, dmap)
            isos = [imap.get(i.lower(), i) for i in doc.get("isos", [])]
            snapshots = _repoint_snapshots(doc, dmap, new_path)
            # 3. Compare-VM -Register: everything the VM refers to must be here
            chains, problems = self._read_chains(disks)
            problems += self._missing_isos(isos)
            problems += _match_checkpoint_disks(snapshots, chains)
            problems += self._host_problems(doc)
            state, saved_problems = self._saved_state(doc, config_path)
            problems += saved_problems
            if problems:
                raise OpError(f"Cannot register {config_path} on this host: " + "; ".join(problems),
                              "InvalidData", "IncompatibleVM", str(config_path))
            # 4. register
            vm = _vm_from_doc(doc, new_path, config_path, state, disks, isos, snapshots)
            for chain in chains:
                for k, link in enumerate(chain):
                    os.chmod(link.local, 0o644 if k == 0 else 0o444)
            log.info("import %s on %s: granting NT VIRTUAL MACHINE\\%s full control on its files (modelled)",
                     vm_id, self.reg.name, vm_id)
            self.reg.vms[vm_id] = vm
            self.reg.save(vm)
        self.events.event(vm, "import", state=state)
        log.info("imported VM %s (%s) on %s", vm_id, state, self.reg.name)
        return vm

    def _read_chains(self, disks: list[dict]) -> tuple[list[list[disk.ChainLink]], list[str]]:
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
        return chains, problems

    def _missing_isos(self, isos: list[str]) -> list[str]:
        problems = []
        for iso in isos:
            try:
                if not self.paths.local(iso, "ImportVM").is_file():
                    problems.append(f"ISO image '{iso}' was not found")
            except OpError as e:
                problems.append(e.message)
        return problems

    def _host_problems(self, doc: dict) -> list[str]:
        problems = []
        if doc.get("version") not in self.reg.props["supported_versions"]:
            problems.append(f"configuration version {doc.get('version')!r} is not supported "
                            f"(supported: {', '.join(self.reg.props['supported_versions'])})")
        for sw in doc.get("switches", []):
            if sw not in self.reg.props["switches"]:
                problems.append(f"Ethernet switch '{sw}' was not found")
        return problems

    def _saved_state(self, doc: dict, config_path: str) -> tuple[str, list[str]]:
        """The imported VM's state (Saved if its saved memory came with it, else Off) and what
        is wrong with that saved memory."""
        vm_id = doc["id"]
        problems = []
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
        return state, problems
