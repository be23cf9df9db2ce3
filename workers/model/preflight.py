"""Phase 0 of docs/design.md section 1: what must hold on both hosts before we take a checkpoint.

Each check that fails gives one sentence naming the cause and the fix. They all run while
the VM runs and before anything is changed, so a refusal costs no downtime and leaves
nothing to merge back. The rules read the VM's VMInfo (with its `preflight` facts,
describe_vm) and each host's host_info; docs/hyperv-rules.md ("What a host offers:
pre-flight facts") has the Hyper-V behaviour behind each, with its source.
"""
from __future__ import annotations

from workers.model import network_map

MiB = 1024 * 1024
# CheckSystemCompatibilityInfo (Msvm_VirtualSystemMigrationService): 0 compatible
COMPATIBLE = 0

# Plan for Hyper-V scalability in Windows Server, "Maximums for virtual machines":
# Checkpoints 50. The migration adds at least one of its own.
MAX_CHECKPOINTS = 50

# The leaf keeps growing while we copy and the saved memory lands next to it: ask for
# this much room beyond what the files measure now.
MARGIN_FRACTION = 0.10
MARGIN_MIN_BYTES = 64 * MiB


def saved_memory_bytes(vm: dict) -> int:
    """How much memory Save-VM will write for this VM (VMInfo of the running VM): the memory it
    holds, which with Dynamic Memory is its assigned memory, more or less than its startup
    memory; the larger of the two, as the assignment moves while it runs."""
    return max(int(vm.get("memory_startup_bytes") or 0), int(vm.get("memory_assigned_bytes") or 0))


def room_for_checkpoint(vm: dict) -> bool:
    """Whether Hyper-V takes one more checkpoint of `vm` (VMInfo): a pre-copy round stops at
    the limit, the user's checkpoints and ours counted alike."""
    return len(vm.get("snapshots") or []) < MAX_CHECKPOINTS


def needed_bytes(file_bytes: int, memory_bytes: int) -> int:
    """Room the destination needs: every file, the saved memory, and a margin."""
    raw = file_bytes + memory_bytes
    return raw + max(int(raw * MARGIN_FRACTION), MARGIN_MIN_BYTES)


def problems(vm: dict, src_host: dict, dst_host: dict, *, destination: str, file_bytes: int,
             switches: dict[str, str] | None = None, source: str = "the source") -> list[str]:
    """Every reason this VM cannot move to `destination` (whose host_info is `dst_host`);
    `switches`: where each of its switches lands (workers.model.network_map; default: the
    switch of the same name)."""
    out: list[str] = []
    name = vm["name"]
    if vm.get("checkpoint_type") == "Disabled":
        out.append(f"checkpoints are disabled for {name} (CheckpointType Disabled), and the migration copies "
                   "its disks behind a checkpoint; enable them with Set-VM -CheckpointType Production "
                   "(or Standard) and retry")
    have = len(vm.get("snapshots") or [])
    if have >= MAX_CHECKPOINTS:
        out.append(f"{name} has {have} checkpoints, and Hyper-V allows {MAX_CHECKPOINTS} per VM: the migration "
                   "needs one more of its own; remove one first (Remove-VMSnapshot, which merges it)")
    passthrough = [d["path"] for d in vm["disks"] if d.get("passthrough") or not d.get("chain")]
    if passthrough:
        out.append(f"{name} has pass-through disk(s) {', '.join(passthrough)}, which cannot be checkpointed "
                   "or copied; detach them (Remove-VMHardDiskDrive) or move their data to a virtual disk first")
    version_problem = _version_problem(vm, dst_host, destination, source)
    if version_problem:
        out.append(version_problem)
    landing = switches if switches is not None else {s: s for s in vm.get("switches", [])}
    out += network_map.problems(landing, list(dst_host.get("switches") or []), source=source,
                                destination=destination)
    out += mac_problems(vm, dst_host, destination)
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


def volume_of(folder: str) -> str:
    """The volume a host folder is on, as far as its path tells: its drive (`F:`), or a UNC
    share (`\\\\server\\share`). Folders on one volume share its free space."""
    if len(folder) >= 2 and folder[1] == ":":
        return folder[:2].upper()
    parts = folder.split("\\")
    return "\\".join(parts[:4]).lower()


