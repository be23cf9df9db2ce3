"""Files on the host's storage as Remove-Item and Get-FileHash see them: files held open by
running VMs, deleting files, removing the folders that leaves empty, and file digests."""
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

    def checked_paths(self, paths: object, what: str, cmdlet: str) -> list[tuple[str, Path]]:
        """Host paths of files to delete, each checked (`HostPaths.local`) and not a folder."""
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

    def delete(self, items: list[tuple[str, Path]], exclude_vm: str | None) -> list[str]:
        """Remove-Item of each file (the caller holds the registry lock); none if any is in use."""
        held = self.locked_files(exclude_vm)
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
                self.events.file_event("delete", hp)
        return deleted

    def prune(self, locals_: list[Path]) -> None:
        """Remove folders left empty: only Hyper-V's own folder names and GUID-named VM folders,
        never vm_root itself (the rule of the shipped remove_vm script)."""
        root = self.reg.paths.share.resolve()
        for p in locals_:
            d = p.parent
            while d.resolve() != root and root in d.resolve().parents:
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
