"""Pre-flight gaps that each cost a full downtime and a rollback, or worse (Hyper-V fidelity
issue, item 10): what the destination cannot run, or what must not move this way, is refused
before the checkpoint with its cause and its fix, while the VM runs on; or handled, where
the fix is on the hosts (the guardian's certificates, processor compatibility mode).

Without these checks the migration copies everything, saves the VM and then fails at Start-VM
on the destination (memory, processor features, key protector, virtual SAN), at Save-VM (a
device a saved state cannot hold), or waits out the heartbeat timeout (a guest without the
Heartbeat service), and rolls back; a clustered or replicating VM moves and leaves its
cluster role or its replication behind."""
import pytest

from tests.integration.test_migration import migrate, migrate_refused
from tests.integration.test_preflight import assert_untouched_on_source

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
NEWER = ["sse4_2", "aes", "avx", "avx2", "avx512f", "amx_tile"]


def refused(lab, name: str, *says: str, src: str = "hv1", dst: str = "hv3") -> dict:
    rec = migrate_refused(lab, name, src, dst)
    assert rec["error"].startswith("snapshot: pre-flight refused: "), rec["error"]
    for words in says:
        assert words in rec["error"], rec["error"]
    assert_untouched_on_source(lab, name, rec)
    return rec


def set_host(lab, host: str, *args: str) -> dict:
    res, props = lab.cli_json("lab", "set-host", host, *args, "--json")
    assert res.returncode == 0, res.stderr
    return props


def completes(lab, name: str, src: str = "hv1", dst: str = "hv3") -> dict:
    res, rec = migrate(lab, name, src, dst)
    assert rec["state"] == "completed", rec["error"]
    check = lab.verify(name)
    assert check["running_on"] == [dst] and check["integrity"] == "ok", check
    return rec


@pytest.mark.parametrize("case, vm_opts, says", [
    ("no-service", {"heartbeat": False}, ["Heartbeat integration service reports", "not OK",
                                          "Hyper-V Heartbeat Service (vmicheartbeat;"]),
    ("disabled", {"heartbeat_enabled": False}, ["Heartbeat integration service of", "is disabled",
                                                "Enable-VMIntegrationService -VMName pf-hb-disabled -Name Heartbeat"]),
])
def test_a_vm_whose_heartbeat_never_comes_is_refused_before_the_checkpoint(lab, case, vm_opts, says):
    """Without this the switchover saves the VM, imports and starts it on the destination, and
    then waits out the heartbeat timeout (120 s of downtime) before it rolls back."""
    name = f"pf-hb-{case}"
    lab.add_vm(name, "hv1", write_rate_kbps=64, **vm_opts)
    refused(lab, name, *says)


def test_another_processor_generation_is_refused_unless_the_vm_runs_in_compatibility_mode(lab):
    """Same vendor, another feature set: a saved VM resumes only where the features match, so
    Start-VM on the destination fails after the whole downtime. In processor compatibility
    mode it moves."""
    lab.add_vm("pf-gen", "hv1", write_rate_kbps=64)
    lab.add_vm("pf-gen-compat", "hv1", write_rate_kbps=64, compat_migration=True)
    props = set_host(lab, "hv3", "--cpu-features", ",".join(NEWER), "--cpu-model", "Intel(R) Xeon(R) Platinum 8480+")
    assert props["cpu_features"] == NEWER
    try:
        refused(lab, "pf-gen", "Intel(R) Xeon(R) Platinum 8480+", "Intel(R) Xeon(R) Gold 6230",
                "processor-specific features not supported on physical computer 'hv3'",
                "Set-VMProcessor -VMName pf-gen -CompatibilityForMigrationEnabled $true", "only while it is off")
        completes(lab, "pf-gen-compat")
    finally:
        set_host(lab, "hv3", "--reset")


def test_a_vtpm_vm_moves_only_where_its_key_protector_can_be_unwrapped(lab):
    """Start-VM of a vTPM VM on a host without its guardian's keys fails with "the key protector
    could not be unwrapped", after the downtime. With the guardian's certificates imported
    there, it moves."""
    lab.add_vm("pf-vtpm", "hv1", write_rate_kbps=64, vtpm=True)
    try:
        refused(lab, "pf-vtpm", "virtual TPM", "could not be unwrapped", "UntrustedGuardian",
                "Shielded VM Local Certificates", "Grant-HgsKeyProtectorAccess")
        theirs = set_host(lab, "hv3", "--import-guardians-from", "hv1")["guardians"]
        assert [g["name"] for g in theirs] == ["UntrustedGuardian", "UntrustedGuardian"]  # hv3's own, and hv1's
        completes(lab, "pf-vtpm")
    finally:
        lab.emulator("hv3").reset_host()


