"""The emulated Hyper-V host's model and disk format, in process (no network)."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from lab.emulator import disk
from lab.emulator.errors import OpError
from lab.emulator.faults import FaultSpecError, FaultTable, parse_fault
from lab.emulator.model import HyperVHost
from lab.verify import check_journal, parse_journal, verify_vm
from tests.unit import emulated

RATE = 400  # KiB/s = 100 records/s: enough records in a few tenths of a second



@pytest.fixture
def lab(tmp_path: Path):
    yield from emulated.hosts_in(tmp_path)


def roots(h: HyperVHost) -> list[str]:
    """The `roots` argument quickmig's driver gives the scripts that delete and write: vm_root."""
    return [h.paths.vm_root]


def new_vm(h: HyperVHost, name: str = "vm1", **kw) -> dict:
    kw.setdefault("memory_mb", 1)
    kw.setdefault("disk_mb", 1)
    kw.setdefault("write_rate_kbps", RATE)
    return h.create_vm(name, **kw)["vm"]


def wait_counter(h: HyperVHost, vm_id: str, at_least: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while h.vms[vm_id].live_counter < at_least:
        assert time.monotonic() < deadline, "guest writer made no progress"
        time.sleep(0.02)
    return h.vms[vm_id].live_counter


def expect_error(category: str, fqid_prefix: str = ""):
    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, e, tb):
            assert et is not None and issubclass(et, OpError), f"expected OpError, got {et}"
            assert e.category == category, (e.category, e.message)
            assert e.fqid.startswith(fqid_prefix), e.fqid
            self.error = e
            return True
    return Ctx()


# ---- disk format ----------------------------------------------------------------------

def test_disk_records_round_trip_and_torn_tail_is_ignored(tmp_path):
    vm_id = "6f1c2d9e-0000-4000-8000-000000000001"
    base = tmp_path / "disk0.vhdx"
    hdr = disk.create_base(base, 1)
    assert base.stat().st_size == disk.HEADER_BYTES + disk.MiB
    assert disk.read_header(base).uid == hdr.uid
    disk.append_records(base, vm_id, [1, 2, 3])
    with open(base, "ab") as f:
        f.write(b"partial")
    scan = disk.scan_records(base)
    assert scan.seqs == [1, 2, 3] and scan.torn_bytes == 7 and scan.vm_ids == {vm_id}


def test_disk_detects_a_damaged_record(tmp_path):
    vm_id = "6f1c2d9e-0000-4000-8000-000000000001"
    base = tmp_path / "disk0.vhdx"
    disk.create_base(base, 0)
    disk.append_records(base, vm_id, [1, 2])
    with open(base, "r+b") as f:
        f.seek(disk.HEADER_BYTES + disk.RECORD_BYTES + 100)
        f.write(b"\xff\xff")
    scan = disk.scan_records(base)
    assert scan.seqs == [1] and len(scan.bad) == 1


def test_chain_follows_parents_and_set_parent_checks_identity(tmp_path):
    vm_id = "6f1c2d9e-0000-4000-8000-000000000001"
    files = {"D:\\r\\base.vhdx": tmp_path / "base.vhdx", "D:\\r\\c1.avhdx": tmp_path / "c1.avhdx",
             "D:\\r\\moved.vhdx": tmp_path / "moved.vhdx", "D:\\r\\other.vhdx": tmp_path / "other.vhdx"}
    resolve = files.__getitem__
    h = disk.create_base(files["D:\\r\\base.vhdx"], 0)
    disk.append_records(files["D:\\r\\base.vhdx"], vm_id, [1, 2])
    disk.create_child(files["D:\\r\\c1.avhdx"], "D:\\r\\base.vhdx", h)
    disk.append_records(files["D:\\r\\c1.avhdx"], vm_id, [3])
    assert disk.chain_records("D:\\r\\c1.avhdx", resolve) == [1, 2, 3]
    # the parent moves: Set-VHD -ParentPath to the copy works, to another disk is refused
    shutil.copyfile(files["D:\\r\\base.vhdx"], files["D:\\r\\moved.vhdx"])
    other = disk.create_base(files["D:\\r\\other.vhdx"], 0)
    with pytest.raises(disk.DiskFormatError, match="identifier"):
        disk.set_parent(files["D:\\r\\c1.avhdx"], "D:\\r\\other.vhdx", other.uid)
    disk.set_parent(files["D:\\r\\c1.avhdx"], "D:\\r\\moved.vhdx", h.uid)
    os.unlink(files["D:\\r\\base.vhdx"])
    chain = disk.read_chain("D:\\r\\c1.avhdx", resolve)
    assert [link.host_path for link in chain] == ["D:\\r\\c1.avhdx", "D:\\r\\moved.vhdx"]
    assert disk.merge_into_parent(files["D:\\r\\c1.avhdx"], files["D:\\r\\moved.vhdx"]) == 1
    assert disk.read_records(files["D:\\r\\moved.vhdx"]) == [1, 2, 3]


