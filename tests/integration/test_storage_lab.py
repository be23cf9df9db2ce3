"""Storage (issue #13 items 1 and 2): each lab host keeps VMs in two storage folders on two
shares, on other drives on other hosts (hv1 `D:\\VMs\\hv1` and `E:\\Data\\hv1`, hv2
`E:\\Hyper-V\\Virtual Machines` and `F:\\Data\\hv2`). A VM's disks may be anywhere in them;
`migrate --dry-run` shows where each file lands and changes nothing, a file with no
reachable destination is refused before the checkpoint naming the option that fixes it,
and every disk is copied, re-parented and still holds every write its guest acknowledged.

Shares the lab of test_validation_lab.py's shape: two hosts whose first folders differ too."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_migration import migrate_refused
from tests.integration.test_validation_lab import ended

pytestmark = pytest.mark.integration

ROOTS = {"hv1": "D:\\VMs\\hv1", "hv2": "E:\\Hyper-V\\Virtual Machines"}


@pytest.fixture(scope="module")
def lab(own_lab):
    with own_lab("storage", hosts=2, vm_roots=ROOTS) as lab:
        yield lab


def vm_on(lab, host: str, name: str) -> dict | None:
    return next((v for v in lab.emulator(host).state()["vms"] if v["name"] == name), None)


def test_the_file_plan_is_shown_and_a_file_with_nowhere_to_go_is_refused_before_anything_changes(lab):
    name = "planned"
    lab.add_vm(name, "hv1", disks=2, disk_folders=[f"{ROOTS['hv1']}\\planned", "E:\\Data\\hv1\\planned"])
    before = lab.redis_state()
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # each file, its size, where it lands: the data disk in hv2's folder named data, on its F: drive
    data = next(line for line in lines if "E:\\Data\\hv1\\planned\\disk1.vhdx" in line)
    assert data.endswith("-> F:\\Data\\hv2\\planned\\disk1.vhdx")
    size = int(data.split()[1].replace(",", ""))  # read over SMB from hv1's second share, as it was then
    local = lab.dir / "hosts" / "hv1" / "shares" / "hv1-data" / "planned" / "disk1.vhdx"
    assert 16 * 2**20 < size <= local.stat().st_size
    os_disk = next(line for line in lines if "planned\\disk0.vhdx" in line)
    assert os_disk.endswith(f"-> {ROOTS['hv2']}\\planned\\disk0.vhdx")
    assert any(line.endswith(".vmcx") and ROOTS["hv2"] in line for line in lines)
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run", "--destination-path",
                  "F:\\Data\\hv2\\one", "--json")
    plan = json.loads(res.stdout)
    assert {f["dest"].rsplit("\\", 2)[0] for f in plan["files"] if f["kind"] == "disk"} == {"F:\\Data\\hv2\\one"}

    # nowhere to go: one line, exit 2, naming the file and the option
    for extra, says in [(("--storage-map", "E:\\Data\\hv1=C:\\Elsewhere"), "--storage-map"),
                        (("--destination-path", "C:\\Elsewhere"), "--destination-path"),
                        (("--storage-map", "E:\\Data\\hv1=F:\\Data\\hv2\\..\\x"), "--storage-map")]:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", *extra)
        assert res.returncode == 2 and says in res.stderr, (extra, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    vm = vm_on(lab, "hv1", name)
    assert vm["state"] == "Running" and vm["snapshots"] == [] and vm_on(lab, "hv2", name) is None
    assert lab.redis_state() == before


def test_a_vm_with_four_disks_on_two_volumes_moves_each_disk_where_the_plan_says_and_keeps_every_write(lab):
    name = "spread"
    lab.add_vm(name, "hv1", disks=4, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\spread", "E:\\Data\\hv1\\spread"])
    time.sleep(1.0)  # writes on every disk before the checkpoint, and after it
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--storage-map",
                            "E:\\Data\\hv1\\spread=F:\\Data\\hv2\\moved", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert [d["path"] for d in vm["disks"]] == [
        f"{ROOTS['hv2']}\\spread\\disk0.vhdx", "F:\\Data\\hv2\\moved\\disk1.vhdx",
        f"{ROOTS['hv2']}\\spread\\disk2.vhdx", "F:\\Data\\hv2\\moved\\disk3.vhdx"]
    assert [(d["controller_type"], d["controller_location"]) for d in vm["disks"]] == [("SCSI", i) for i in range(4)]
    time.sleep(0.5)  # the guest writes on the destination too
    out = lab.verify(name)
    assert out["integrity"] == "ok", out["problems"]
    assert out["host"] == "hv2" and out["disks"] == 4 and out["writes_checked"] > 8
    assert vm_on(lab, "hv1", name) is None


def test_a_vm_on_a_switch_the_destination_names_otherwise_moves_with_switch_map_and_not_without(lab):
    """Item 6: hv1's adapters are on `Front`, hv2 calls its switch `Edge`. Without a map the
    migration is refused before the checkpoint, naming --switch-map; with `--switch-map
    Front=Edge` the import connects the adapter to `Edge` through the report."""
    from lab import orchestrator
    orchestrator.set_host(lab.cfg, "hv1", {"switches": ["lab-switch", "Front"]})
    orchestrator.set_host(lab.cfg, "hv2", {"switches": ["lab-switch", "Edge"]})
    name = "netmap"
    lab.add_vm(name, "hv1", switches=["Front", "lab-switch"])
    time.sleep(1.0)  # its heartbeat comes
    rec = migrate_refused(lab, name, "hv1", "hv2")
    assert "--switch-map Front=" in rec["error"], rec.get("error")
    assert vm_on(lab, "hv1", name)["snapshots"] == [] and vm_on(lab, "hv2", name) is None
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run", "--switch-map", "Front=Edge")
    assert "switch Front -> Edge" in res.stdout and "switch lab-switch -> lab-switch" in res.stdout
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--switch-map", "Front=Edge",
                            "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    assert vm_on(lab, "hv2", name)["switches"] == ["Edge", "lab-switch"]
    assert lab.verify(name)["integrity"] == "ok"


def test_a_generation_1_vm_with_disks_on_ide_and_scsi_in_both_folders_moves_and_keeps_every_write(lab):
    """Items 2 and 5: a Generation 1 VM (startup disk on IDE 0:0, then IDE and SCSI), its disks
    in both storage folders, moves with every disk re-parented, and stays Generation 1."""
    name = "gen1"
    lab.add_vm(name, "hv1", generation=1, disks=5, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\gen1", "E:\\Data\\hv1\\gen1"])
    time.sleep(1.0)
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert vm["generation"] == 1
    assert [(d["controller_type"], d["path"]) for d in vm["disks"]] == [
        ("IDE", f"{ROOTS['hv2']}\\gen1\\disk0.vhdx"), ("IDE", "F:\\Data\\hv2\\gen1\\disk1.vhdx"),
        ("IDE", f"{ROOTS['hv2']}\\gen1\\disk2.vhdx"), ("IDE", "F:\\Data\\hv2\\gen1\\disk3.vhdx"),
        ("SCSI", f"{ROOTS['hv2']}\\gen1\\disk4.vhdx")]
    out = lab.verify(name)
    assert out["integrity"] == "ok" and out["disks"] == 5, out["problems"]


def test_writes_made_on_the_destination_come_back_to_each_disks_own_folder_when_the_switchover_fails(lab):
    """The guest ran on hv2 before its heartbeat failed: the rollback brings each disk's leaf
    back to the source file it was placed from (here through a --storage-map), on its own share."""
    name = "back"
    lab.add_vm(name, "hv1", disks=2, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\back", "E:\\Data\\hv1\\back"])
    time.sleep(1.0)
    lab.emulator("hv2").inject_fault(op="wait_heartbeat", action="fail", message="injected: no heartbeat", times=1)
    try:
        res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--storage-map",
                                "E:\\Data\\hv1\\back=F:\\Data\\hv2\\elsewhere", "--wait", "--json", "--timeout", "240")
    finally:
        lab.emulator("hv2").clear_faults()
    assert rec["state"] == "rolled_back" and rec.get("start_started_at"), rec.get("error")
    out = lab.verify(name)
    assert out["running_on"] == ["hv1"] and out["integrity"] == "ok" and out["disks"] == 2, out["problems"]
    assert vm_on(lab, "hv2", name) is None
    # the folders its copies made there are gone too, the --storage-map's own among them
    assert not (lab.dir / "hosts" / "hv2" / "shares" / "hv2-data" / "elsewhere").exists()
    assert not (lab.dir / "hosts" / "hv2" / "share" / "back").exists()


def test_a_vm_with_a_tree_of_user_checkpoints_moves_with_every_one_whole_and_in_order(lab):
    """Item 3: three user checkpoints (Standard, Production, Standard), taken while the guest
    wrote, on a VM whose two disks are on two volumes, move with it like Move-VM moves them:
    the same names in the same order, every file of each in the VM's folder on hv2, each
    checkpoint's disks links of the moved chains; only quickmig's own checkpoint is merged."""
    name = "tree"
    lab.add_vm(name, "hv1", disks=2, checkpoints=3, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\tree", "E:\\Data\\hv1\\tree"])
    before = lab.verify(name)
    assert before["checkpoints"] == ["checkpoint 1", "checkpoint 2", "checkpoint 3"], before
    src = vm_on(lab, "hv1", name)
    time.sleep(0.5)
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert [(s["id"], s["name"]) for s in vm["snapshots"]] == [(s["id"], s["name"]) for s in src["snapshots"]]
    for old, new in zip(src["snapshots"], vm["snapshots"], strict=True):
        assert new["files"] == [f.replace(src["path"], vm["path"]) for f in old["files"]]
    assert vm["path"] == f"{ROOTS['hv2']}\\{src['id']}"
    assert all(len(d["chain"]) == 4 for d in vm["disks"])  # three checkpoints, no trace of ours
    time.sleep(0.5)  # the guest writes on hv2 on top of the tree
    out = lab.verify(name)
    assert out["integrity"] == "ok" and out["host"] == "hv2", out["problems"]
    assert out["checkpoints"] == before["checkpoints"] and out["disks"] == 2
    assert vm_on(lab, "hv1", name) is None


def test_a_vm_on_a_golden_parent_with_four_disks_and_checkpoints_moves_and_the_parent_is_copied_once(lab):
    """Items 2-4, the issue's "done when": a VM with 4 disks on two volumes, 3 user
    checkpoints and a boot disk on the golden image `base` moves between hosts whose folders
    differ; another VM on the same golden image keeps running on hv1 with every write; when
    that one moves too, it shares the parent already copied to hv2 instead of copying it again."""
    golden = f"{ROOTS['hv1']}\\Golden\\base.vhdx"
    other = lab.add_vm("golden-b", "hv1", golden="base", write_rate_kbps=128)
    assert other["disks"][0]["chain"][-1] == golden
    name = "golden-a"
    lab.add_vm(name, "hv1", golden="base", disks=4, checkpoints=3, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\{name}", f"E:\\Data\\hv1\\{name}"])
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run")
    assert res.returncode == 0, res.stderr
    print("\n" + res.stdout)
    parent_line = next(line for line in res.stdout.splitlines() if line.startswith(golden))
    assert " parent " in parent_line and parent_line.endswith(f"-> {ROOTS['hv2']}\\Golden\\base.vhdx")
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    out = lab.verify(name)
    assert out["integrity"] == "ok" and out["host"] == "hv2", out["problems"]
    assert out["disks"] == 4 and out["checkpoints"] == ["checkpoint 1", "checkpoint 2", "checkpoint 3"]
    assert vm_on(lab, "hv2", name)["disks"][0]["chain"][-1] == f"{ROOTS['hv2']}\\Golden\\base.vhdx"
    # the other VM on the golden image still runs on hv1, its parent where it was
    stay = lab.verify("golden-b")
    assert stay["running_on"] == ["hv1"] and stay["integrity"] == "ok", stay["problems"]
    parent_there = lab.dir / "hosts" / "hv2" / "share" / "Golden" / "base.vhdx"
    made = parent_there.stat().st_mtime_ns
    res, rec = lab.cli_json("migrate", "golden-b", "--from", "hv1", "--to", "hv2", "--wait", "--json",
                            "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    parent = rec["copied_by_kind"]["parent"]
    assert parent["files"] == parent["shared"] == 1 and parent["bytes"] == 0
    assert parent_there.stat().st_mtime_ns == made
    # its last user gone, the parent went with it: none is left on hv1
    assert not (lab.dir / "hosts" / "hv1" / "share" / "Golden" / "base.vhdx").exists()
    for vm in (name, "golden-b"):
        out = lab.verify(vm)
        assert out["running_on"] == ["hv2"] and out["integrity"] == "ok", (vm, out["problems"])


def test_a_golden_parent_quickmig_copied_goes_with_its_last_user_when_the_switchover_fails(lab):
    """Item 4: a golden parent this migration copied, which no other VM on hv2 uses, is
    removed by the rollback with the rest; the source's parent and VM are as they were."""
    golden = f"{ROOTS['hv1']}\\Golden\\solo.vhdx"
    lab.add_vm("solo", "hv1", golden="solo", write_rate_kbps=128)
    time.sleep(0.5)
    lab.emulator("hv2").inject_fault(op="wait_heartbeat", action="fail", message="injected: no heartbeat", times=1)
    try:
        res, rec = lab.cli_json("migrate", "solo", "--from", "hv1", "--to", "hv2", "--wait", "--json",
                                "--timeout", "240")
    finally:
        lab.emulator("hv2").clear_faults()
    assert rec["state"] == "rolled_back", rec.get("error")
    parent = rec["copied_by_kind"]["parent"]
    assert parent["files"] == 1 and not parent["shared"] and parent["bytes"] > 0  # it was copied there
    assert not (lab.dir / "hosts" / "hv2" / "share" / "Golden" / "solo.vhdx").exists()
    out = lab.verify("solo")
    assert out["running_on"] == ["hv1"] and out["integrity"] == "ok", out["problems"]
    assert vm_on(lab, "hv1", "solo")["disks"][0]["chain"][-1] == golden


