"""quickmig's own Hyper-V checkpoint of a VM: its name, and finding it again.

Every checkpoint a migration takes (the first one and each pre-copy round's) has the same
name, so finish (on the destination) and rollback (on the source) merge them all, and a
kept source VM is recognised as the one this migration left by carrying it.
"""
from __future__ import annotations


def snapshot_name(mid: str) -> str:
    return f"quickmig-{mid}"


def ours(vm: dict, mid: str) -> list[dict]:
    """The checkpoints of `vm` that migration `mid` took."""
    return [s for s in vm.get("snapshots", []) if s["name"] == snapshot_name(mid)]