def test_vmrs_holds_the_counter(tmp_path):
    p = tmp_path / "x.vmrs"
    disk.write_vmrs(p, "6f1c2d9e-0000-4000-8000-000000000001", 42, 2 * disk.MiB, "hv1", 1.0)
    assert p.stat().st_size == disk.HEADER_BYTES + 2 * disk.MiB
    assert disk.read_vmrs(p)["counter"] == 42


# ---- faults ---------------------------------------------------------------------------

def test_fault_table_counts_down_and_matches_wildcards():
    t = FaultTable()
    t.add(parse_fault({"op": "save_vm", "action": "fail", "times": 2}))
    t.add(parse_fault({"op": "*", "action": "delay", "seconds": 1, "times": 0}))
    assert t.take("save_vm").action == "fail"
    assert t.take("save_vm").action == "fail"
    assert t.take("save_vm").action == "delay"  # the unlimited wildcard rule stays
    assert t.take("list_vms").action == "delay"
    assert t.clear() == 1 and t.take("save_vm") is None
    with pytest.raises(FaultSpecError):
        parse_fault({"op": "save_vm", "action": "explode"})


# ---- model rules ----------------------------------------------------------------------

def test_create_lays_out_files_like_hyperv_and_any_name_is_data(lab):
    lab_dir, make = lab
    h = make("hv1")
    name = "x'; Remove-VM * -Force; '  ünï \"q\""
    vm = new_vm(h, name)
    vid = vm["id"]
    assert vm["name"] == name and vm["state"] == "Running" and vm["version"] == "10.0"
    assert vm["path"] == f"D:\\VMs\\hv1\\{vid}"
    assert vm["disks"][0]["path"] == f"D:\\VMs\\hv1\\{vid}\\Virtual Hard Disks\\disk0.vhdx"
    assert vm["isos"] == ["D:\\VMs\\hv1\\ISO\\lab-tools.iso"]
    share = lab_dir / "hosts/hv1/share"
    assert (share / vid / "Virtual Machines" / f"{vid.upper()}.vmcx").is_file()
    assert (share / vid / "Virtual Machines" / f"{vid.upper()}.vmgs").is_file()
    assert (share / "ISO/lab-tools.iso").stat().st_size == 4 * disk.MiB
    assert h.run("describe_vm", {"name": name})["vm"]["id"] == vid
    with expect_error("ObjectNotFound"):  # exact name, as the shipped script compares (-ceq)
        h.run("describe_vm", {"name": name.upper()})
    # host paths compare without case, as on Windows
    assert h.paths.local(vm["config_path"].lower()) == h.paths.local(vm["config_path"])
    assert (lab_dir / "hosts/hv1/emulator/state.json").is_file()


def test_save_requires_running_and_start_resumes_the_counter_from_the_vmrs(lab):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    wait_counter(h, vid, 5)
    saved = h.run("save_vm", {"vm_id": vid})["vm"]
    assert saved["state"] == "Saved" and any(p.endswith(".vmrs") for p in saved["state_files"])
    counter = h.vms[vid].counter
    with expect_error("InvalidOperation", "InvalidState,"):
        h.run("save_vm", {"vm_id": vid})
    started = h.run("start_vm", {"vm_id": vid})["vm"]
    assert started["state"] == "Running" and not any(p.endswith(".vmrs") for p in started["state_files"])
    assert h.run("wait_heartbeat", {"vm_id": vid, "timeout_s": 5})["heartbeat"] == "OK"
    wait_counter(h, vid, counter + 3)
    journal = (lab_dir / "guests" / f"{vid}.journal").read_text()
    assert f"save counter={counter} " in journal and f"start resumed_from={counter} " in journal
    assert verify_vm(lab_dir, "vm1")["integrity"] == "ok"


def test_remove_of_a_running_vm_fails_unless_turned_off(lab):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    cfg = h.vms[vid].config_path
    with expect_error("InvalidOperation", "InvalidState"):
        h.run("remove_vm", {"vm_id": vid, "config_path": cfg, "turn_off": False, "delete_paths": [],
                            "roots": roots(h)})
    base = f"D:\\VMs\\hv1\\{vid}\\Virtual Hard Disks\\disk0.vhdx"
    assert h.run("remove_vm", {"vm_id": vid, "config_path": cfg, "turn_off": True, "delete_paths": [base],
                               "roots": roots(h)}) == {"removed": True, "not_ours": None, "deleted": [base], "kept": []}
    assert not (lab_dir / "hosts/hv1/share" / vid).exists()  # folders left empty are gone
    assert h.run("remove_vm", {"vm_id": vid, "config_path": cfg, "turn_off": True, "delete_paths": [],
                               "roots": roots(h)})["removed"] is False
    with expect_error("ObjectNotFound"):
        h.run("describe_vm", {"vm_id": vid})