def volume_room_problem(destination: str, folder: str, free: object, need_files: int) -> str | None:
    """Room on a destination volume other than vm_root's for the files that land there (the
    files and the margin; the saved memory lands beside the configuration, under vm_root)."""
    if not isinstance(free, int) or isinstance(free, bool):
        return None  # a path that is not a drive letter's: the host cannot tell
    need = needed_bytes(need_files, 0)
    if free >= need:
        return None
    return (f"{destination} has {free / MiB:.0f} MiB free on the volume of {folder} but the files that land there "
            f"need {need / MiB:.0f} MiB (and a margin); free space there or place them elsewhere (--storage-map "
            "or --destination-path)")


def _version_number(v: object) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in str(v).split("."))
    except ValueError:
        return None


def _version_problem(vm: dict, dst_host: dict, destination: str, source: str) -> str | None:
    """A host imports a VM only if it supports its configuration version (Get-VMHostSupportedVersion).
    Update-VMVersion raises a VM's version for good; quickmig never does it, the refusal says
    when it is the owner's way out (a VM older than every version the destination runs)."""
    versions = [str(v) for v in dst_host.get("supported_versions") or []]
    have = vm.get("version")
    if have in versions:
        return None
    said = (f"{destination} does not support configuration version {have} of {vm['name']} "
            f"(it supports {', '.join(versions) or 'none'}); ")
    mine, theirs = _version_number(have), [n for n in map(_version_number, versions) if n is not None]
    if mine is not None and theirs and mine < min(theirs):
        return said + (f"upgrade the VM on {source} with Update-VMVersion (the VM off; it cannot be undone, "
                       "so quickmig never does it) if that version is one the destination supports, or choose "
                       "another destination")
    return said + "choose a destination running a newer Windows Server that supports it"


def mac_problems(vm: dict, dst_host: dict, destination: str) -> list[str]:
    """A static MAC address of the VM that a VM of the destination has too: the VM keeps its
    MAC addresses (they are in its configuration), and two VMs with one address cannot both
    run there (docs/hyperv-rules.md, "Network adapters"). The VM itself (same id) does not count."""
    held = {m.get("mac", "").upper(): m for m in dst_host.get("static_macs") or [] if m.get("vm_id") != vm.get("id")}
    out = []
    for a in vm.get("adapters") or []:
        mac = (a.get("static_mac") or "").upper()
        if mac and mac in held:
            other = held[mac]
            out.append(f"{vm['name']}'s network adapter on {a.get('switch') or 'no switch'} has the static MAC "
                       f"address {mac}, which {destination}'s VM {other.get('vm')!r} ({other.get('state')}) has too; "
                       "give one of them another address (Set-VMNetworkAdapter -StaticMacAddress) and retry")
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


def needs_key_protector(vm: dict) -> bool:
    """Whether the VM starts only where its key protector can be unwrapped: a virtual TPM, a
    shielded VM, or encrypted state (VMInfo's `preflight.security`)."""
    sec = (vm.get("preflight") or {}).get("security") or {}
    return bool(sec.get("tpm_enabled") or sec.get("shielded") or sec.get("encrypt_state"))


def fact_problems(vm: dict, src_host: dict, dst_host: dict, *, source: str, destination: str,
                  start: bool = False) -> list[str]:
    """Every reason from the VM's pre-flight facts (heartbeat, processor, key protector, memory,
    cluster, replication, devices) that it cannot, or must not, move to `destination`: each of
    them would otherwise cost a whole copy and downtime before Start-VM or the heartbeat failed
    on the destination, or move what must not move this way."""
    facts = vm.get("preflight")
    if not isinstance(facts, dict):
        return [f"{source} reported no pre-flight facts for {vm['name']} (describe_vm without preflight); "
                "update quickmig's workers so that every one runs the same version, and retry"]
    # a cold move (an Off or Saved VM) waits for no heartbeat; an Off VM boots afresh wherever
    # it starts, and one that is not started there (no --start) needs no memory there yet
    state = vm.get("state", "Running")
    found = _heartbeat(vm["name"], facts, destination) if state == "Running" else []
    if state != "Off":
        found += _processor(vm["name"], facts, src_host, dst_host, source=source, destination=destination)
    found += _key_protector(vm, facts, dst_host, source=source, destination=destination)
    if state == "Running" or start:
        found += _memory(vm, dst_host, destination)
    found += _cluster_and_replication(vm["name"], facts, destination)
    found += _devices(vm["name"], facts, destination)
    return found


