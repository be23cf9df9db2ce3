from workers.model import preflight

MiB = 1024 * 1024
VM = {"name": "web", "checkpoint_type": "Production", "version": "10.0", "switches": ["lan"],
      "memory_startup_bytes": 512 * MiB, "disks": [{"path": "D:\\a.vhdx", "chain": ["D:\\a.vhdx"]}]}
HOST = {"supported_versions": ["9.0", "10.0"], "switches": ["lan"], "cpu_vendor": "GenuineIntel",
        "vm_root_free_bytes": 10 * 1024 * MiB}


def test_a_compatible_destination_with_room_passes():
    assert preflight.problems(VM, HOST, HOST, destination="hv2", file_bytes=1024 * MiB) == []


def test_a_vm_at_hyperv_s_checkpoint_limit_is_refused_as_the_migration_adds_one():
    snaps = [{"id": str(i), "name": f"c{i}"} for i in range(preflight.MAX_CHECKPOINTS)]
    assert preflight.problems(dict(VM, snapshots=snaps[:-1]), HOST, HOST, destination="hv2", file_bytes=0) == []
    assert preflight.room_for_checkpoint(dict(VM, snapshots=snaps[:-1]))
    [found] = preflight.problems(dict(VM, snapshots=snaps), HOST, HOST, destination="hv2", file_bytes=0)
    assert "50 checkpoints" in found and "Remove-VMSnapshot" in found
    assert not preflight.room_for_checkpoint(dict(VM, snapshots=snaps))


def test_space_counts_files_memory_and_a_margin():
    need = preflight.needed_bytes(1000 * MiB, 512 * MiB)
    assert need >= 1512 * MiB + preflight.MARGIN_MIN_BYTES
    tight = dict(HOST, vm_root_free_bytes=1512 * MiB)
    found = preflight.problems(VM, HOST, tight, destination="hv2", file_bytes=1000 * MiB)
    assert len(found) == 1 and "1512 MiB free" in found[0]


def test_every_problem_is_reported_at_once():
    vm = dict(VM, checkpoint_type="Disabled", version="5.0", switches=["dmz"],
              disks=VM["disks"] + [{"path": "Disk 2", "chain": [], "passthrough": True}])
    dst = dict(HOST, cpu_vendor="AuthenticAMD", vm_root_free_bytes=0)
    found = preflight.problems(vm, HOST, dst, destination="hv2", file_bytes=0)
    assert len(found) == 6


# -- the pre-flight facts (describe_vm `preflight`, host_info) ------------------------------

FACTS = {"heartbeat": {"enabled": True, "status": "OK", "ok": True}, "compatibility_for_migration": False,
         "compatibility_info": "blob", "security": {"tpm_enabled": False, "shielded": False, "encrypt_state": False},
         "key_protector": [], "is_clustered": False, "replication": None, "devices": []}
SRC = dict(HOST, cpu_model="Xeon Gold 6230")
DST = dict(HOST, cpu_model="Xeon Gold 6230", numa_spanning_enabled=True,
           numa_nodes=[{"id": 0, "memory_available_bytes": 4096 * MiB}],
           compatibility={"return_value": 0, "compatible": True, "reasons": []})
GUARDIAN = {"name": "UntrustedGuardian", "encryption_thumbprint": "AB12", "signing_thumbprint": "CD34"}


def facts(vm=None, dst=None, **changes):
    vm = dict(VM, id="0f8f", preflight={**FACTS, **changes}, **(vm or {}))
    return preflight.fact_problems(vm, SRC, dict(DST, **(dst or {})), source="hv1", destination="hv2")


def test_facts_of_a_vm_that_moves_as_it_is_raise_nothing():
    assert facts() == []


def test_a_vm_without_facts_is_refused_not_waved_through():
    vm = dict(VM, id="0f8f")
    found = preflight.fact_problems(vm, SRC, DST, source="hv1", destination="hv2")
    assert len(found) == 1 and "no pre-flight facts" in found[0]


def test_the_heartbeat_is_read_from_its_status_code_not_its_words():
    assert facts(heartbeat={"enabled": True, "status": "Kein Kontakt", "ok": True}) == []
    [silent] = facts(heartbeat={"enabled": True, "status": "Kein Kontakt", "ok": False})
    assert "'Kein Kontakt', not OK" in silent and "vmicheartbeat" in silent
    [off] = facts(heartbeat={"enabled": False, "status": "OK", "ok": True})
    assert "is disabled" in off and "Enable-VMIntegrationService -VMName web -Name Heartbeat" in off
    [none] = facts(heartbeat=None)
    assert "no Heartbeat integration service" in none


def test_another_processor_generation_is_refused_with_the_fix_that_fits():
    not_compatible = {"compatibility": {"return_value": 32784, "compatible": False, "reasons": ["features differ"]},
                      "cpu_model": "Xeon Platinum 8480+"}
    [off] = facts(dst=not_compatible)
    assert "'Xeon Gold 6230'" in off and "'Xeon Platinum 8480+'" in off and "features differ" in off
    assert "Set-VMProcessor -VMName web -CompatibilityForMigrationEnabled $true" in off
    assert "only while it is off" in off
    [on] = facts(dst=not_compatible, compatibility_for_migration=True)
    assert "even in processor compatibility mode" in on and "Set-VMProcessor" not in on
    [broken] = facts(dst={"compatibility": {"return_value": 32773, "compatible": False, "reasons": []}})
    assert "returned 32773" in broken
    [unasked] = facts(dst={"compatibility": None})
    assert "did not check" in unasked
    # another vendor is the vendor rule's refusal (problems), not this one's
    assert facts(dst=dict(not_compatible, cpu_vendor="AuthenticAMD")) == []


