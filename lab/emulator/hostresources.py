"""What a host has for running VMs, and what Start-VM and Save-VM check against it
(docs/hyperv-rules.md, "What a host offers: pre-flight facts" and "VM lifecycle"):

- Memory for VMs, in NUMA nodes (Get-VMHostNumaNode). Start-VM needs the memory the VM
  runs with (a saved VM: the memory its saved state holds) free: in the host as a whole
  where VMs may span NUMA nodes, in one node where they may not (Set-VMHost
  -NumaSpanningEnabled $false). A running VM holds its memory until it stops or is saved.
- The processor: a VM runs with the features its host offered when it started, or with the
  limited set of processor compatibility mode (Set-VMProcessor
  -CompatibilityForMigrationEnabled). A saved state resumes only on a host that offers the
  same set: Microsoft's "Processor compatibility mode in Hyper-V" says the save/restore
  pre-flight compares the feature sets and cancels the restore "if these feature sets don't
  match" (harsher reading: equal sets, a newer generation with more features is refused too).
  GetSystemCompatibilityInfo (a VM's blob, on its host) and CheckSystemCompatibilityInfo (on
  another host) tell beforehand; the blob is opaque, the emulator's carries the vendor and
  the feature set.
- The guardians whose certificates the host holds (Get-HgsGuardian): a VM with a virtual TPM
  starts only where one of its key protector's guardians is there with its private keys,
  else "the key protector could not be unwrapped" (Microsoft's support article on vTPM,
  shielded VM and HGS issues).
- Virtual SANs: a virtual Fibre Channel adapter gets an NPIV port on its virtual SAN each
  time the VM starts (Microsoft's "Hyper-V Virtual Fibre Channel"): without a virtual SAN of
  that name the start fails.
- A device whose state a saved state cannot hold: Discrete Device Assignment documents that
  a VM with an assigned device cannot be saved and restored; a GPU partition and an SR-IOV
  virtual function are the same kind of passed-through PCIe function (harsher reading: not
  saved either). Save-VM and a checkpoint that keeps memory refuse such a VM.

Simplifications (documented gaps): a VM's memory is its startup (or assigned) memory, with
no per-VM overhead; a VM that may span NUMA nodes takes its memory from the nodes with most
free; NUMA placement is not persisted across an emulator restart beyond the node recorded.
"""
from __future__ import annotations

import base64
import json

from lab.emulator.errors import OpError, fqid
from lab.emulator.registry import Registry
from lab.emulator.vm import UNSAVABLE_DEVICES, VM, MiB

COMPATIBILITY_SET = "compatibility"  # the limited feature set of processor compatibility mode

# CheckSystemCompatibilityInfo's return values (Msvm_VirtualSystemMigrationService)
COMPATIBLE = 0
INVALID_PARAMETER = 32773
NOT_COMPATIBLE = 32784

_DEVICE_WORDS = {"assignable": "an assigned device", "gpu_partition": "a GPU partition",
                 "sriov": "an SR-IOV virtual function"}


def offered_sets(props: dict) -> tuple[str, str]:
    """The processor feature sets a host offers a VM: its own, and compatibility mode's."""
    vendor = props["cpu_vendor"]
    return f"{vendor}:{','.join(sorted(props['cpu_features']))}", f"{vendor}:{COMPATIBILITY_SET}"


def start_set(props: dict, vm: VM) -> str:
    """The feature set a VM that boots on this host runs with."""
    return offered_sets(props)[1 if vm.compat_migration else 0]


