"""Files on the host's storage as Remove-Item and Get-FileHash see them: files held open by
running VMs, the files every VM refers to, deleting files, removing the folders that leaves
empty, and file digests.

The delete of the shipped scripts (remove_vm, delete_files: `scripts/include/hostfiles.ps1`)
checks every path against the configured roots before it deletes any, walks every VM's disk
chains (and each checkpoint's), DVD images, configuration and state files at that moment, and
leaves any file a VM still refers to; `HostFiles` does the same on the model.
"""
from __future__ import annotations

import os
from pathlib import Path

from lab.emulator import disk
from lab.emulator.errors import OpError, invalid_arg
from lab.emulator.events import EventLog
from lab.emulator.hostpaths import is_guid
from lab.emulator.registry import Registry
from workers.model import chunks

# The folders Hyper-V makes in a VM's folder: the only ones (with GUID-named VM folders) pruned.
_HYPERV_FOLDERS = ("Virtual Hard Disks", "Virtual Machines", "Snapshots")


class HostFiles:
    def __init__(self, registry: Registry, events: EventLog):
        self.reg = registry
        self.paths = registry.paths
        self.events = events

    def locked_files(self, exclude: str | None = None) -> set[str]:
        """Local paths held open by running VMs (their disk chains, ISOs, config files) and
        the definition files of planned VMs (ImportSystemDefinition: a definition file in use)."""
        held: set[str] = set()
        for planned in list(self.reg.planned.values()):
            try:
                held.add(os.path.realpath(self.paths.local(planned["definition"])))
            except OpError:
                pass
        for vm in list(self.reg.vms.values()):
            if vm.id == exclude or vm.state != "Running":
                continue
            for i in range(len(vm.disks)):
                try:
                    held.update(os.path.realpath(link.local) for link in vm.chain(self.paths, i))
                except (OSError, disk.DiskFormatError, OpError):
                    pass
            for hp in vm.isos + [vm.config_path, vm.state_file("vmgs")]:
                try:
                    held.add(os.path.realpath(self.paths.local(hp)))
                except OpError:
                    pass
        return held

    def checked_paths(self, paths: object, what: str, cmdlet: str, roots: list[str]) -> list[tuple[str, Path]]:
        """Host paths of files to delete, each checked (`HostPaths.confined`: a plain path inside
        the storage and one of `roots`) and not a folder; nothing is deleted if one fails."""
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise invalid_arg(f"{what} must be a list of host paths.", cmdlet)
        out = []
        for hp in paths:
            local = self.paths.confined(hp, roots, cmdlet)
            if local.is_dir():
                raise OpError(f"delete_files removes files only; {hp} is a folder.", "InvalidArgument",
                              "NotAFile", hp)
            out.append((hp, local))
        return out

    def in_use_by_vms(self) -> dict[str, str]:
        """Every file a registered VM refers to, walked now (real path -> "name (id)"): each
        disk's chain and each checkpoint's (Get-VHD ParentPath, link by link), DVD images,
        configuration and state files, checkpoint configurations. A chain ends at a file that
        is not there (it is broken already); a file there that cannot be read is an error:
        nothing may be deleted while it is unknown what that VM refers to."""
        used: dict[str, str] = {}

        def add(hp: str, owner: str) -> Path | None:
            try:
                local = self.paths.local(hp)
            except OpError:
                return None  # not on this host's storage: nothing quickmig could delete
            used[os.path.realpath(local)] = owner
            return local

        for vm in list(self.reg.vms.values()):
            owner = f"{vm.name} ({vm.id})"
            heads = [d["path"] for d in vm.disks if d.get("disk_number") is None]
            heads += [p for s in vm.snapshots for p in s.get("disks", [])]
            for hp in heads:
                for _ in range(256):
                    local = add(hp, owner)
                    if local is None or not local.is_file():
                        break
                    try:
                        hdr = disk.read_header(local)
                    except (OSError, disk.DiskFormatError) as e:
                        raise OpError(f"Cannot read virtual disk {hp} of VM {owner}: {e}; nothing was deleted, "
                                      f"since it cannot be told which files that VM refers to.", "ReadError",
                                      "DiskChainUnreadable", hp) from None
                    if hdr.type != "differencing" or not hdr.parent_path:
                        break
                    hp = hdr.parent_path
            for hp in vm.isos + [vm.config_path, vm.state_file("vmgs"), vm.state_file("vmrs")] + \
                    [s["config_path"] for s in vm.snapshots]:
                add(hp, owner)
        return used

    def delete(self, items: list[tuple[str, Path]]) -> dict:
        """Remove-Item of each file no VM refers to (the caller holds the registry lock):
        {"deleted": [...], "kept": [{"path", "used_by"}]}. A file held open fails the call
        before anything is deleted."""
        used = self.in_use_by_vms()
        kept, todo = [], []
        for hp, local in items:
            owner = used.get(os.path.realpath(local))
            if owner is not None:
                kept.append({"path": hp, "used_by": owner})
            else:
                todo.append((hp, local))
        held = self.locked_files()
        for hp, local in todo:
            if os.path.realpath(local) in held:
                raise OpError(f"Cannot remove item {hp}: The process cannot access the file '{hp}' because "
                              f"it is being used by another process.", "WriteError",
                              "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand", hp)
        deleted = []
        for hp, local in todo:
            if local.is_file() or local.is_symlink():
                local.unlink()
                deleted.append(hp)
                self.events.file_event("delete", hp)
        return {"deleted": deleted, "kept": kept}

    def prune(self, locals_: list[Path], roots: list[str]) -> None:
        """Remove folders left empty: only Hyper-V's own folder names and GUID-named VM folders,
        strictly inside one of `roots`, never a root itself (the rule of the shipped scripts)."""
        tops = set()
        for r in roots:
            try:
                tops.add((self.paths.root_dir(r) if self.paths.is_root(r) else self.paths.local(r)).resolve())
            except OpError:
                continue
        for p in locals_:
            d = p.parent
            while d.resolve() not in tops and any(t in d.resolve().parents for t in tops):
                if d.name not in _HYPERV_FOLDERS and not is_guid(d.name.lower()):
                    break
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent

    def file_hash(self, hp: str, local: Path, scheme: str, chunk_range: tuple[int, int] | None = None) -> dict:
        """Get-FileHash as the copy engine digests: the whole file, or a range of chunks
        (first, count) with their digests listed."""
        if chunk_range is not None:
            first, count = chunk_range
            each = chunks.local_chunk_digests(local, first, count)  # outside the registry lock: it takes a while
            result = {"path": hp, "scheme": scheme, "first": first, "chunks": each,
                      "digest": chunks.file_digest(each)}
        else:
            result = {"path": hp, "scheme": scheme, "digest": chunks.digest_of_local(local, scheme)}
        self.events.file_event("file_hash", hp)
        return result