def _heartbeat(name: str, facts: dict, destination: str) -> list[str]:
    """The switchover ends when the VM's heartbeat is OK on the destination (wait_heartbeat): a
    heartbeat that never comes costs its whole timeout of downtime, then a rollback."""
    hb = facts.get("heartbeat")
    if not isinstance(hb, dict):
        return [f"{name} has no Heartbeat integration service, and the switchover knows the VM runs on {destination} "
                "only by its heartbeat, so it would wait out its timeout and roll back; add the integration services "
                "to the VM and its guest and retry"]
    if not hb.get("enabled"):
        return [f"the Heartbeat integration service of {name} is disabled, and the switchover ends only when the VM's "
                f"heartbeat comes on {destination}, so it would wait out its timeout and roll back; enable it "
                f"(Enable-VMIntegrationService -VMName {name} -Name Heartbeat) and retry"]
    if not hb.get("ok"):  # PrimaryOperationalStatus, not the status text (which is in the host's language)
        return [f"{name}'s Heartbeat integration service reports {hb.get('status')!r}, not OK: its guest does not run "
                "the Hyper-V Heartbeat Service (vmicheartbeat; on Linux the hv_utils driver) or has not started it, "
                f"and the switchover ends only when the heartbeat comes on {destination}, so it would wait out its "
                "timeout and roll back; install or start the integration services in the guest and retry once its "
                "heartbeat is OK"]
    return []


def _processor(name: str, facts: dict, src_host: dict, dst_host: dict, *, source: str, destination: str) -> list[str]:
    """A saved VM resumes only where the processor features it runs with are offered
    (CheckSystemCompatibilityInfo of its GetSystemCompatibilityInfo blob tells beforehand);
    processor compatibility mode limits them to what every processor of the vendor has. A
    vendor change is refused by `problems` already."""
    if src_host.get("cpu_vendor") != dst_host.get("cpu_vendor"):
        return []
    check = dst_host.get("compatibility")
    if not isinstance(check, dict):
        return [f"{destination} did not check whether {name} can resume there (no CheckSystemCompatibilityInfo "
                "answer); update quickmig's workers so that every one runs the same version, and retry"]
    code = check.get("return_value")
    if code == COMPATIBLE:
        return []
    models = f"{source} has {src_host.get('cpu_model')!r}, {destination} {dst_host.get('cpu_model')!r}"
    if code != 32784:  # Not compatible; anything else: the check itself did not work
        return [f"{destination} could not tell whether {name} can resume there (CheckSystemCompatibilityInfo "
                f"returned {code}; {models}); look into the Hyper-V Virtual Machine Management service on "
                f"{destination}, or choose another destination"]
    why = "; ".join(str(r) for r in check.get("reasons") or []) or "not compatible"
    if facts.get("compatibility_for_migration"):
        return [f"{destination} cannot resume {name} as it runs on {source}, even in processor compatibility mode "
                f"({models}; CheckSystemCompatibilityInfo: {why}); choose another destination"]
    return [f"{destination} cannot resume {name} as it runs on {source}, because their processors differ ({models}; "
            f"CheckSystemCompatibilityInfo: {why}), and Start-VM would fail there after the downtime; shut {name} "
            f"down, enable processor compatibility mode (Set-VMProcessor -VMName {name} "
            "-CompatibilityForMigrationEnabled $true, settable only while it is off), start it and retry, or choose "
            "a destination with the same processors"]


def _key_protector(vm: dict, facts: dict, dst_host: dict, *, source: str, destination: str) -> list[str]:
    """A VM with a virtual TPM (or shielded, or with encrypted state) starts only where one of
    its key protector's guardians is there with its private keys."""
    if not needs_key_protector(vm):
        return []
    kp = [g for g in facts.get("key_protector") or [] if isinstance(g, dict)]
    have = {g.get("encryption_thumbprint") for g in dst_host.get("guardians") or []
            if isinstance(g, dict) and g.get("has_private_signing_key")}
    if any(g.get("encryption_thumbprint") in have for g in kp):
        return []
    names = ", ".join(f"{g.get('name')} ({g.get('encryption_thumbprint')})" for g in kp) or "none"
    return [f"{vm['name']} has a virtual TPM (or shielded or encrypted state) whose key protector {destination} "
            f"cannot unwrap: none of its guardians, {names}, is on {destination} with its private keys, so Start-VM "
            "would fail there after the downtime with 'the key protector could not be unwrapped'; import that "
            f"guardian's certificates with their private keys from {source}'s 'Shielded VM Local Certificates' "
            f"store into {destination}'s (Export-PfxCertificate, Import-PfxCertificate), or give a guardian of "
            f"{destination} access to the key protector (Grant-HgsKeyProtectorAccess, then Set-VMKeyProtector), "
            "and retry"]


