"""Validation and import as Hyper-V documents them, in a lab whose hosts keep their VMs on
different drives, in different folders, one with a space in its name (hv1 D:\\VMs\\hv1, hv2
E:\\Hyper-V\\Virtual Machines), as hosts of a real fleet do: Compare-VM and Import-VM
-Register look for every file where the configuration names it, checkpoints beside the
configuration, and a planned VM lasts until someone destroys it (docs/hyperv-rules.md,
"Validation and import")."""
from __future__ import annotations

import time

import pytest

from workers.model.record import Store

pytestmark = pytest.mark.integration

ROOTS = {"hv1": "D:\\VMs\\hv1", "hv2": "E:\\Hyper-V\\Virtual Machines"}


@pytest.fixture(scope="module")
def lab(own_lab):
    with own_lab("validation", hosts=2, vm_roots=ROOTS) as lab:
        yield lab


def migrate(lab, vm: str, src: str, dst: str, *extra) -> dict:
    res, rec = lab.cli_json("migrate", vm, "--from", src, "--to", dst, "--wait", "--json", "--timeout", "240", *extra)
    return rec


def vm_on(lab, host: str, name: str) -> dict:
    return next(v for v in lab.emulator(host).state()["vms"] if v["name"] == name)


def driver(lab, host: str):
    from workers.hyperv.driver import HyperVDriver
    return HyperVDriver(lab.cfg.host(host), lab.cfg.credentials(host))


def ended(lab, mid: str, deadline_s: float = 180) -> dict:
    store, deadline = Store(lab.redis()), time.monotonic() + deadline_s
    while (rec := store.get(mid))["state"] not in ("completed", "rolled_back", "failed"):
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)
    return rec


@pytest.mark.parametrize("checkpoint_type", ["Standard", "Production"])
def test_a_vm_moves_to_a_host_on_another_drive_and_back(lab, checkpoint_type):
    """Item 1 and 2: validation and import find every file where it is on the destination,
    the imported VM keeps its checkpoints and Smart Paging file in its new folder (so the way
    back, which checkpoints it there, works), and nothing planned is left anywhere."""
    name = f"drives-{checkpoint_type.lower()}"
    lab.add_vm(name, "hv1", write_rate_kbps=64, checkpoint_type=checkpoint_type)
    time.sleep(0.5)
    rec = migrate(lab, name, "hv1", "hv2")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    folder = f"{ROOTS['hv2']}\\{vm['id']}"
    assert vm["path"] == folder and vm["snapshot_location"] == folder and vm["smart_paging_path"] == folder
    # a Standard checkpoint has its memory (.vmrs) besides the .vmcx and .vmgs; a Production one not
    assert rec["copied_by_kind"]["checkpoint"]["files"] == (3 if checkpoint_type == "Standard" else 2)
    assert "validation_left" not in rec
    assert lab.emulator("hv2").state()["planned"] == [] and lab.emulator("hv1").state()["planned"] == []
    check = lab.verify(name)
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check
    back = migrate(lab, name, "hv2", "hv1")
    assert back["state"] == "completed", back.get("error")
    assert vm_on(lab, "hv1", name)["snapshot_location"] == f"D:\\VMs\\hv1\\{vm['id']}"
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    print(f"{checkpoint_type}: downtime {rec['downtime_breakdown']} then {back['downtime_breakdown']}")


def test_a_vm_keeps_its_own_checkpoint_whole_on_the_destination(lab):
    """Item 2: -Register needs every checkpoint the configuration lists, each with all its
    files beside the configuration; the administrator's own checkpoint moves with the VM."""
    name = "own-checkpoint"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    src_vm = vm_on(lab, "hv1", name)
    theirs = driver(lab, "hv1").run("checkpoint_vm", {"vm_id": src_vm["id"], "snapshot_name": "before the update"})
    assert [f.rsplit(".", 1)[1] for f in theirs["snapshot"]["files"]] == ["vmcx", "vmgs", "vmrs"]
    time.sleep(0.5)
    rec = migrate(lab, name, "hv1", "hv2", "--max-rounds", "1")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    [kept] = vm["snapshots"]  # quickmig's are merged, the administrator's stays
    assert kept["name"] == "before the update" and kept["id"] == theirs["snapshot"]["id"]
    assert kept["files"] == [f.replace(ROOTS["hv1"], ROOTS["hv2"]) for f in theirs["snapshot"]["files"]]
    assert rec["parents_fixed"], "the frozen disks were re-parented in prepare, before the downtime"
    check = lab.verify(name)
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check


def test_validation_finds_a_missing_checkpoint_file_before_the_downtime(lab):
    """Item 1: prepare compares the configuration as the cutover will import it, so what
    -Register would miss stops the migration while the VM still runs."""
    name = "missing-vmgs"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    dst = lab.emulator("hv2")
    dst.inject_fault(op="compare_vm", action="delay", seconds=4, times=1)
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--max-rounds", "0")
        assert res.returncode == 0, res.stderr
        mid, store = res.stdout.strip(), Store(lab.redis())
        deadline = time.monotonic() + 120
        while not (rec := store.get(mid)).get("copied") or rec["state"] != "preparing" \
                or not any(c["path"].endswith(".vmcx") and "Virtual Machines" in c["path"] for c in rec["copied"]):
            assert time.monotonic() < deadline and rec["state"] not in ("rolled_back", "failed", "completed"), rec
            time.sleep(0.05)
        vmgs = next(f["path"] for f in rec["plan"]["frozen"] if f["path"].endswith(".vmgs"))
        rel = vmgs[len(ROOTS["hv1"]) + 1:].replace("\\", "/")
        (lab.dir / "hosts" / "hv2" / "share" / rel).unlink()
        rec = ended(lab, mid)
    finally:
        dst.clear_faults()
    assert rec["state"] == "rolled_back", rec
    assert "Could not find the checkpoint" in rec["error"] and "vmgs" in rec["error"], rec["error"]
    assert not rec.get("save_started_at"), "the VM never went down"
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    assert dst.state()["planned"] == []


def test_validation_names_what_its_clean_up_could_not_remove_and_stops_before_the_downtime(lab):
    """Item 12: the planned VM Compare-VM made could not be destroyed. It keeps the VM's id and
    its copied configuration in use on the destination, so the migration stops there, the
    record names it, and the VM runs on where it was."""
    name = "planned-left"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    dst = lab.emulator("hv2")
    dst.inject_fault(op="compare_vm:DestroySystem", action="fail", message="injected: DestroySystem failed")
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--max-rounds", "0")
        assert res.returncode == 0, res.stderr
        rec = ended(lab, res.stdout.strip())
    finally:
        dst.clear_faults()
    vm_id = vm_on(lab, "hv1", name)["id"]
    assert rec["state"] in ("rolled_back", "failed"), rec
    assert rec["validation_left"] == [{"kind": "planned_vm", "id": vm_id, "name": name,
                                       "error": "injected: DestroySystem failed"}], rec
    assert not rec.get("save_started_at"), "the VM never went down"
    assert [p["id"] for p in dst.state()["planned"]] == [vm_id]
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
