"""Which files a migration moves, and where each lands.

A file keeps its path relative to the host's VM root, so `D:\\VMs\\hv1\\<id>\\...` on the
source becomes `<destination vm_root>\\<id>\\...` and the SMB paths follow from the
inventory (docs/design.md section 5).

Import-VM -Register keeps every file where it is and looks for the VM's checkpoints in
`Snapshots` beside its configuration's folder (docs/hyperv-rules.md, "Validation and
import"): a checkpoint's files must therefore be in `<VM folder>\\Snapshots` on the source
already (`layout_problems`), so that keeping relative paths lands them where -Register looks.
"""
from __future__ import annotations

import itertools

from workers.model.config import Config


def checkpoint_files(snap: dict) -> list[str]:
    """Every file of a checkpoint as VMInfo lists it: its .vmcx, .vmgs and (Standard) .vmrs."""
    return list(snap.get("files") or [snap["config_path"]])


def frozen_files(vm: dict) -> list[dict]:
    """What is read-only once our checkpoint exists: parent disks, every file of every
    checkpoint (the VM's configuration names them all, and -Register needs them all), ISOs."""
    files, seen = [], set()

    def add(path: str, kind: str) -> None:
        if path.lower() not in seen:
            seen.add(path.lower())
            files.append({"path": path, "kind": kind})

    for disk in vm["disks"]:
        for parent in disk["chain"][1:]:
            add(parent, "disk")
    for snap in vm.get("snapshots", []):
        for path in checkpoint_files(snap):
            add(path, "checkpoint")
    for iso in vm.get("isos", []):
        add(iso, "iso")
    return files


def _same_folder(a: str, b: str) -> bool:
    return a.rstrip("\\").lower() == b.rstrip("\\").lower()


def layout_problems(vm: dict) -> list[str]:
    """Why the VM's files would not land where Import-VM -Register looks on the destination
    (each with its fix); none for Hyper-V's default layout."""
    folder = vm["path"].rstrip("\\")
    where = vm.get("snapshot_location") or folder
    if not _same_folder(where, folder):
        return [f"its checkpoint file location {where} is not its configuration folder {folder} "
                f"(Import-VM -Register finds checkpoints only in Snapshots beside the configuration); move "
                f"them there with Move-VMStorage -SnapshotFilePath '{folder}', or Set-VM -SnapshotFileLocation "
                f"'{folder}' while it has no checkpoints"]
    inside = folder.lower() + "\\snapshots\\"
    stray = [p for s in vm.get("snapshots", []) for p in checkpoint_files(s) if not p.lower().startswith(inside)]
    if stray:
        return [f"checkpoint files outside {folder}\\Snapshots ({', '.join(stray)}): Import-VM -Register would "
                f"not find them on the destination"]
    return []


def downtime_files(vm: dict) -> list[dict]:
    """What only the saved VM can give: the active (leaf) disks and the VM's state files."""
    files = [{"path": d["chain"][0], "kind": "disk"} for d in vm["disks"]]
    files += [{"path": p, "kind": "state"} for p in vm.get("state_files", [])]
    return files


def chain_paths(vm: dict) -> list[str]:
    return [p for d in vm["disks"] for p in d["chain"]]


class PathMap:
    def __init__(self, cfg: Config, source: str, destination: str):
        self.src, self.dst = cfg.host(source), cfg.host(destination)

    def rel(self, src_path: str) -> str:
        return self.src.to_rel(src_path)

    def dest(self, src_path: str) -> str:
        return self.dst.from_rel(self.src.to_rel(src_path))

    def mapping(self, paths: list[str]) -> dict[str, str]:
        return {p: self.dest(p) for p in paths}

    def parent_fixes(self, vm: dict) -> list[dict]:
        """Each differencing disk on the destination must name its parent's new path."""
        fixes = []
        for disk in vm["disks"]:
            chain = disk["chain"]
            for child, parent in itertools.pairwise(chain):
                fixes.append({"path": self.dest(child), "parent_path": self.dest(parent)})
        return fixes

    def frozen_parent_fixes(self, vm: dict) -> list[dict]:
        """The fixes of the frozen disks only (not the leaf's): they are on the destination
        before Save-VM, so they are re-parented before the downtime."""
        return [f for d in vm["disks"] for f in self.parent_fixes({"disks": [{"chain": d["chain"][1:]}]})]

    def validation_disk_paths(self, vm: dict) -> dict[str, str]:
        """Each drive pointed at the copy of its newest frozen disk: before Save-VM the
        destination has every disk of the chain but the leaf the guest still writes."""
        return {d["path"]: self.dest(d["chain"][1] if len(d["chain"]) > 1 else d["path"])
                for d in vm["disks"] if d.get("chain")}

    def vm_folder(self, vm: dict) -> str:
        """The VM's folder on the destination: its configuration location there, and where
        its checkpoint files and Smart Paging file go from now on."""
        folder = vm["path"].rstrip("\\")
        if _same_folder(folder, self.src.vm_root):  # VMs that share the root's own folders
            return self.dst.vm_root.rstrip("\\")
        return self.dest(folder)