def _memory(vm: dict, dst_host: dict, destination: str) -> list[str]:
    """Start-VM needs the memory the VM resumes with free on the destination: in one NUMA node
    where VMs may not span them."""
    nodes = [int(n.get("memory_available_bytes") or 0) for n in dst_host.get("numa_nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return []
    need = saved_memory_bytes(vm)
    if dst_host.get("numa_spanning_enabled", True):
        if sum(nodes) >= need:
            return []
        return [f"{destination} has {sum(nodes) / MiB:.0f} MiB of memory available for VMs but {vm['name']} needs "
                f"{need / MiB:.0f} MiB to resume there (the memory it runs with), so Start-VM would fail after the "
                "downtime; free memory there (stop or move other VMs) or choose another destination"]
    if max(nodes) >= need:
        return []
    return [f"{destination} lets no VM span NUMA nodes (NUMA spanning is off) and its largest NUMA node has "
            f"{max(nodes) / MiB:.0f} MiB available but {vm['name']} needs {need / MiB:.0f} MiB to resume there, so "
            "Start-VM would fail after the downtime; free memory in one node there, allow spanning (Set-VMHost "
            "-NumaSpanningEnabled $true), or choose another destination"]


def _cluster_and_replication(name: str, facts: dict, destination: str) -> list[str]:
    """What another system owns: a failover cluster's role, a Hyper-V Replica relationship.
    Moved behind their backs, the cluster keeps a role whose VM is gone and the replication
    is broken."""
    out = []
    if facts.get("is_clustered"):
        out.append(f"{name} is a clustered role of a failover cluster (IsClustered), and a move outside the cluster "
                   f"would leave its cluster role behind; move it within the cluster (Move-ClusterVirtualMachineRole), "
                   f"or take it out of the cluster first (Remove-ClusterGroup -RemoveResources) to move it to "
                   f"{destination}")
    rep = facts.get("replication")
    if isinstance(rep, dict) and rep.get("mode") not in (None, "", "None"):
        out.append(f"{name} is enabled for Hyper-V Replica ({rep.get('mode')}, {rep.get('state')}), and a move would "
                   f"leave its replication behind; remove replication first (Remove-VMReplication -VMName {name}) "
                   f"and enable it again from {destination} afterwards (Enable-VMReplication)")
    return out


def _devices(name: str, facts: dict, destination: str) -> list[str]:
    """Devices that do not move with the VM's files: a saved state cannot hold an assigned
    device, a GPU partition or an SR-IOV virtual function (Save-VM fails), and a virtual Fibre
    Channel adapter's LUNs stay on the SAN."""
    devices = [d for d in facts.get("devices") or [] if isinstance(d, dict)]
    out = []
    dda = [d for d in devices if d.get("kind") == "assignable"]
    if dda:
        where = ", ".join(str(d.get("location_path") or d.get("name")) for d in dda)
        out.append(f"{name} has an assigned device ({where}; Discrete Device Assignment), which cannot be saved with "
                   f"the VM nor move to another host; remove it for the move (Remove-VMAssignableDevice) and assign "
                   f"one on {destination} afterwards (Add-VMAssignableDevice)")
    gpu = [d for d in devices if d.get("kind") == "gpu_partition"]
    if gpu:
        out.append(f"{name} has a GPU partition ({len(gpu)} adapter(s)), which a saved state cannot hold; remove it "
                   f"for the move (Remove-VMGpuPartitionAdapter) and add one on {destination} afterwards "
                   "(Add-VMGpuPartitionAdapter)")
    for d in devices:
        if d.get("kind") == "sriov":
            out.append(f"{name}'s network adapter {d.get('adapter')!r} uses an SR-IOV virtual function (IovWeight "
                       f"{d.get('iov_weight')}), which a saved state cannot hold; turn it off for the move "
                       f"(Set-VMNetworkAdapter -VMName {name} -Name {d.get('adapter')!r} -IovWeight 0: the adapter "
                       "then uses the virtual switch) and back on afterwards")
    for d in devices:
        if d.get("kind") == "fibre_channel":
            out.append(f"{name} has a virtual Fibre Channel adapter on virtual SAN {d.get('san')!r}, whose LUNs are "
                       "on the SAN, not among the files quickmig copies; detach it for the move "
                       f"(Remove-VMFibreChannelHba) and connect the VM to its LUNs from {destination} afterwards, or "
                       "move it by live migration between hosts on the same SAN")
    return out