def numa_available(reg: Registry) -> list[int]:
    """Memory available for VMs in each NUMA node (Get-VMHostNumaNode's MemoryAvailable)."""
    props = reg.props
    nodes = int(props["numa_nodes"])
    free = [int(props["memory_bytes"]) // nodes] * nodes
    for vm in list(reg.vms.values()):
        if vm.state != "Running":
            continue
        need = vm.running_memory_bytes
        if vm.numa_node is not None and 0 <= vm.numa_node < nodes:
            free[vm.numa_node] -= need
            continue
        while need > 0:  # spread over the nodes with most free
            i = max(range(nodes), key=lambda k: free[k])
            take = min(need, max(free[i], 0)) or need
            free[i] -= take
            need -= take
    return [max(f, 0) for f in free]


def compatibility_info(props: dict, vm: VM) -> str:
    """GetSystemCompatibilityInfo of a running VM: an opaque blob (base64 here, as the scripts
    send its bytes)."""
    doc = {"vm": vm.id, "vendor": props["cpu_vendor"], "cpu_set": vm.cpu_set or start_set(props, vm)}
    return base64.b64encode(json.dumps(doc, sort_keys=True).encode()).decode("ascii")


def check_compatibility_info(props: dict, host: str, blob: bytes) -> dict:
    """CheckSystemCompatibilityInfo on this host: its return value and the reasons (Msvm_Error
    messages) when the VM could not be restored here."""
    try:
        doc = json.loads(blob)
        cpu_set = doc["cpu_set"]
    except (ValueError, TypeError, KeyError):
        return {"return_value": INVALID_PARAMETER, "compatible": False, "reasons": []}
    if cpu_set in offered_sets(props):
        return {"return_value": COMPATIBLE, "compatible": True, "reasons": []}
    # an Msvm_Error's Message (the wsman layer words it in the host's language)
    reason = (f"The virtual machine is using processor-specific features not supported on physical computer "
              f"'{host}'. To allow for migration of this virtual machine to physical computers with different "
              "processors, modify the virtual machine settings to limit the processor features used by the "
              "virtual machine.")
    return {"return_value": NOT_COMPATIBLE, "compatible": False, "reasons": [reason]}


class HostResources:
    """The checks of Start-VM and Save-VM against what this host has."""

    def __init__(self, registry: Registry):
        self.reg = registry

    def check_start(self, vm: VM, saved_cpu_set: str | None) -> int | None:
        """Before Start-VM runs the VM (the caller holds vm.op_lock): OpError if this host cannot
        run it; the NUMA node it goes to when VMs may not span nodes. `saved_cpu_set`: the
        feature set in the saved state it resumes from (None for a boot)."""
        props = self.reg.props
        with self.reg.lock:
            node = self._memory(vm, props)
        self._key_protector(vm, props)
        if saved_cpu_set is not None and saved_cpu_set not in offered_sets(props):
            raise OpError(f"'{vm.name}' failed to restore. The virtual machine '{vm.name}' is using processor-specific "
                          f"features not supported on physical computer '{self.reg.name}'. To allow for migration of "
                          "this virtual machine to physical computers with different processors, modify the virtual "
                          f"machine settings to limit the processor features used by the virtual machine. (Virtual "
                          f"machine ID {vm.id})", "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)
        for d in vm.devices:
            if d.get("kind") == "fibre_channel" and d.get("san") not in props["sans"]:
                raise OpError(f"'{vm.name}' failed to start. Synthetic Fibre Channel Port: the virtual SAN "
                              f"'{d.get('san')}' does not exist on this host. (Virtual machine ID {vm.id})",
                              "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)
        return node

    def _memory(self, vm: VM, props: dict) -> int | None:
        need = vm.running_memory_bytes
        free = numa_available(self.reg)
        if props["numa_spanning"]:
            if sum(free) >= need:
                return None
        else:
            fits = [i for i, f in enumerate(free) if f >= need]
            if fits:
                return fits[0]
        raise OpError(f"'{vm.name}' could not initialize. Not enough memory in the system to start the virtual "
                      f"machine {vm.name} with ram size {need // MiB} megabytes. (Virtual machine ID {vm.id})",
                      "ResourceUnavailable", fqid("OutOfMemory", "StartVM"), vm.name)

    def _key_protector(self, vm: VM, props: dict) -> None:
        if not vm.tpm_enabled:
            return
        wanted = {g.get("encryption_thumbprint") for g in vm.key_protector}
        if any(g["private_keys"] and g["encryption_thumbprint"] in wanted for g in props["guardians"]):
            return
        raise OpError(f"'{vm.name}' failed to start. The key protector for the virtual machine '{vm.name}' could not "
                      "be unwrapped. HostGuardianService returned: One or more arguments are invalid (0x80070057). "
                      f"Details are included in the HostGuardianService-Client event log. (Virtual machine ID {vm.id})",
                      "NotSpecified", fqid("OperationFailed", "StartVM"), vm.name)

    @staticmethod
    def check_save(vm: VM, cmdlet: str = "SaveVM") -> None:
        """Save-VM, or a checkpoint that keeps the VM's memory: refused while the VM has a device
        whose state a saved state cannot hold."""
        for d in vm.devices:
            if d.get("kind") in UNSAVABLE_DEVICES:
                raise OpError(f"'{vm.name}' failed to save. The virtual machine cannot be saved while it has "
                              f"{_DEVICE_WORDS[d['kind']]}. (Virtual machine ID {vm.id})", "InvalidOperation",
                              fqid("OperationFailed", cmdlet), vm.name)