def test_two_vms_on_one_golden_parent_moving_at_once_copy_it_once_and_share_it(lab):
    """Item 4: two migrations to hv2 need the same golden parent at the same time. One
    migration at a time decides on it (the lease ISO images use): one copies it, the other
    finds the same disk there and shares it; both VMs run on hv2 on the one copy."""
    golden = f"{ROOTS['hv1']}\\Golden\\twin.vhdx"
    for name in ("twin-a", "twin-b"):
        assert lab.add_vm(name, "hv1", golden="twin", write_rate_kbps=128)["disks"][0]["chain"][-1] == golden
    time.sleep(0.5)
    mids = []
    for name in ("twin-a", "twin-b"):
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--max-rounds", "0")
        assert res.returncode == 0, res.stderr
        mids.append(res.stdout.strip())
    recs = [ended(lab, mid, deadline_s=240) for mid in mids]
    assert [r["state"] for r in recs] == ["completed", "completed"], [r.get("error") for r in recs]
    parents = sorted((r["copied_by_kind"]["parent"] for r in recs), key=lambda k: k["bytes"])
    assert [p["shared"] for p in parents] == [1, 0] and parents[1]["bytes"] > 0
    for name in ("twin-a", "twin-b"):
        out = lab.verify(name)
        assert out["running_on"] == ["hv2"] and out["integrity"] == "ok", (name, out["problems"])
        assert vm_on(lab, "hv2", name)["disks"][0]["chain"][-1] == f"{ROOTS['hv2']}\\Golden\\twin.vhdx"