def test_checkpoint_makes_parents_read_only_and_merge_keeps_every_record(lab):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    wait_counter(h, vid, 3)
    s1 = h.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "m1"})
    wait_counter(h, vid, h.vms[vid].live_counter + 3)
    s2 = h.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "m2"})
    chain = s2["vm"]["disks"][0]["chain"]
    assert len(chain) == 3 and chain[0].endswith(f"disk0_{s2['snapshot']['id']}.avhdx")
    for hp in chain[1:]:
        assert stat.S_IMODE(h.paths.local(hp).stat().st_mode) == 0o444
    assert (lab_dir / "hosts/hv1/share" / vid / "Snapshots" / f"{s1['snapshot']['id'].upper()}.vmcx").is_file()
    wait_counter(h, vid, h.vms[vid].live_counter + 3)
    vm = h.run("remove_snapshots", {"vm_id": vid, "snapshot_ids": [s1["snapshot"]["id"], s2["snapshot"]["id"],
                                                                   "00000000-0000-4000-8000-000000000000"]})["vm"]
    assert vm["snapshots"] == [] and vm["disks"][0]["chain"] == [f"D:\\VMs\\hv1\\{vid}\\Virtual Hard Disks\\disk0.vhdx"]
    assert stat.S_IMODE(h.paths.local(vm["disks"][0]["path"]).stat().st_mode) == 0o644
    wait_counter(h, vid, h.vms[vid].live_counter + 3)  # the writer follows the merged disk
    res = verify_vm(lab_dir, "vm1")
    assert res["integrity"] == "ok" and res["writes_checked"] >= 12, res


def test_checkpoint_is_refused_when_checkpoints_are_disabled(lab):
    _, make = lab
    h = make("hv1")
    vid = new_vm(h, checkpoint_type="Disabled", write_rate_kbps=0)["id"]
    with expect_error("InvalidOperation"):
        h.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "m1"})


def test_a_lab_vm_takes_a_chain_of_user_checkpoints_of_both_kinds_and_verify_checks_every_one(lab):
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h, disks=2, checkpoints=3)
    names = [s["name"] for s in vm["snapshots"]]
    assert names == ["checkpoint 1", "checkpoint 2", "checkpoint 3"] and vm["checkpoint_type"] == "Standard"
    kinds = [sorted(f.rsplit(".", 1)[1] for f in s["files"]) for s in vm["snapshots"]]
    assert kinds == [["vmcx", "vmgs", "vmrs"], ["vmcx", "vmgs"], ["vmcx", "vmgs", "vmrs"]]  # Standard, Production
    assert all(len(d["chain"]) == 4 for d in vm["disks"])  # each checkpoint froze both disks in turn
    res = verify_vm(lab_dir, "vm1")
    assert res["integrity"] == "ok" and res["checkpoints"] == names, res
    # a checkpoint file lost, or the tree out of order, is named
    h.paths.local(vm["snapshots"][1]["files"][1]).unlink()
    res = verify_vm(lab_dir, "vm1")
    assert "checkpoint 'checkpoint 2'" in res["integrity"] and ".vmgs is missing" in res["integrity"], res
    snaps = h.vms[vm["id"]].snapshots
    snaps[0]["disks"], snaps[2]["disks"] = snaps[2]["disks"], snaps[0]["disks"]
    h.registry.save(h.vms[vm["id"]])
    assert "out of order" in verify_vm(lab_dir, "vm1")["integrity"]


@pytest.mark.parametrize("state", ["Off", "Saved"])
def test_a_lab_vm_can_be_made_off_or_saved_after_it_ran_with_its_checkpoints(lab, state):
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h, state=state, checkpoints=1)
    assert vm["state"] == state and [s["name"] for s in vm["snapshots"]] == ["checkpoint 1"]
    assert any(f.endswith(".vmrs") for f in vm["state_files"]) == (state == "Saved")
    res = verify_vm(lab_dir, "vm1")
    assert res["integrity"] == "ok" and res["running_on"] == [] and res["writes_checked"] > 0, res
    with expect_error("InvalidArgument"):
        new_vm(h, "vm2", state="Paused")


def test_checkpoint_vm_is_refused_at_fifty_checkpoints(lab):
    _, make = lab
    h = make("hv1")
    vid = new_vm(h, write_rate_kbps=0, checkpoint_type="Production", checkpoints=50)["id"]
    assert len(h.vms[vid].snapshots) == 50
    with expect_error("LimitsExceeded"):
        h.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "one more"})
    with expect_error("InvalidArgument"):
        new_vm(h, "vm2", checkpoints=51)


