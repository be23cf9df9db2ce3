"""Phase 0 of docs/design.md section 1: what must hold on both hosts before we take a checkpoint.

Each check that fails gives one sentence naming the cause and the fix. They all run while
the VM runs and before anything is changed, so a refusal costs no downtime and leaves
nothing to merge back.
"""
from __future__ import annotations

MiB = 1024 * 1024

# The leaf keeps growing while we copy and the saved memory lands next to it: ask for
# this much room beyond what the files measure now.
MARGIN_FRACTION = 0.10
MARGIN_MIN_BYTES = 64 * MiB


def saved_memory_bytes(vm: dict) -> int:
    """How much memory Save-VM will write for this VM (VMInfo of the running VM): the memory it
    holds, which with Dynamic Memory is its assigned memory, more or less than its startup
    memory; the larger of the two, as the assignment moves while it runs."""
    return max(int(vm.get("memory_startup_bytes") or 0), int(vm.get("memory_assigned_bytes") or 0))


def needed_bytes(file_bytes: int, memory_bytes: int) -> int:
    """Room the destination needs: every file, the saved memory, and a margin."""
    raw = file_bytes + memory_bytes
    return raw + max(int(raw * MARGIN_FRACTION), MARGIN_MIN_BYTES)


def problems(vm: dict, src_host: dict, dst_host: dict, *, destination: str, file_bytes: int) -> list[str]:
    """Every reason this VM cannot move to `destination` (whose host_info is `dst_host`)."""
    out: list[str] = []
    name = vm["name"]
    if vm.get("checkpoint_type") == "Disabled":
        out.append(f"checkpoints are disabled for {name} (CheckpointType Disabled), and the migration copies "
                   "its disks behind a checkpoint; enable them with Set-VM -CheckpointType Production "
                   "(or Standard) and retry")
    passthrough = [d["path"] for d in vm["disks"] if d.get("passthrough") or not d.get("chain")]
    if passthrough:
        out.append(f"{name} has pass-through disk(s) {', '.join(passthrough)}, which cannot be checkpointed "
                   "or copied; detach them (Remove-VMHardDiskDrive) or move their data to a virtual disk first")
    versions = dst_host.get("supported_versions") or []
    if vm.get("version") not in versions:
        out.append(f"{destination} does not support configuration version {vm.get('version')} of {name} "
                   f"(it supports {', '.join(versions) or 'none'}); choose a destination running a newer "
                   "Windows Server, or migrate to a host that supports it")
    missing = [s for s in vm.get("switches", []) if s not in (dst_host.get("switches") or [])]
    if missing:
        out.append(f"{destination} has no virtual switch named {', '.join(repr(s) for s in missing)}; "
                   "create it there (New-VMSwitch) with the same name, or connect the VM to a switch both hosts have")
    sv, dv = src_host.get("cpu_vendor"), dst_host.get("cpu_vendor")
    if sv != dv:
        out.append(f"the source's processors are {sv} and {destination}'s are {dv}; a saved VM cannot resume "
                   "across processor vendors: choose a destination with the same vendor")
    need = needed_bytes(file_bytes, saved_memory_bytes(vm))
    free = dst_host.get("vm_root_free_bytes")
    if free is None:
        free = dst_host.get("free_bytes")
    if free is not None and free < need:
        out.append(f"{destination} has {free / MiB:.0f} MiB free where the VM goes but needs {need / MiB:.0f} MiB "
                   "(disks, saved memory and a margin); free space there or choose another destination")
    return out


def same_id_problem(vm: dict, destination: str, there: dict | None) -> str | None:
    """The destination already has a VM with this VM's id (`there`: its list_vms entry).
    Import-VM -Register keeps the id and each VM on a host must have its own, so the
    switchover could never register the VM there; a Hyper-V Replica replica keeps its
    primary's id, so this is what a replica of the VM on the destination looks like. That
    VM is someone else's: it is refused here, before the checkpoint, and never touched."""
    if there is None:
        return None
    return (f"{destination} already has a VM with the id of {vm['name']} ({vm['id']}): {there.get('name')!r}, "
            f"{there.get('state')} (a Hyper-V Replica replica keeps its primary's id); Import-VM -Register keeps "
            "the id, so the VM could not be registered there. Remove replication and that VM on "
            f"{destination} if it is no longer needed (Remove-VMReplication, Remove-VM), or choose another "
            "destination")