@pytest.mark.parametrize("case, host_props, memory_mb, says", [
    ("total", {"memory_bytes": 8 * MiB}, 16, ["8 MiB of memory available for VMs", "needs 16 MiB",
                                              "free memory there"]),
    ("numa", {"memory_bytes": 64 * MiB, "numa_nodes": 2, "numa_spanning": False}, 48,
     ["NUMA spanning is off", "largest NUMA node", "needs 48 MiB", "Set-VMHost -NumaSpanningEnabled $true"]),
])
def test_a_destination_without_the_memory_to_run_the_vm_is_refused(lab, case, host_props, memory_mb, says):
    """Start-VM fails where the VM's memory is not free (in one NUMA node when VMs may not span
    nodes): after the downtime."""
    name = f"pf-mem-{case}"
    lab.add_vm(name, "hv1", write_rate_kbps=64, memory_mb=memory_mb)
    dst = lab.emulator("hv3")
    # what the VMs running there hold is not free either
    running = sum(v["memory_assigned_bytes"] for v in dst.state()["vms"])
    dst.set_host(**{**host_props, "memory_bytes": host_props["memory_bytes"] + running})
    try:
        refused(lab, name, *says)
    finally:
        dst.reset_host()


def test_a_clustered_vm_is_refused_and_left_to_its_cluster(lab):
    """Moved by quickmig, a clustered role would leave its cluster behind its back."""
    lab.add_vm("pf-clustered", "hv1", write_rate_kbps=64, clustered=True)
    refused(lab, "pf-clustered", "clustered role of a failover cluster", "Move-ClusterVirtualMachineRole",
            "Remove-ClusterGroup")


def test_a_replicating_vm_is_refused_until_its_replication_is_removed(lab):
    """Moved by quickmig, a Hyper-V Replica primary would leave its replication behind."""
    lab.add_vm("pf-replica", "hv1", write_rate_kbps=64, replica=True)
    refused(lab, "pf-replica", "Hyper-V Replica (Primary, Replicating)", "Remove-VMReplication -VMName pf-replica")


@pytest.mark.parametrize("case, device, says", [
    ("dda", "assignable", ["assigned device", "Discrete Device Assignment", "Remove-VMAssignableDevice"]),
    ("gpu", "gpu_partition", ["GPU partition", "Remove-VMGpuPartitionAdapter"]),
    ("sriov", "sriov", ["SR-IOV virtual function", "IovWeight 100", "Set-VMNetworkAdapter -VMName pf-dev-sriov",
                        "-IovWeight 0"]),
    ("fc", {"kind": "fibre_channel", "san": "fabric-a"}, ["virtual Fibre Channel adapter", "'fabric-a'",
                                                          "Remove-VMFibreChannelHba"]),
])
def test_a_device_that_cannot_move_is_refused_before_the_checkpoint(lab, case, device, says):
    """An assigned device, a GPU partition or an SR-IOV virtual function makes Save-VM fail (the
    VM's checkpoint is a Production one, so the migration gets that far); a virtual Fibre
    Channel adapter's LUNs are on the SAN, and Start-VM needs its virtual SAN."""
    name = f"pf-dev-{case}"
    lab.add_vm(name, "hv1", write_rate_kbps=64, checkpoint_type="Production", devices=[device])
    refused(lab, name, *says)


def test_lab_add_vm_and_set_host_take_the_options_and_refuse_a_bad_one_in_one_line(lab):
    res, vm = lab.cli_json("lab", "add-vm", "pf-cli", "--host", "hv2", "--memory-mb", "16", "--disk-mb", "16",
                           "--no-heartbeat", "--vtpm", "--compat-migration", "--clustered", "--replica", "--sriov",
                           "--fibre-channel", "fabric-cli", "--json")
    assert res.returncode == 0, res.stderr
    state = next(v for v in lab.emulator("hv2").state()["vms"] if v["name"] == "pf-cli")
    assert state["id"] == vm["id"]
    assert "fabric-cli" in lab.emulator("hv2").host_props()["sans"]
    for args, says in ((("--assigned-device", "--dynamic-memory"), "cannot use Dynamic Memory"),
                       (("--fibre-channel", ""), "needs the name of a virtual SAN"),):
        before = [v["id"] for v in lab.emulator("hv2").state()["vms"]]
        res = lab.cli("lab", "add-vm", "pf-cli-bad", "--host", "hv2", "--memory-mb", "16", *args)
        assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert [v["id"] for v in lab.emulator("hv2").state()["vms"]] == before
    before = lab.emulator("hv2").host_props()
    for args in (("--numa-nodes", "0"), ("--import-guardians-from", "hv9")):
        res = lab.cli("lab", "set-host", "hv2", *args)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert lab.emulator("hv2").host_props() == before