def test_describe_reports_unknown_and_ambiguous_names(lab):
    _, make = lab
    h = make("hv1")
    a = new_vm(h, "twin", write_rate_kbps=0)["id"]
    b = new_vm(h, "twin", write_rate_kbps=0)["id"]
    with expect_error("ObjectNotFound", "VMNotFound") as e:
        h.run("describe_vm", {"name": "nobody"})
    assert '"nobody"' in e.error.message
    with expect_error("InvalidResult", "AmbiguousVMName") as e:
        h.run("describe_vm", {"name": "twin"})
    assert a in e.error.message and b in e.error.message


@pytest.mark.parametrize("path,category", [
    ("D:\\VMs\\hv1\\..\\hv2\\x.vhdx", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a/../../etc\\passwd", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\.\\b", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\b. ", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\disk.vhdx:stream", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a::$INDEX_ALLOCATION", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\NUL.vhdx", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\com1", "InvalidArgument"),
    ("D:\\VMs\\hv1\\a\\LPT\u00b2.txt", "InvalidArgument"),
    ("D:\\VMs\\hv2\\x.vhdx", "PermissionDenied"),
    ("C:\\Windows\\System32\\config\\SAM", "PermissionDenied"),
    ("\\\\?\\D:\\VMs\\hv1\\x.vhdx", "PermissionDenied"),
    ("\\\\.\\PhysicalDrive0", "PermissionDenied"),
    ("D:\\VMs\\hv1", "PermissionDenied"),
])
def test_paths_from_the_network_are_checked_strictly(lab, path, category):
    _, make = lab
    h = make("hv1")
    with expect_error(category):
        h.run("delete_files", {"paths": [path], "roots": roots(h)})


def test_delete_refuses_a_symlink_escape_and_files_in_use(lab):
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0)
    outside = lab_dir / "outside.txt"
    outside.write_text("keep")
    (lab_dir / "hosts/hv1/share/link").symlink_to(lab_dir)
    with expect_error("PermissionDenied"):
        h.run("delete_files", {"paths": ["D:\\VMs\\hv1\\link\\outside.txt"], "roots": roots(h)})
    assert outside.exists()
    used = h.run("delete_files", {"paths": [vm["disks"][0]["path"]], "roots": roots(h)})
    assert used == {"deleted": [], "kept": [{"path": vm["disks"][0]["path"], "used_by": f"vm1 ({vm['id']})"}]}
    assert h.paths.local(vm["disks"][0]["path"]).is_file()
    assert h.run("delete_files", {"paths": ["D:\\VMs\\hv1\\nothing.txt"], "roots": roots(h)}) == \
        {"deleted": [], "kept": []}


def test_host_info_reports_versions_switches_and_room(lab):
    _, make = lab
    info = make("hv1").run("host_info", {})
    assert info["supported_versions"] == ["9.0", "10.0"] and info["switches"] == ["lab-switch"]
    assert info["cpu_vendor"] == "GenuineIntel" and info["free_bytes"] > 0 and info["name"] == "hv1"


def test_heartbeat_of_a_vm_that_is_not_running_fails_at_once(lab):
    _, make = lab
    h = make("hv1")
    vid = new_vm(h, start=False, write_rate_kbps=0)["id"]
    t0 = time.monotonic()
    with expect_error("InvalidOperation", "InvalidState"):
        h.run("wait_heartbeat", {"vm_id": vid, "timeout_s": 30})
    assert time.monotonic() - t0 < 1


def test_a_restarted_host_brings_running_vms_back_and_verify_still_agrees(lab):
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    wait_counter(h, vid, 5)
    h.shutdown()
    again = make("hv1")
    assert again.vms[vid].state == "Running"
    wait_counter(again, vid, again.vms[vid].live_counter + 3)
    assert "recover resumed_from=" in (lab_dir / "guests" / f"{vid}.journal").read_text()
    assert verify_vm(lab_dir, "vm1")["integrity"] == "ok"


def test_verify_reports_lost_writes_and_two_running_copies(lab):
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h)
    vid = vm["id"]
    wait_counter(h, vid, 5)
    h.run("save_vm", {"vm_id": vid})
    base = h.paths.local(vm["disks"][0]["path"])
    with open(base, "r+b") as f:  # lose the last two records
        f.truncate(base.stat().st_size - 2 * disk.RECORD_BYTES)
    res = verify_vm(lab_dir, "vm1")
    assert "acknowledged writes missing" in res["integrity"] and res["running_on"] == []