def test_a_legacy_adapter_its_vlan_and_static_mac_move_with_the_vm_and_a_mac_taken_there_is_refused_first(lab):
    """Items 5 and 6: a Generation 1 VM whose adapter is a legacy one, on VLAN 42 with a static
    MAC address, moves as Hyper-V would move it: the same adapter type, VLAN and address on
    hv2, which `lab verify` checks against what the VM was created with. A VM whose static MAC
    address a running VM of hv2 has too could not start there: refused before the checkpoint,
    naming the address and the cmdlet that changes it (it used to fail at Start-VM, after the
    downtime)."""
    lab.add_vm("nic-holder", "hv2", static_mac="00155D0A0B0D")
    lab.add_vm("nic-dup", "hv1", static_mac="00155D0A0B0D", write_rate_kbps=64)
    name = "nic"
    lab.add_vm(name, "hv1", generation=1, legacy_adapter=True, vlan_id=42, static_mac="00155D0A0B0C",
               write_rate_kbps=128)
    time.sleep(0.5)
    rec = migrate_refused(lab, "nic-dup", "hv1", "hv2")
    assert rec.get("save_started_at") is None, rec.get("error")
    assert "00155D0A0B0D" in rec["error"] and "Set-VMNetworkAdapter -StaticMacAddress" in rec["error"], rec["error"]
    assert vm_on(lab, "hv1", "nic-dup")["snapshots"] == [] and vm_on(lab, "hv2", "nic-dup") is None
    assert lab.verify("nic-dup")["running_on"] == ["hv1"]

    before = vm_on(lab, "hv1", name)["adapters"]
    assert before == [{"switch": "lab-switch", "legacy": True, "vlan_id": 42, "static_mac": "00155D0A0B0C"}]
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert vm["generation"] == 1 and vm["adapters"] == before
    out = lab.verify(name)
    assert out["integrity"] == "ok" and out["running_on"] == ["hv2"], out["problems"]
    assert out["adapters"] == before


