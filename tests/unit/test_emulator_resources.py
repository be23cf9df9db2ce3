"""What a host offers a VM, and what Start-VM and Save-VM check against it (docs/hyperv-rules.md,
"What a host offers: pre-flight facts" and "VM lifecycle"), in process: the heartbeat of a
guest without the service, processor feature sets and compatibility mode, the key protector
of a virtual TPM, memory and NUMA nodes, devices a saved state cannot hold, and what
describe_vm and host_info report of all that for pre-flight."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.emulator import disk, hostprops
from lab.emulator.errors import OpError
from lab.emulator.hostresources import INVALID_PARAMETER, NOT_COMPATIBLE
from lab.emulator.model import HyperVHost
from lab.emulator.vmcx import hardware_settings

MiB = 1024 * 1024
NEWER = ["sse4_2", "aes", "avx", "avx2", "avx512f", "amx_tile"]  # another generation, same vendor


@pytest.fixture
def make(tmp_path: Path):
    hosts: list[HyperVHost] = []

    def _make(name: str) -> HyperVHost:
        h = HyperVHost(tmp_path, name, f"D:\\VMs\\{name}", heartbeat_delay_s=0.0)
        hosts.append(h)
        return h

    yield _make
    for h in hosts:
        h.shutdown()


def new_vm(h: HyperVHost, name: str = "vm1", **kw) -> dict:
    kw.setdefault("memory_mb", 1)
    kw.setdefault("disk_mb", 1)
    kw.setdefault("write_rate_kbps", 0)
    return h.create_vm(name, **kw)["vm"]


def facts(h: HyperVHost, vm_id: str) -> dict:
    return h.run("describe_vm", {"vm_id": vm_id, "preflight": True})["vm"]["preflight"]


def refused(fqid_prefix: str, *words: str):
    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, e, tb):
            assert et is OpError, f"expected OpError, got {et}"
            assert e.fqid.startswith(fqid_prefix), (e.category, e.fqid, e.message)
            for w in words:
                assert w in e.message, e.message
            return True
    return Ctx()


def test_a_guest_without_the_heartbeat_service_or_with_it_disabled_never_answers(make):
    h = make("hv1")
    ok, silent, off = new_vm(h, "ok"), new_vm(h, "silent", heartbeat=False), new_vm(h, "off", heartbeat_enabled=False)
    assert h.run("wait_heartbeat", {"vm_id": ok["id"], "timeout_s": 1})["heartbeat"] == "OK"
    assert facts(h, ok["id"])["heartbeat"] == {"enabled": True, "status": "OK", "ok": True}
    for vm in (silent, off):
        with refused("HeartbeatTimeout", "No Contact"):
            h.run("wait_heartbeat", {"vm_id": vm["id"], "timeout_s": 0.2})
    assert facts(h, silent["id"])["heartbeat"] == {"enabled": True, "status": "No Contact", "ok": False}
    assert facts(h, off["id"])["heartbeat"] == {"enabled": False, "status": "No Contact", "ok": False}
    # the guest's service comes with its disks, the setting with its configuration
    doc = json.loads(h.paths.local(h.vms[silent["id"]].config_path).read_text())
    assert hardware_settings(doc)["guest_heartbeat"] is False and hardware_settings(doc)["heartbeat_enabled"] is True


def test_a_saved_state_resumes_only_where_the_processor_features_match_unless_compatibility_mode_was_on(make):
    h = make("hv1")
    plain, compat = new_vm(h, "plain"), new_vm(h, "compat", compat_migration=True)
    for vm in (plain, compat):
        h.run("save_vm", {"vm_id": vm["id"]})
    h.set_props({"cpu_features": NEWER})  # the saved states now stand on a newer generation of the same vendor
    with refused("OperationFailed", "processor-specific features", "'hv1'"):
        h.run("start_vm", {"vm_id": plain["id"]})
    assert h.vms[plain["id"]].state == "Saved"
    assert h.paths.local(h.vms[plain["id"]].state_file("vmrs")).is_file()  # the saved state is kept
    assert h.run("start_vm", {"vm_id": compat["id"]})["vm"]["state"] == "Running"
    h.reset_props()  # the generation it was saved on: it resumes
    assert h.run("start_vm", {"vm_id": plain["id"]})["vm"]["state"] == "Running"
    # compatibility mode never crosses vendors
    h.run("save_vm", {"vm_id": compat["id"]})
    h.set_props({"cpu_vendor": "AuthenticAMD"})
    with refused("OperationFailed", "processor-specific features"):
        h.run("start_vm", {"vm_id": compat["id"]})
    # a VM that boots takes what this host offers
    h.run("stop_vm", {"vm_id": compat["id"]})
    assert h.run("start_vm", {"vm_id": compat["id"]})["vm"]["state"] == "Running"


def test_check_system_compatibility_info_tells_beforehand_what_the_restore_would_do(make):
    src, dst = make("hv1"), make("hv2")
    plain, compat = new_vm(src, "plain"), new_vm(src, "compat", compat_migration=True)
    blob, compat_blob = facts(src, plain["id"])["compatibility_info"], facts(src, compat["id"])["compatibility_info"]
    assert facts(src, plain["id"])["compatibility_for_migration"] is False
    assert facts(src, compat["id"])["compatibility_for_migration"] is True
    assert dst.run("host_info", {"compatibility_info": blob})["compatibility"] == \
        {"return_value": 0, "compatible": True, "reasons": []}
    dst.set_props({"cpu_features": NEWER, "cpu_model": "Intel(R) Xeon(R) Platinum 8480+"})
    info = dst.run("host_info", {"compatibility_info": blob})
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["compatibility"]["return_value"] == NOT_COMPATIBLE and not info["compatibility"]["compatible"]
    assert "processor-specific features not supported on physical computer 'hv2'" in info["compatibility"]["reasons"][0]
    assert dst.run("host_info", {"compatibility_info": compat_blob})["compatibility"]["compatible"] is True
    assert dst.run("host_info", {"compatibility_info": "bm90IGEgYmxvYg=="})["compatibility"]["return_value"] == \
        INVALID_PARAMETER  # base64, but of nothing CheckSystemCompatibilityInfo knows
    with refused("FormatException", "FromBase64String"):
        dst.run("host_info", {"compatibility_info": "not a blob"})
    assert "compatibility" not in dst.run("host_info", {})
    with refused("InvalidParameter"):
        dst.run("host_info", {"compatibility_info": 5})


def test_a_vtpm_vm_starts_only_where_a_guardian_of_its_key_protector_is_with_its_private_keys(make):
    src, dst = make("hv1"), make("hv2")
    vm = new_vm(src, "tpm", vtpm=True)
    mine = src.props["guardians"][0]
    f = facts(src, vm["id"])
    assert f["security"] == {"tpm_enabled": True, "shielded": False, "encrypt_state": False}
    assert f["key_protector"] == [{k: mine[k] for k in ("name", "encryption_thumbprint", "signing_thumbprint")}]
    assert facts(src, new_vm(src, "plain")["id"])["key_protector"] == []
    # each host has a guardian of its own: hv2 cannot unwrap hv1's key protector
    theirs = dst.run("host_info", {"guardians": True})["guardians"]
    assert [g["encryption_thumbprint"] for g in theirs] != [mine["encryption_thumbprint"]]
    assert theirs[0]["has_private_signing_key"] is True and "guardians" not in dst.run("host_info", {})
    src.run("save_vm", {"vm_id": vm["id"]})
    src.set_props({"guardians": [hostprops.local_guardian("hv2")]})  # as if the saved VM stood on hv2
    with refused("OperationFailed", "could not be unwrapped"):
        src.run("start_vm", {"vm_id": vm["id"]})
    assert src.vms[vm["id"]].state == "Saved"
    src.set_props({"guardians": [dict(mine, private_keys=False)]})  # the certificates without their keys
    with refused("OperationFailed", "could not be unwrapped"):
        src.run("start_vm", {"vm_id": vm["id"]})
    src.set_props({"guardians": [hostprops.local_guardian("hv2"), mine]})  # imported with the private keys
    assert src.run("start_vm", {"vm_id": vm["id"]})["vm"]["state"] == "Running"
    # a boot needs the key protector unwrapped as well
    src.run("stop_vm", {"vm_id": vm["id"]})
    src.set_props({"guardians": [hostprops.local_guardian("hv2")]})
    with refused("OperationFailed", "could not be unwrapped"):
        src.run("start_vm", {"vm_id": vm["id"]})


def test_start_needs_the_vms_memory_free_and_in_one_numa_node_when_vms_may_not_span_nodes(make):
    h = make("hv1")
    h.set_props({"memory_bytes": 100 * MiB})
    a = new_vm(h, "a", memory_mb=64)
    b = new_vm(h, "b", memory_mb=64, start=False)
    assert h.run("host_info", {})["numa_nodes"] == [{"id": 0, "memory_available_bytes": 36 * MiB}]
    with refused("OutOfMemory", "Not enough memory", "ram size 64 megabytes"):
        h.run("start_vm", {"vm_id": b["id"]})
    h.run("save_vm", {"vm_id": a["id"]})  # a saved VM holds no memory
    assert h.run("start_vm", {"vm_id": b["id"]})["vm"]["state"] == "Running"
    with refused("OutOfMemory"):  # nor does its saved state resume where the memory is gone
        h.run("start_vm", {"vm_id": a["id"]})
    h.run("stop_vm", {"vm_id": b["id"]})
    # two NUMA nodes of 128 MiB: 96 + 96 leave 32 in each, 64 in all
    h.set_props({"memory_bytes": 256 * MiB, "numa_nodes": 2, "numa_spanning": False})
    c, d = new_vm(h, "c", memory_mb=96), new_vm(h, "d", memory_mb=96)
    assert {n["memory_available_bytes"] for n in h.run("host_info", {})["numa_nodes"]} == {32 * MiB}
    assert h.vms[c["id"]].numa_node != h.vms[d["id"]].numa_node
    e = new_vm(h, "e", memory_mb=48, start=False)
    with refused("OutOfMemory"):
        h.run("start_vm", {"vm_id": e["id"]})
    h.set_props({"numa_spanning": True})
    assert h.run("host_info", {})["numa_spanning_enabled"] is True
    assert h.run("start_vm", {"vm_id": e["id"]})["vm"]["state"] == "Running"


@pytest.mark.parametrize("kind, words", [("assignable", "an assigned device"), ("gpu_partition", "a GPU partition"),
                                         ("sriov", "an SR-IOV virtual function")])
def test_a_vm_with_a_device_a_saved_state_cannot_hold_is_never_saved(make, kind, words):
    h = make("hv1")
    vm = new_vm(h, "dev", devices=[kind])
    described = facts(h, vm["id"])["devices"]
    assert [d["kind"] for d in described] == [kind]
    with refused("OperationFailed,Microsoft.HyperV.PowerShell.Commands.SaveVM", words):
        h.run("save_vm", {"vm_id": vm["id"]})
    assert h.vms[vm["id"]].state == "Running"
    with refused("OperationFailed,Microsoft.HyperV.PowerShell.Commands.CheckpointVM", words):
        h.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": "with memory"})
    prod = new_vm(h, "prod", devices=[kind], checkpoint_type="Production")
    assert h.run("checkpoint_vm", {"vm_id": prod["id"], "snapshot_name": "no memory"})["snapshot"]
    assert h.host_shutdown()["saved"] == []  # turned off instead, as its stop action must be
    assert h.vms[vm["id"]].state == "Off"


def test_a_virtual_fibre_channel_adapter_needs_its_virtual_san_where_the_vm_starts(make):
    h = make("hv1")
    vm = new_vm(h, "fc", devices=[{"kind": "fibre_channel", "san": "fabric-a"}])
    assert "fabric-a" in h.props["sans"]  # made with the VM (New-VMSan)
    assert facts(h, vm["id"])["devices"] == [{"kind": "fibre_channel", "san": "fabric-a"}]
    h.run("save_vm", {"vm_id": vm["id"]})
    h.set_props({"sans": []})
    with refused("OperationFailed", "virtual SAN 'fabric-a'"):
        h.run("start_vm", {"vm_id": vm["id"]})


def test_describe_vm_tells_a_clustered_or_replicating_vm_and_a_copy_keeps_its_settings(make):
    h = make("hv1")
    plain_id = new_vm(h, "plain")["id"]
    plain = facts(h, plain_id)
    assert plain["is_clustered"] is False and plain["replication"] is None and plain["devices"] == []
    assert facts(h, new_vm(h, "cl", clustered=True)["id"])["is_clustered"] is True
    assert facts(h, new_vm(h, "rp", replica=True)["id"])["replication"] == {"mode": "Primary", "state": "Replicating"}
    assert "preflight" not in h.run("describe_vm", {"vm_id": plain_id})["vm"]
    with refused("InvalidParameter"):
        h.run("describe_vm", {"name": "plain", "preflight": "yes"})
    tpm = new_vm(h, "tpm", vtpm=True, compat_migration=True, devices=["sriov"])
    doc = json.loads(h.paths.local(h.vms[tpm["id"]].config_path).read_text())
    kept = hardware_settings(doc)
    assert kept["tpm_enabled"] and kept["compat_migration"] and kept["key_protector"] == h.vms[tpm["id"]].key_protector
    assert [d["kind"] for d in kept["devices"]] == ["sriov"]
    saved = h.run("save_vm", {"vm_id": plain_id})["vm"]
    assert disk.read_vmrs(h.paths.local(h.vms[saved["id"]].state_file("vmrs")))["cpu_set"].startswith("GenuineIntel:")


def test_the_lab_refuses_devices_and_settings_a_host_would_not_take(make):
    h = make("hv1")
    for bad in ({"devices": ["usb"]}, {"devices": "sriov"}, {"devices": [{"kind": "fibre_channel"}]},
                {"devices": ["assignable"], "dynamic_memory": True}, {"vtpm": "yes"}, {"heartbeat": 0},
                {"devices": ["sriov"], "switches": []}):
        with refused("InvalidParameter"):
            new_vm(h, "bad", **bad)
    h.set_props({"guardians": []})
    with refused("InvalidParameter", "guardian"):
        new_vm(h, "tpm", vtpm=True)
    assert not h.vms
    for bad in ({"numa_nodes": 0}, {"memory_bytes": -1}, {"numa_spanning": 1}, {"guardians": [{"name": "x"}]},
                {"cpu_features": "avx"}):
        with refused("InvalidParameter"):
            h.set_props(bad)