def test_journal_rules_catch_a_resume_from_stale_memory():
    entries = parse_journal_text("start resumed_from=cold disk_seq=0 host=hv1\n1\n2\nsave counter=2 host=hv1\n"
                                 "start resumed_from=1 host=hv2\n2\n")
    acked, problems, _ = check_journal(entries)
    assert acked == [1, 2, 2]
    assert any("resumed_from=1 but the last save had counter=2" in p for p in problems)
    assert any("acknowledged twice" in p for p in problems)
    _, problems, _ = check_journal(parse_journal_text(
        "start resumed_from=cold disk_seq=0 host=hv1\n1\nstart resumed_from=1 host=hv2\n2\n"))
    assert any("while running on hv1" in p for p in problems)


def parse_journal_text(text: str):
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".journal", delete=False) as f:
        f.write(text)
    try:
        return parse_journal(Path(f.name))
    finally:
        os.unlink(f.name)


def test_file_hash_is_the_copy_engines_digest_or_the_sha256_of_the_file_on_the_host_and_refuses_folders(lab):
    lab_dir, make = lab
    h = make("hv1")
    block = 8 * 1024 * 1024
    data = os.urandom(2 * block + 7)  # two full blocks and a short one
    (lab_dir / "hosts/hv1/share/sub").mkdir()
    (lab_dir / "hosts/hv1/share/sub/d.vhdx.partial").write_bytes(data)
    path = "D:\\VMs\\hv1\\sub\\d.vhdx.partial"
    chunked = hashlib.sha256(b"".join(hashlib.sha256(data[o:o + block]).digest()
                                      for o in range(0, len(data), block))).hexdigest()
    got = h.run("file_hash", {"path": path, "scheme": "sha256-chunks-8MiB"})
    assert got == {"path": path, "scheme": "sha256-chunks-8MiB", "digest": chunked}
    got = h.run("file_hash", {"path": path, "scheme": "sha256"})
    assert got == {"path": path, "scheme": "sha256", "digest": hashlib.sha256(data).hexdigest()}
    each = [hashlib.sha256(data[o:o + block]).hexdigest() for o in range(0, len(data), block)]
    got = h.run("file_hash", {"path": path, "scheme": "sha256-chunks-8MiB", "first": 1, "count": 5})
    assert got["chunks"] == each[1:] and got["first"] == 1
    for bad in ({"first": -1, "count": 1}, {"first": 0, "count": 0}, {"first": 0, "count": 129},
                {"first": True, "count": 1}, {"first": 0}, {"count": 1}, {"first": 0, "count": 1.5}):
        with expect_error("InvalidArgument"):
            h.run("file_hash", {"path": path, "scheme": "sha256-chunks-8MiB", **bad})
    with expect_error("InvalidArgument"):
        h.run("file_hash", {"path": path, "scheme": "sha256", "first": 0, "count": 1})
    with expect_error("InvalidArgument"):
        h.run("file_hash", {"path": path, "scheme": "md5"})
    with expect_error("InvalidArgument"):
        h.run("file_hash", {"path": path})
    with expect_error("InvalidArgument"):
        h.run("file_hash", {"path": "D:\\VMs\\hv1\\sub", "scheme": "sha256-chunks-8MiB"})
    with expect_error("InvalidArgument"):
        h.run("file_hash", {"path": "D:\\VMs\\hv1\\sub\\missing.vhdx", "scheme": "sha256-chunks-8MiB"})
    with expect_error("PermissionDenied"):
        h.run("file_hash", {"path": "D:\\VMs\\hv2\\x.vhdx", "scheme": "sha256-chunks-8MiB"})


# -- what quickmig did not create: same-id VMs, shared parents, the roots -------------------

GOLDEN = "D:\\VMs\\hv1\\Golden\\base.vhdx"


def test_a_vm_can_be_made_with_a_given_id_in_a_folder_of_its_own_but_never_twice_on_a_host(lab):
    _, make = lab
    h1, h2 = make("hv1"), make("hv2")
    vid = new_vm(h1, "primary", write_rate_kbps=0)["id"]
    replica = new_vm(h2, "primary", vm_id=vid.upper(), start=False, path=f"D:\\VMs\\hv2\\Hyper-V Replica\\{vid}")
    assert replica["id"] == vid and replica["path"] == f"D:\\VMs\\hv2\\Hyper-V Replica\\{vid}"
    assert replica["config_path"].startswith(replica["path"] + "\\Virtual Machines\\")
    with expect_error("ResourceExists"):
        new_vm(h2, "again", vm_id=vid, start=False)
    for bad in ("not-a-guid", 7):
        with expect_error("InvalidArgument"):
            new_vm(h2, "bad", vm_id=bad, start=False)
    with expect_error("InvalidArgument"):
        new_vm(h2, "elsewhere", path="E:\\Replica")