def test_off_and_saved_vms_move_cold_and_a_saved_one_resumes_there_only_with_start(lab):
    """Item 8: a VM that is Off or Saved moves without a checkpoint or a downtime, each file
    copied once; it arrives as it was (Off, or Saved with its memory) unless --start asks to
    start it there (a Saved VM resumes from its saved state, every acknowledged write kept).
    A cold move that fails rolls back without touching the source, which stays as it was."""
    lab.add_vm("cold-off", "hv1", state="Off", disks=2, write_rate_kbps=128,
               disk_folders=[f"{ROOTS['hv1']}\\cold-off", "E:\\Data\\hv1\\cold-off"])
    lab.add_vm("cold-saved", "hv1", state="Saved", write_rate_kbps=128)
    lab.add_vm("cold-resume", "hv1", state="Saved", write_rate_kbps=128)
    res = lab.cli("migrate", "cold-off", "--from", "hv1", "--to", "hv2", "--start", "--dry-run")
    assert res.returncode == 0 and "downtime 0.0 s (a cold move: the VM is Off)" in res.stdout, res
    # a failed import rolls back: the copies go, the source is left Off, as it was
    lab.emulator("hv2").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        res, rec = lab.cli_json("migrate", "cold-off", "--from", "hv1", "--to", "hv2", "--wait", "--json",
                                "--timeout", "120")
    finally:
        lab.emulator("hv2").clear_faults()
    assert rec["state"] == "rolled_back" and "injected" in rec["error"], rec.get("error")
    assert vm_on(lab, "hv1", "cold-off")["state"] == "Off" and vm_on(lab, "hv2", "cold-off") is None
    vm_id = vm_on(lab, "hv1", "cold-off")["id"]
    assert not [p for p in (lab.dir / "hosts" / "hv2").rglob("*")
                if p.is_file() and ("cold-off" in str(p) or vm_id in str(p).lower())]

    for name, extra, arrives in (("cold-off", (), "Off"), ("cold-saved", (), "Saved"),
                                 ("cold-resume", ("--start",), "Running")):
        before = lab.verify(name)
        res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", *extra, "--wait", "--json",
                                "--timeout", "240")
        assert rec["state"] == "completed", (name, rec.get("error"))
        assert rec.get("cold") and rec.get("snapshot") is None and rec.get("save_started_at") is None, rec
        assert rec.get("downtime_seconds") is None
        assert vm_on(lab, "hv1", name) is None and vm_on(lab, "hv2", name)["state"] == arrives
        out = lab.verify(name)
        assert out["integrity"] == "ok" and out["host"] == "hv2", (name, out["problems"])
        assert out["writes_checked"] >= before["writes_checked"] > 0
    # a running VM is not moved cold
    lab.add_vm("warm", "hv1")
    res = lab.cli("migrate", "warm", "--from", "hv1", "--to", "hv2", "--start")
    assert res.returncode == 2 and "--start" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_destination_volume_without_room_for_the_files_that_land_on_it_is_refused_before_the_checkpoint(lab):
    """Pre-flight measured the room of vm_root's volume only: a disk bound for hv2's second
    folder (F:) would fail to copy there when F: is full. The files that land on each volume
    are now measured against its free space, and a refusal names the folder and the options
    that place them elsewhere."""
    name = "roomy"
    lab.add_vm(name, "hv1", disks=2, disk_folders=[f"{ROOTS['hv1']}\\roomy", "E:\\Data\\hv1\\roomy"])
    time.sleep(0.5)
    lab.emulator("hv2").set_host(folder_free_bytes={"F:\\Data\\hv2": 8 * 2**20})
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run")
        assert res.returncode == 0, res.stderr
        assert "8 MiB free on the volume of F:\\Data\\hv2" in res.stdout and "--storage-map" in res.stdout, res.stdout
        rec = migrate_refused(lab, name, "hv1", "hv2")
        assert "F:\\Data\\hv2" in rec["error"], rec.get("error")
        assert vm_on(lab, "hv1", name)["snapshots"] == [] and vm_on(lab, "hv2", name) is None
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run", "--storage-map",
                      f"E:\\Data\\hv1\\roomy={ROOTS['hv2']}\\roomy-data")
        assert "pre-flight: ok" in res.stdout, res.stdout
    finally:
        lab.emulator("hv2").reset_host()
