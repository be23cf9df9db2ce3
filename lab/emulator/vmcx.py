"""The VM configuration file (.vmcx): everything needed to register the VM elsewhere.

Real .vmcx files are binary; the emulator writes a JSON document in their place (format
`VMCX_FORMAT`). A VM's own configuration (a system definition, what Compare-VM and Import-VM
take) is `<ID>.vmcx` in its Virtual Machines folder; a checkpoint's (a snapshot definition) is
`Snapshots\\<SID>.vmcx`, the same document with `snapshot` set and the frozen disks as its
disks. The VM's document lists its checkpoints (each with every file it has) and carries
its checkpoint file location and Smart Paging folder as paths of the host that wrote it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lab.emulator.errors import OpError, fqid
from lab.emulator.hostpaths import HostPaths, is_guid
from lab.emulator.vm import DEFAULT_START_ACTION, START_ACTIONS, VM

VMCX_FORMAT = "quickmig-emulator-vmcx/1"


def vmcx_doc(vm: VM, vm_root: str, snapshot: dict | None = None) -> dict:
    """The configuration document (.vmcx): everything needed to register the VM elsewhere."""
    return {
        "format": VMCX_FORMAT, "id": vm.id, "name": vm.name, "state": vm.state,
        "generation": vm.generation, "version": vm.version,
        "memory_startup_bytes": vm.memory_startup_bytes, "checkpoint_type": vm.checkpoint_type,
        "switches": list(vm.switches), "nics": [dict(n) for n in vm.nics], "cpu_vendor": vm.cpu_vendor,
        "vm_root": vm_root, "path": vm.path,
        "snapshot_location": vm.snapshot_location, "smart_paging_path": vm.smart_paging_path,
        "disks": [dict(d) for d in vm.disks], "isos": list(vm.isos),
        "snapshots": [] if snapshot else [dict(s) for s in vm.snapshots],
        "snapshot": snapshot,
        "guest": {"write_rate_kbps": vm.write_rate_kbps, "heartbeat": vm.guest_heartbeat},
        "automatic_start_action": vm.automatic_start_action, "dynamic_memory_enabled": vm.dynamic_memory_enabled,
        "memory_maximum_bytes": vm.memory_maximum_bytes, "memory_assigned_bytes": vm.memory_assigned_bytes,
        "heartbeat_enabled": vm.heartbeat_enabled, "compat_migration": vm.compat_migration,
        "tpm_enabled": vm.tpm_enabled, "key_protector": [dict(g) for g in vm.key_protector],
        "devices": [dict(d) for d in vm.devices],
    }


def lifecycle_settings(doc: dict) -> dict:
    """The automatic start action and memory settings a configuration carries, as VM fields
    (a registered copy keeps them, as Import-VM keeps every setting of the configuration)."""
    action = doc.get("automatic_start_action")

    def size(key: str) -> int:
        v = doc.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
    return {"automatic_start_action": action if action in START_ACTIONS else DEFAULT_START_ACTION,
            "dynamic_memory_enabled": doc.get("dynamic_memory_enabled") is True,
            "memory_maximum_bytes": size("memory_maximum_bytes"),
            "memory_assigned_bytes": size("memory_assigned_bytes")}


def hardware_settings(doc: dict) -> dict:
    """What a configuration says of the VM's integration services, processor, virtual TPM and
    devices, as VM fields (a registered copy keeps them; the guest's Heartbeat service comes
    with its disks). Whether it is clustered or replicates is its old host's business, not the
    configuration's (not modelled: a registered copy is neither)."""
    guest = doc.get("guest") if isinstance(doc.get("guest"), dict) else {}
    kp = doc.get("key_protector")
    devices = doc.get("devices")
    nics = doc.get("nics")
    return {"nics": [dict(n) for n in nics if isinstance(n, dict)] if isinstance(nics, list) else [],
            "heartbeat_enabled": doc.get("heartbeat_enabled") is not False,
            "guest_heartbeat": guest.get("heartbeat") is not False,
            "compat_migration": doc.get("compat_migration") is True,
            "tpm_enabled": doc.get("tpm_enabled") is True,
            "key_protector": [dict(g) for g in kp if isinstance(g, dict)] if isinstance(kp, list) else [],
            "devices": [dict(d) for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []}


def write_vmcx(paths: HostPaths, vm: VM) -> None:
    path = paths.local(vm.config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(vmcx_doc(vm, paths.vm_root), indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _well_formed(doc: object) -> bool:
    return (isinstance(doc, dict) and doc.get("format") == VMCX_FORMAT and is_guid(doc.get("id"))
            and isinstance(doc.get("name"), str) and isinstance(doc.get("disks"), list)
            and isinstance(doc.get("isos", []), list) and isinstance(doc.get("snapshots", []), list)
            and isinstance(doc.get("switches", []), list) and isinstance(doc.get("path"), str)
            and isinstance(doc.get("snapshot_location", ""), str) and isinstance(doc.get("smart_paging_path", ""), str)
            and all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in doc["disks"])
            and all(isinstance(x, str) for x in doc.get("isos", []) + doc.get("switches", [])))


def is_checkpoint_definition(doc: dict) -> bool:
    """A checkpoint's configuration (Snapshots\\<SID>.vmcx), not a VM's."""
    return doc.get("snapshot") is not None


def read_config(paths: HostPaths, config_path: object, cmdlet: str) -> tuple[dict, Path]:
    """A configuration file as Compare-VM and Import-VM read it; OpError if it is missing or not one."""
    local = paths.local(config_path, cmdlet)
    try:
        doc = json.loads(local.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OpError(f"The virtual machine configuration file '{config_path}' was not found.",
                      "InvalidArgument", fqid("ConfigNotFound", cmdlet), str(config_path)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, IsADirectoryError):
        raise OpError(f"The file '{config_path}' is not a valid virtual machine configuration.",
                      "InvalidData", fqid("InvalidConfiguration", cmdlet), str(config_path)) from None
    if not _well_formed(doc):
        raise OpError(f"The file '{config_path}' is not a valid virtual machine configuration.",
                      "InvalidData", fqid("InvalidConfiguration", cmdlet), str(config_path))
    return doc, local
