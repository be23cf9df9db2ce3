"""The operation table: what the WinRM server runs, by the name of the shipped script.

Each shipped script (workers/hyperv/scripts/<op>.ps1) has one `op_<op>` here, which checks
its arguments as the script's cmdlets would bind them, takes the VM's op_lock when the script
works on one VM, lets the part of the host that holds the rule do the work, and answers with
what the script prints (as JSON).
"""
from __future__ import annotations

import base64
import binascii
import logging

from lab.emulator import hostprops, scriptfacts
from lab.emulator.checkpoints import Checkpoints
from lab.emulator.errors import MissingVM, OpError, fips_refusal, get_vm_not_found, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.files import HostFiles
from lab.emulator.hostpaths import is_guid, same_path
from lab.emulator.hostresources import check_compatibility_info, numa_available
from lab.emulator.lifecycle import VMLifecycle
from lab.emulator.registry import Registry
from lab.emulator.vm import MAX_NAME, VM, describe, static_macs
from lab.emulator.vmfacts import preflight_facts
from lab.emulator.vmimport import Importer, check_eject, check_maps, check_switch_map
from workers.model import chunks

log = logging.getLogger("lab.emulator.operations")


def _whole(value, low: int, high: int | None = None) -> bool:
    """Whether value is a whole number (not a bool) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _check_fixes(fixes: object, cmdlet: str) -> list[dict]:
    if not isinstance(fixes, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("parent_path"), str)
            for f in fixes):
        raise invalid_arg("parent_fixes must be a list of {path, parent_path}.", cmdlet)
    return fixes


class Operations:
    OPS = ("list_vms", "describe_vm", "host_info", "checkpoint_vm", "save_vm", "start_vm",
           "wait_heartbeat", "compare_vm", "import_vm", "remove_snapshots", "remove_vm", "delete_files",
           "reparent_disks", "stop_vm", "file_hash", "hash_stream")

    def __init__(self, registry: Registry, events: EventLog, lifecycle: VMLifecycle, checkpoints: Checkpoints,
                 files: HostFiles, importer: Importer):
        self.reg = registry
        self.paths = registry.paths
        self.events = events
        self.lifecycle = lifecycle
        self.checkpoints = checkpoints
        self.files = files
        self.importer = importer

    def run(self, op: str, args: object) -> dict:
        if op not in self.OPS:
            raise OpError(f"The operation '{op}' is not supported by this host.", "NotImplemented",
                          "QuickmigUnknownOperation")
        if not isinstance(args, dict):
            raise invalid_arg("The arguments must be a JSON object.")
        facts = scriptfacts.of(op)
        if facts.managed_sha256 and self.reg.props.get("fips"):
            # harsher reading: the whole script is refused, whichever branch would make the hash
            raise fips_refusal(facts.managed_sha256)
        try:
            return getattr(self, f"op_{op}")(args)
        except MissingVM as e:
            if facts.get_vm_by_id:  # the script asked Get-VM -Id, which throws first
                raise get_vm_not_found(e.vm_id) from None
            raise

    def _info(self, vm: VM) -> dict:
        return describe(vm, self.paths)

    # -- read-only operations ----------------------------------------------------------
    def op_list_vms(self, args: dict) -> dict:
        with self.reg.lock:
            return {"vms": [{"id": v.id, "name": v.name, "state": v.state,
                             "quickmig_checkpoints": [{"id": c["id"], "name": c["name"], "created": int(c["created"])}
                                                      for c in v.snapshots if c["name"].startswith("quickmig-")]}
                            for v in self.reg.vms.values()]}

    def op_describe_vm(self, args: dict) -> dict:
        preflight = args.get("preflight", False)
        if not isinstance(preflight, bool):
            raise invalid_arg("preflight must be true or false.")
        if args.get("vm_id") is not None:
            return {"vm": self._described(self.reg.get(args["vm_id"]), preflight)}
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_arg("describe_vm needs 'name' or 'vm_id'.")
        with self.reg.lock:
            # exact and case-sensitive, as the shipped script compares (-ceq): Get-VM -Name is a wildcard
            found = [v for v in self.reg.vms.values() if v.name == name]
        if not found:
            raise OpError(f"No virtual machine is named \"{name}\" on this host.", "ObjectNotFound", "VMNotFound", name)
        if len(found) > 1:
            ids = ", ".join(v.id for v in found)
            raise OpError(f"More than one virtual machine is named \"{name}\" (ids {ids}); ask by vm_id.",
                          "InvalidResult", "AmbiguousVMName", name)
        return {"vm": self._described(found[0], preflight)}

    def _described(self, vm: VM, preflight: bool) -> dict:
        """VMInfo, and with `preflight` what pre-flight asks of the VM besides (vmfacts.py)."""
        info = self._info(vm)
        if preflight:
            info["preflight"] = preflight_facts(vm, self.reg.props)
        return info

    def op_host_info(self, args: dict) -> dict:
        blob, guardians = args.get("compatibility_info"), args.get("guardians", False)
        raw = None
        if blob is not None:
            if not isinstance(blob, str):
                raise invalid_arg("compatibility_info must be the base64 text of a compatibility blob.", "GetVMHost")
            try:  # [Convert]::FromBase64String, as the script reads it
                raw = base64.b64decode(blob, validate=True)
            except binascii.Error:
                raise OpError('Exception calling "FromBase64String" with "1" argument(s): "The input is not a valid '
                              'Base-64 string as it contains a non-base 64 character, more than two padding '
                              'characters, or an illegal character among the padding characters."', "NotSpecified",
                              "FormatException") from None
        if not isinstance(guardians, bool):
            raise invalid_arg("guardians must be true or false.", "GetVMHost")
        free = hostprops.free_bytes(self.reg.props, self.paths.share)
        vm_root = args.get("vm_root")
        if vm_root is not None and not (isinstance(vm_root, str) and vm_root):
            raise invalid_arg("vm_root must be a host folder.", "GetVMHost")
        p = self.reg.props
        with self.reg.lock:
            numa = numa_available(self.reg)
            macs = [{"mac": m, "vm": v.name, "vm_id": v.id, "state": v.state}
                    for v in self.reg.vms.values() for m in static_macs(v)]
        out = {"name": self.reg.name, "supported_versions": list(p["supported_versions"]),
               "switches": list(p["switches"]), "cpu_vendor": p["cpu_vendor"], "free_bytes": free,
               "vm_root_free_bytes": hostprops.folder_free_bytes(p, self.paths.share, vm_root or self.paths.vm_root),
               "cpu_model": p["cpu_model"], "numa_spanning_enabled": p["numa_spanning"],
               "numa_nodes": [{"id": i, "memory_available_bytes": n} for i, n in enumerate(numa)],
               "static_macs": macs}
        if guardians:  # Get-HgsGuardian: the guardians whose certificates this host holds
            out["guardians"] = [{"name": g["name"], "encryption_thumbprint": g["encryption_thumbprint"],
                                 "signing_thumbprint": g["signing_thumbprint"],
                                 "has_private_signing_key": g["private_keys"]} for g in p["guardians"]]
        unc = args.get("unc_paths")
        if unc is not None:  # Test-Path of each library image, as this host reaches it
            if not isinstance(unc, list) or not all(isinstance(x, str) and x for x in unc):
                raise invalid_arg("unc_paths must be a list of UNC paths.", "TestPath")
            out["unc_reachable"] = {}
            for x in unc:
                local = self.paths.medium(x, p["unc_shares"]) if x.startswith("\\\\") else None
                out["unc_reachable"][x] = local is not None and local.is_file()
        if raw:  # CheckSystemCompatibilityInfo of the VM's blob (an empty one is not asked about)
            out["compatibility"] = check_compatibility_info(p, self.reg.name, raw)
        return out

    def op_wait_heartbeat(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "GetVMIntegrationService")
        timeout = args.get("timeout_s", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
            raise invalid_arg("timeout_s must be a number of seconds between 0 and 3600.", "GetVMIntegrationService")
        return self.lifecycle.wait_heartbeat(vm, timeout)

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
        chunk_range = None
        if "first" in args or "count" in args:  # a range of chunks, their digests listed (file_hash.ps1 does the same)
            first, count = args.get("first"), args.get("count")
            if scheme != chunks.SCHEME or not _whole(first, 0) or not _whole(count, 1, chunks.MAX_RANGE):
                raise invalid_arg(f"first and count (a range of at most {chunks.MAX_RANGE} chunks) go with the "
                                  f"scheme {chunks.SCHEME} only, as whole numbers >= 0 and 1..{chunks.MAX_RANGE}.",
                                  "GetFileHash")
            chunk_range = (first, count)
        return self.files.file_hash(hp, local, scheme, chunk_range)

    def op_hash_stream(self, args: dict) -> dict:
        # Run as a one-shot script, hash_stream finds no request stream ($qmRequests) and says so.
        raise OpError("hash_stream reads its requests from stdin after its script: run it under the "
                      "streaming bootstrap.", "InvalidOperation", "NoRequestStream")

    def hash_request(self, roots: object, req: dict) -> dict:
        """One request of a hash_stream process (hash_stream.ps1): a range of chunks of a file
        confined to `roots`, checked in the script's order: the range, the path, a file."""
        hp, first, count = req.get("path"), req.get("first"), req.get("count")
        if req.get("scheme") != chunks.SCHEME or not _whole(first, 0) or not _whole(count, 1, chunks.MAX_RANGE):
            raise OpError(f"A request hashes a range of at most {chunks.MAX_RANGE} chunks: scheme {chunks.SCHEME}, "
                          f"first and count as whole numbers >= 0 and 1..{chunks.MAX_RANGE}.", "InvalidArgument",
                          "InvalidParameter", str(hp))
        checked = self.paths.check_roots(roots, "GetFileHash")
        if isinstance(hp, str) and not any(hp.lower().startswith(r.lower() + "\\") for r in checked):
            # Assert-QmPath looks at the roots before the path is used at all
            raise OpError(f"Refused path {hp}: it is outside the configured root(s) {', '.join(checked)}.",
                          "InvalidArgument", "PathRefused", hp)
        local = self.paths.confined(hp, checked, "GetFileHash")
        if not local.is_file():
            raise OpError(f"hash_stream hashes files only; {hp} is not a file.", "InvalidArgument", "NotAFile", str(hp))
        assert isinstance(hp, str) and isinstance(first, int) and isinstance(count, int)
        got = self.files.file_hash(hp, local, chunks.SCHEME, (first, count))
        return {"path": hp, "first": first, "chunks": got["chunks"]}

    # -- power -------------------------------------------------------------------------
    # save_vm, start_vm and stop_vm take an optional automatic_start_action, which the scripts
    # set with Set-VM where the harsher reading allows it: before Save-VM, after Start-VM,
    # after the saved state is discarded (lifecycle.set_start_action).
    def op_start_vm(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "StartVM")
        action = args.get("automatic_start_action")
        with vm.op_lock:
            self.lifecycle.start(vm)
            if action is not None:
                self.lifecycle.set_start_action(vm, action)
            return {"vm": self._info(vm)}

    def op_save_vm(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "SaveVM")
        action = args.get("automatic_start_action")
        with vm.op_lock:
            if action is not None and action != vm.automatic_start_action:
                self.lifecycle.set_start_action(vm, action)
            self.lifecycle.save(vm)
            return {"vm": self._info(vm)}

    def op_stop_vm(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "StopVM")
        action = args.get("automatic_start_action")
        with vm.op_lock:
            if vm.state == "Saved":
                self.lifecycle.remove_saved_state(vm)  # Remove-VMSavedState
            else:
                self.lifecycle.turn_off(vm)  # Stop-VM -TurnOff, unless Off already
            if action is not None:
                self.lifecycle.set_start_action(vm, action)
            self.reg.save(vm)
            return {"state": vm.state, "automatic_start_action": vm.automatic_start_action}

    # -- checkpoints -------------------------------------------------------------------
    def op_checkpoint_vm(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "CheckpointVM")
        sname = args.get("snapshot_name")
        if not isinstance(sname, str) or not sname or len(sname) > MAX_NAME or "\0" in sname:
            raise invalid_arg(f"snapshot_name must be 1-{MAX_NAME} characters.", "CheckpointVM")
        with vm.op_lock:
            snap = self.checkpoints.checkpoint(vm, sname)
            info = self._info(vm)  # the script answers with the checkpoint as VMInfo lists it
            return {"snapshot": next(s for s in info["snapshots"] if s["id"] == snap["id"]), "vm": info}

    def op_remove_snapshots(self, args: dict) -> dict:
        vm = self.reg.get(args.get("vm_id"), "RemoveVMSnapshot")
        ids = args.get("snapshot_ids")
        if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
            raise invalid_arg("snapshot_ids must be a list of checkpoint ids.", "RemoveVMSnapshot")
        wanted = {s.lower() for s in ids}
        with vm.op_lock:
            # ids that are not (or no longer) checkpoints of this VM are skipped, as
            # Get-VMSnapshot | Where-Object Id -in ... would skip them
            for snap in [s for s in vm.snapshots if s["id"] in wanted]:
                self.checkpoints.merge(vm, snap)
            return {"vm": self._info(vm)}

    def op_reparent_disks(self, args: dict) -> dict:
        roots = self.paths.check_roots(args.get("roots"), "SetVHD")
        fixes = _check_fixes(args.get("parent_fixes"), "SetVHD")
        for f in fixes:  # every path checked before any disk is changed, as the script does
            self.paths.confined(f["path"], roots, "SetVHD")
            self.paths.confined(f["parent_path"], roots, "SetVHD")
        with self.reg.lock:
            self.checkpoints.set_parents(fixes)
        return {"fixed": [f["path"] for f in fixes]}

    # -- files -------------------------------------------------------------------------
    def op_delete_files(self, args: dict) -> dict:
        roots = self.paths.check_roots(args.get("roots"), "RemoveItem")
        items = self.files.checked_paths(args.get("paths"), "paths", "RemoveItem", roots)
        with self.reg.lock:
            out = self.files.delete(items)
        self.files.prune([local for _, local in items], roots)
        return out

    def op_remove_vm(self, args: dict) -> dict:
        turn_off = args.get("turn_off", False)
        if not isinstance(turn_off, bool):
            raise invalid_arg("turn_off must be true or false.", "RemoveVM")
        roots = self.paths.check_roots(args.get("roots"), "RemoveVM")
        config_path = args.get("config_path")
        self.paths.confined(config_path, roots, "RemoveVM")
        items = self.files.checked_paths(args.get("delete_paths", []), "delete_paths", "RemoveVM", roots)
        vm_id = args.get("vm_id")
        if not is_guid(vm_id if not isinstance(vm_id, str) else vm_id.lower()):
            raise invalid_arg("vm_id must be a VM id (GUID).", "RemoveVM")
        vm = self.reg.vms.get(vm_id.lower())  # type: ignore[union-attr]
        removed, not_ours = False, None
        config_files: list = []
        if vm is not None:
            with vm.op_lock:
                if not same_path(vm.config_path, config_path):  # type: ignore[arg-type]
                    # not the VM quickmig imported (or moved): a replica, or someone else's VM
                    # with this id; left as it is, running or not
                    not_ours = (f"VM {vm.name} ({vm.id}) has its configuration at {vm.config_path}, "
                                f"not {config_path}; left untouched")
                    log.warning("remove_vm on %s: %s", self.reg.name, not_ours)
                else:
                    unregistered = self.lifecycle.unregister(vm, turn_off, self.checkpoints.merge)
                    if unregistered is not None:
                        removed, config_files = True, unregistered
                        self.events.event(vm, "remove")
                        log.info("removed VM %s from %s", vm_id, self.reg.name)
        with self.reg.lock:
            out = self.files.delete(items)
        self.files.prune(config_files + [local for _, local in items], roots)
        return {"removed": removed, "not_ours": not_ours, **out}

    # -- compare and import ------------------------------------------------------------
    def op_compare_vm(self, args: dict) -> dict:
        disk_map, iso_map, folder = check_maps(args, "CompareVM")
        return self.importer.compare(args.get("config_path"), disk_map, iso_map, folder,
                                     check_switch_map(args, "CompareVM"), check_eject(args, "CompareVM"))

    def op_import_vm(self, args: dict) -> dict:
        disk_map, iso_map, folder = check_maps(args, "ImportVM")
        fixes = _check_fixes(args.get("parent_fixes", []) or [], "ImportVM")
        config_path = args.get("config_path")
        roots = self.paths.check_roots(args.get("roots"), "ImportVM")
        # Set-VHD writes each child and icacls grants rights on every file of the VM: like
        # import_vm.ps1, every path is checked against the roots before anything changes
        for hp in [config_path, *disk_map.values(), *iso_map.values(),
                   *(p for f in fixes for p in (f["path"], f["parent_path"])), *([folder] if folder else [])]:
            self.paths.confined(hp, roots, "ImportVM")
        vm = self.importer.import_vm(config_path, disk_map, iso_map, fixes, folder,  # type: ignore[arg-type]
                                     check_switch_map(args, "ImportVM"), check_eject(args, "ImportVM"))
        info = self._info(vm)
        # the grants, as the script makes them: the VM's files and the ISO images copied here
        for hp in info["state_files"] + [p for d in info["disks"] for p in d["chain"]] + list(iso_map.values()):
            self.paths.confined(hp, roots, "ImportVM")  # the grants, as the script checks each
        return {"vm": info}
