"""Which files a migration moves, and where each lands.

A file keeps its path relative to the host's VM root, so `D:\\VMs\\hv1\\<id>\\...` on the
source becomes `<destination vm_root>\\<id>\\...` and the SMB paths follow from the
inventory (docs/design.md section 5).
"""
from __future__ import annotations

import itertools

from workers.model.config import Config


def frozen_files(vm: dict, snapshot_id: str) -> list[dict]:
    """What is read-only once our checkpoint exists: parent disks, its config, ISOs."""
    files, seen = [], set()

    def add(path: str, kind: str) -> None:
        if path.lower() not in seen:
            seen.add(path.lower())
            files.append({"path": path, "kind": kind})

    for disk in vm["disks"]:
        for parent in disk["chain"][1:]:
            add(parent, "disk")
    for snap in vm.get("snapshots", []):
        if snap["id"] == snapshot_id:
            add(snap["config_path"], "config")
    for iso in vm.get("isos", []):
        add(iso, "iso")
    return files


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