def test_two_vms_on_one_golden_parent_each_boot_and_write_their_own_child(lab):
    lab_dir, make = lab
    h = make("hv1")
    a = new_vm(h, "gold-a", parent=GOLDEN)
    b = new_vm(h, "gold-b", parent=GOLDEN)
    for vm in (a, b):
        assert vm["disks"][0]["chain"][1:] == [GOLDEN]
        wait_counter(h, vm["id"], 3)
    assert stat.S_IMODE(h.paths.local(GOLDEN).stat().st_mode) == 0o444  # a parent is read-only
    assert disk.read_records(h.paths.local(GOLDEN)) == []
    for name in ("gold-a", "gold-b"):
        assert verify_vm(lab_dir, name)["integrity"] == "ok"
    with expect_error("InvalidArgument"):
        new_vm(h, "gold-c", parent="D:\\VMs\\hv1\\Golden\\..\\x.vhdx")


@pytest.mark.parametrize("other_running", [True, False])
def test_removing_a_vm_keeps_the_golden_parent_another_vm_uses_and_that_vm_still_boots(lab, other_running):
    lab_dir, make = lab
    h = make("hv1")
    a = new_vm(h, "gold-a", parent=GOLDEN)
    b = new_vm(h, "gold-b", parent=GOLDEN, start=other_running)
    h.run("checkpoint_vm", {"vm_id": a["id"], "snapshot_name": "quickmig-x"})
    h.run("save_vm", {"vm_id": a["id"]})
    gone = h.run("describe_vm", {"vm_id": a["id"]})["vm"]
    files = gone["disks"][0]["chain"] + gone["state_files"] + [s["config_path"] for s in gone["snapshots"]]
    out = h.run("remove_vm", {"vm_id": a["id"], "config_path": gone["config_path"], "turn_off": False,
                              "delete_paths": files, "roots": roots(h)})
    assert out["removed"] and out["not_ours"] is None
    assert out["kept"] == [{"path": GOLDEN, "used_by": f"gold-b ({b['id']})"}]
    assert h.paths.local(GOLDEN).is_file() and not (lab_dir / "hosts/hv1/share" / a["id"]).exists()
    if not other_running:
        h.run("start_vm", {"vm_id": b["id"]})
    assert h.run("wait_heartbeat", {"vm_id": b["id"], "timeout_s": 5})["heartbeat"] == "OK"
    wait_counter(h, b["id"], h.vms[b["id"]].live_counter + 3)
    assert verify_vm(lab_dir, "gold-b")["integrity"] == "ok"
    # with no other VM left on it, the golden parent goes like any file of the VM
    h.run("stop_vm", {"vm_id": b["id"]})
    chain = h.run("describe_vm", {"vm_id": b["id"]})["vm"]["disks"][0]["chain"]
    out = h.run("remove_vm", {"vm_id": b["id"], "config_path": h.vms[b["id"]].config_path, "turn_off": False,
                              "delete_paths": chain, "roots": roots(h)})
    assert out["deleted"] == chain and out["kept"] == [] and not h.paths.local(GOLDEN).exists()


def test_remove_vm_leaves_a_vm_with_the_id_but_another_configuration_alone_running_or_not(lab):
    lab_dir, make = lab
    h = make("hv2")
    vid = "6ddc63c1-0135-40ca-b998-a606d91080e9"
    replica = new_vm(h, "replica", vm_id=vid, path=f"D:\\VMs\\hv2\\Hyper-V Replica\\{vid}")
    wait_counter(h, vid, 3)
    ours_cfg = f"D:\\VMs\\hv2\\{vid}\\Virtual Machines\\{vid.upper()}.vmcx"
    ours = [f"D:\\VMs\\hv2\\{vid}\\Virtual Hard Disks\\disk0.vhdx", ours_cfg]
    for hp in ours:
        h.paths.local(hp).parent.mkdir(parents=True, exist_ok=True)
        h.paths.local(hp).write_bytes(b"copied by a migration")
    out = h.run("remove_vm", {"vm_id": vid, "config_path": ours_cfg, "turn_off": True,
                              "delete_paths": ours + [replica["disks"][0]["path"]], "roots": roots(h)})
    assert out["removed"] is False and "left untouched" in out["not_ours"] and replica["config_path"] in out["not_ours"]
    assert out["deleted"] == ours and out["kept"] == [{"path": replica["disks"][0]["path"],
                                                       "used_by": f"replica ({vid})"}]
    assert h.vms[vid].state == "Running" and h.paths.local(replica["disks"][0]["path"]).is_file()
    assert not (lab_dir / "hosts/hv2/share" / vid).exists()
    wait_counter(h, vid, h.vms[vid].live_counter + 3)


