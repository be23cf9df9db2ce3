"""What the shipped describe_vm reports about a VM for pre-flight (`preflight: true`, its
include vmfacts.ps1), as a real host's cmdlets would show it (docs/hyperv-operations.md,
"VMInfo"; docs/hyperv-rules.md, "What a host offers: pre-flight facts"):

- the Heartbeat integration service (Get-VMIntegrationService): enabled, and its status;
- processor compatibility mode (Get-VMProcessor's CompatibilityForMigrationEnabled) and the
  VM's GetSystemCompatibilityInfo blob, which the destination's host_info checks;
- its security settings (Get-VMSecurity) and, with a virtual TPM, the guardians of its key
  protector (Get-VMKeyProtector, ConvertTo-HgsKeyProtector);
- whether it is a clustered role (Get-VM's IsClustered) and whether it replicates
  (Get-VMReplication);
- its devices that do not move: assigned devices (Get-VMAssignableDevice), GPU partitions
  (Get-VMGpuPartitionAdapter), network adapters with an IovWeight (Get-VMNetworkAdapter),
  virtual Fibre Channel adapters (Get-VMFibreChannelHba).

Not modelled: shielded VMs and encrypted state without a virtual TPM (always false here).
"""
from __future__ import annotations

from lab.emulator.hostresources import compatibility_info
from lab.emulator.lifecycle import VMLifecycle
from lab.emulator.vm import VM


def _device(d: dict) -> dict:
    kind = d.get("kind")
    if kind == "assignable":
        return {"kind": kind, "name": str(d.get("instance_path", "")), "location_path": str(d.get("location_path", ""))}
    if kind == "gpu_partition":
        return {"kind": kind, "id": str(d.get("adapter_id", ""))}
    if kind == "sriov":
        return {"kind": kind, "adapter": str(d.get("adapter", "")), "switch": str(d.get("switch", "")),
                "iov_weight": int(d.get("iov_weight", 0))}
    return {"kind": "fibre_channel", "san": str(d.get("san", ""))}


def preflight_facts(vm: VM, props: dict) -> dict:
    status = VMLifecycle.heartbeat_status(vm) if vm.state == "Running" else "No Contact"
    return {
        "heartbeat": {"enabled": vm.heartbeat_enabled, "status": status, "ok": status == "OK"},
        "compatibility_for_migration": vm.compat_migration,
        "compatibility_info": compatibility_info(props, vm),
        "security": {"tpm_enabled": vm.tpm_enabled, "shielded": False, "encrypt_state": False},
        "key_protector": [{k: str(g.get(k, "")) for k in ("name", "encryption_thumbprint", "signing_thumbprint")}
                          for g in vm.key_protector] if vm.tpm_enabled else [],
        "is_clustered": vm.is_clustered,
        "replication": None if vm.replication_mode == "None" else {"mode": vm.replication_mode,
                                                                   "state": "Replicating"},
        "devices": [_device(d) for d in vm.devices],
    }