def test_a_vtpm_vm_needs_one_of_its_guardians_with_its_private_keys_on_the_destination():
    tpm = {"security": {"tpm_enabled": True, "shielded": False, "encrypt_state": False}, "key_protector": [GUARDIAN]}
    theirs = dict(GUARDIAN, encryption_thumbprint="EF56", has_private_signing_key=True)
    [missing] = facts(dst={"guardians": [theirs]}, **tpm)
    assert "UntrustedGuardian (AB12)" in missing and "could not be unwrapped" in missing
    assert "Shielded VM Local Certificates" in missing and "Grant-HgsKeyProtectorAccess" in missing
    assert facts(dst={"guardians": [dict(GUARDIAN, has_private_signing_key=False)]}, **tpm)
    assert facts(dst={"guardians": [theirs, dict(GUARDIAN, has_private_signing_key=True)]}, **tpm) == []
    encrypted = {"security": {"tpm_enabled": False, "shielded": False, "encrypt_state": True}, "key_protector": []}
    [none] = facts(dst={"guardians": []}, **encrypted)
    assert "guardians, none, is on hv2" in none


def test_the_memory_the_vm_resumes_with_must_be_free_in_one_node_unless_vms_may_span_them():
    two = [{"id": 0, "memory_available_bytes": 300 * MiB}, {"id": 1, "memory_available_bytes": 300 * MiB}]
    assert facts(dst={"numa_nodes": two}) == []  # 512 MiB of 600, spanning
    [one] = facts(dst={"numa_nodes": two, "numa_spanning_enabled": False})
    assert "NUMA spanning is off" in one and "largest NUMA node has 300 MiB" in one and "needs 512 MiB" in one
    [total] = facts(dst={"numa_nodes": [{"id": 0, "memory_available_bytes": 100 * MiB}]})
    assert "100 MiB of memory available for VMs" in total and "needs 512 MiB" in total
    # Dynamic Memory: what it is assigned now, when more than its startup memory
    [dyn] = facts(vm={"memory_assigned_bytes": 1024 * MiB}, dst={"numa_nodes": two})
    assert "needs 1024 MiB" in dyn


def test_what_a_cluster_or_replication_owns_and_devices_that_do_not_move_are_refused_each_with_its_fix():
    found = facts(is_clustered=True, replication={"mode": "Primary", "state": "Replicating"},
                  devices=[{"kind": "assignable", "name": "PCI\\VEN_10DE", "location_path": "PCIROOT(0)#PCI(0300)"},
                           {"kind": "gpu_partition", "id": "g0"},
                           {"kind": "sriov", "adapter": "lan", "switch": "lan", "iov_weight": 50},
                           {"kind": "fibre_channel", "san": "fabric-a"}])
    assert len(found) == 6
    for words in ("Move-ClusterVirtualMachineRole", "Remove-VMReplication -VMName web",
                  "PCIROOT(0)#PCI(0300); Discrete Device Assignment", "Remove-VMGpuPartitionAdapter",
                  "Set-VMNetworkAdapter -VMName web -Name 'lan' -IovWeight 0", "Remove-VMFibreChannelHba"):
        assert any(words in f for f in found), words
    assert facts(replication={"mode": "None", "state": "Disabled"}) == []


def test_a_static_mac_address_a_vm_of_the_destination_has_is_refused_and_the_vm_s_own_is_not():
    mac = "00155D0A0B0C"
    vm = dict(VM, id="a1", adapters=[{"switch": "lan", "legacy": True, "vlan_id": 42, "static_mac": mac},
                                     {"switch": "lan", "legacy": False, "vlan_id": 0, "static_mac": ""}])
    own = dict(HOST, static_macs=[{"mac": mac, "vm": "web", "vm_id": "a1", "state": "Off"}])
    assert preflight.problems(vm, HOST, own, destination="hv2", file_bytes=0) == []
    taken = dict(HOST, static_macs=[{"mac": mac.lower(), "vm": "db", "vm_id": "b2", "state": "Saved"}])
    [found] = preflight.problems(vm, HOST, taken, destination="hv2", file_bytes=0)
    assert mac in found and "'db' (Saved)" in found and "Set-VMNetworkAdapter -StaticMacAddress" in found


def test_a_configuration_version_the_destination_does_not_run_is_refused_with_the_way_out_that_fits():
    old = dict(HOST, supported_versions=["9.0", "10.0", "12.0"])
    [found] = preflight.problems(dict(VM, version="8.0"), HOST, old, destination="hv2", file_bytes=0, source="hv1")
    assert "configuration version 8.0" in found and "Update-VMVersion" in found and "on hv1" in found
    [found] = preflight.problems(dict(VM, version="11.0"), HOST, old, destination="hv2", file_bytes=0)
    assert "configuration version 11.0" in found and "Update-VMVersion" not in found and "newer" in found
    [found] = preflight.problems(dict(VM, version="12.1"), HOST, old, destination="hv2", file_bytes=0)
    assert "Update-VMVersion" not in found


def test_each_volume_is_named_by_its_drive_or_share_and_measured_with_a_margin():
    assert preflight.volume_of("f:\\Data\\hv2") == "F:" == preflight.volume_of("F:\\other")
    assert preflight.volume_of("\\\\nas\\vms\\hv2\\a") == preflight.volume_of("\\\\NAS\\VMs\\x") == "\\\\nas\\vms"
    assert preflight.volume_room_problem("hv2", "F:\\Data", 200 * MiB, 100 * MiB) is None
    found = preflight.volume_room_problem("hv2", "F:\\Data", 120 * MiB, 100 * MiB)  # 100 + 64 margin
    assert found and "120 MiB free on the volume of F:\\Data" in found and "164 MiB" in found
    assert preflight.volume_room_problem("hv2", "F:\\Data", None, 100 * MiB) is None