def test_remove_vm_merges_the_checkpoints_before_it_removes_the_vm(lab):
    """Remove-VM.md: a removed VM's checkpoints are merged into its disks after it is gone;
    remove_vm merges them first (Remove-VMSnapshot), so nothing merges while it deletes."""
    lab_dir, make = lab
    h = make("hv1")
    vid = new_vm(h)["id"]
    wait_counter(h, vid, 3)
    snap = h.run("checkpoint_vm", {"vm_id": vid, "snapshot_name": "quickmig-x"})
    leaf, base = snap["vm"]["disks"][0]["chain"]
    wait_counter(h, vid, h.vms[vid].live_counter + 3)
    h.run("save_vm", {"vm_id": vid})
    counter = h.vms[vid].counter
    out = h.run("remove_vm", {"vm_id": vid, "config_path": h.vms[vid].config_path, "turn_off": False,
                              "delete_paths": [], "roots": roots(h)})
    assert out["removed"] and not h.paths.local(leaf).exists()
    assert not h.paths.local(snap["snapshot"]["config_path"]).exists()
    assert max(disk.read_records(h.paths.local(base))) == counter  # the leaf's records are in the base now


def test_nothing_is_deleted_while_some_vms_disk_chain_cannot_be_read(lab):
    _, make = lab
    h = make("hv1")
    other = new_vm(h, "other", write_rate_kbps=0, start=False)
    (h.paths.share / "stray.txt").write_text("x")
    h.paths.local(other["disks"][0]["path"]).write_bytes(b"not a disk any more")
    with expect_error("ReadError", "DiskChainUnreadable"):
        h.run("delete_files", {"paths": ["D:\\VMs\\hv1\\stray.txt"], "roots": roots(h)})
    assert (h.paths.share / "stray.txt").is_file()
    h.paths.local(other["disks"][0]["path"]).unlink()  # a file that is not there ends a broken chain
    assert h.run("delete_files", {"paths": ["D:\\VMs\\hv1\\stray.txt"], "roots": roots(h)})["deleted"] == \
        ["D:\\VMs\\hv1\\stray.txt"]


@pytest.mark.parametrize("roots_arg, category", [
    (None, "InvalidArgument"), ([], "InvalidArgument"), ("D:\\VMs\\hv1", "InvalidArgument"),
    (["D:\\VMs\\hv1\\a\\..\\b"], "InvalidArgument"),
    (["D:\\VMs\\hv2"], "InvalidArgument"), (["C:\\"], "InvalidArgument"),
])
def test_scripts_that_delete_or_write_refuse_roots_that_confine_nothing(lab, roots_arg, category):
    _, make = lab
    h = make("hv1")
    with expect_error(category):
        h.run("delete_files", {"paths": [], "roots": roots_arg})


def test_every_path_is_confined_to_the_roots_given_before_anything_changes(lab):
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0, start=False)
    keep = h.paths.share / "keep.txt"
    keep.write_text("not quickmig's")
    narrow = [f"D:\\VMs\\hv1\\{vm['id']}"]
    mine = f"D:\\VMs\\hv1\\{vm['id']}\\copied.txt"
    h.paths.local(mine).write_text("ours")
    fix = {"path": vm["disks"][0]["path"], "parent_path": "D:\\VMs\\hv1\\keep.txt"}
    for op, args in (
            ("delete_files", {"paths": [mine, "D:\\VMs\\hv1\\keep.txt"], "roots": narrow}),
            ("remove_vm", {"vm_id": vm["id"], "config_path": vm["config_path"], "turn_off": True,
                           "delete_paths": [mine, "D:\\VMs\\hv1\\keep.txt"], "roots": narrow}),
            ("remove_vm", {"vm_id": vm["id"], "config_path": "D:\\VMs\\hv1\\x\\..\\y.vmcx", "turn_off": True,
                           "delete_paths": [], "roots": roots(h)}),
            ("reparent_disks", {"parent_fixes": [fix], "roots": narrow}),
            ("import_vm", {"config_path": vm["config_path"], "disk_paths": {}, "iso_paths": {},
                           "parent_fixes": [fix], "roots": narrow})):
        with expect_error("InvalidArgument"):
            h.run(op, args)
    assert keep.read_text() == "not quickmig's" and h.paths.local(mine).read_text() == "ours"
    assert vm["id"] in h.vms


def test_a_link_below_the_root_is_refused_even_when_it_stays_inside_the_storage(lab):
    """Assert-QmPath refuses any reparse point below the root: a junction inside vm_root could
    make one VM's folder another's. DeleteFile deletes a link, not its target; Set-VHD and
    icacls would follow it."""
    lab_dir, make = lab
    h = make("hv1")
    vm = new_vm(h, write_rate_kbps=0, start=False)
    (h.paths.share / "alias").symlink_to(h.paths.share / vm["id"])
    via = "D:\\VMs\\hv1\\alias\\Virtual Hard Disks\\disk0.vhdx"
    with expect_error("InvalidArgument", "PathRefused"):
        h.run("delete_files", {"paths": [via], "roots": roots(h)})
    with expect_error("InvalidArgument", "PathRefused"):
        h.run("reparent_disks", {"parent_fixes": [{"path": via, "parent_path": via}], "roots": roots(h)})
    assert h.paths.local(vm["disks"][0]["path"]).is_file()


def test_a_vm_has_disks_in_several_storage_folders_and_each_holds_its_share_of_the_guests_writes(lab):
    """`add-vm --disks N --disk-folder`: disks on SCSI 0:0.. in any storage folder of the host;
    the guest writes to each in turn, Start-VM needs every disk's chain, verify checks each disk.
    At most 4 SCSI controllers of 64 disks (Plan for Hyper-V scalability: 256 virtual SCSI disks)."""
    lab_dir, _ = lab
    (lab_dir / "quickmig.toml").write_text(emulated.config({"hv1": "D:\\VMs\\hv1", "hv2": "D:\\VMs\\hv2"}).replace(
        "vm_root = 'D:\\VMs\\hv1'\nsmb_server = \"127.0.0.1\"\nsmb_share = \"hv1\"",
        "storage = [{ path = 'D:\\VMs\\hv1', share = \"hv1\", name = \"vms\" },\n"
        "           { path = 'E:\\Data\\hv1', share = \"hv1-data\", name = \"data\" }]\nsmb_server = \"127.0.0.1\""))
    h = HyperVHost(lab_dir, "hv1", "D:\\VMs\\hv1", more_storage=[("E:\\Data\\hv1", "hv1-data")])
    try:
        with pytest.raises(OpError, match="disks must be a whole number from 1 to 256"):
            new_vm(h, "too-many", disks=257)
        with pytest.raises(OpError, match="disk_folders must be folders under"):
            new_vm(h, "elsewhere", disks=2, disk_folders=["C:\\Temp"])
        vm = new_vm(h, "spread", disks=3, disk_folders=["D:\\VMs\\hv1\\spread", "E:\\Data\\hv1\\spread"])
        assert [(d["controller_location"], d["path"]) for d in vm["disks"]] == [
            (0, "D:\\VMs\\hv1\\spread\\disk0.vhdx"), (1, "E:\\Data\\hv1\\spread\\disk1.vhdx"),
            (2, "D:\\VMs\\hv1\\spread\\disk2.vhdx")]
        assert (lab_dir / "hosts" / "hv1" / "shares" / "hv1-data" / "spread" / "disk1.vhdx").is_file()
        wait_counter(h, vm["id"], 9)
        h.run("save_vm", {"vm_id": vm["id"]})
        for i, d in enumerate(vm["disks"]):  # record n went to disk (n - 1) % 3
            seqs = disk.scan_records(h.paths.local(d["path"])).seqs
            assert seqs and all((s - 1) % 3 == i for s in seqs)
        res = verify_vm(lab_dir, "spread")
        assert res["integrity"] == "ok" and res["disks"] == 3, res["problems"]
        second = h.paths.local(vm["disks"][1]["path"])
        with open(second, "r+b") as f:  # the data disk loses its last record
            f.truncate(second.stat().st_size - disk.RECORD_BYTES)
        res = verify_vm(lab_dir, "spread")
        assert any("missing from disk 1 (E:\\Data\\hv1\\spread\\disk1.vhdx)" in p for p in res["problems"])
        os.rename(h.paths.local(vm["disks"][2]["path"]), h.paths.local(vm["disks"][2]["path"]).with_suffix(".gone"))
        with pytest.raises(OpError, match="cannot find the file"):
            h.run("start_vm", {"vm_id": vm["id"]})
    finally:
        h.shutdown()


def test_a_generation_1_vm_has_its_startup_disk_and_the_next_three_on_ide_and_the_rest_on_scsi(lab):
    """Plan for Hyper-V scalability: 4 virtual IDE disks, the startup disk on one of them; then
    4 SCSI controllers of 64. Generation 2 has no IDE controller."""
    _, make = lab
    h = make("hv1")
    with pytest.raises(OpError, match="generation must be 1 or 2"):
        new_vm(h, "gen3", generation=3)
    with pytest.raises(OpError, match="from 1 to 260"):
        new_vm(h, "gen1-too-many", generation=1, disks=261)
    vm = new_vm(h, "gen1", generation=1, disks=5, write_rate_kbps=0)
    assert vm["generation"] == 1
    assert [(d["controller_type"], d["controller_number"], d["controller_location"]) for d in vm["disks"]] == [
        ("IDE", 0, 0), ("IDE", 0, 1), ("IDE", 1, 0), ("IDE", 1, 1), ("SCSI", 0, 0)]
    assert vm["disks"][0]["path"].endswith("\\disk0.vhdx")
