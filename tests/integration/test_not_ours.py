"""Nothing quickmig did not create is touched, in the lab (real Redis, Samba, workers; emulated
Hyper-V): a VM with the migrating VM's id on the destination (a Hyper-V Replica replica keeps
its primary's id), a golden parent disk another VM on the source shares, and paths in a
migration record that lead out of the host's roots or name another VM's files."""
import hashlib
import json
import time

import pytest

from producer.migrations import MigrationRequest, Producer
from tests.integration.test_migration import migrate, migrate_refused
from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError
from workers.model.hostpaths import HostPathError
from workers.model.record import Store

pytestmark = pytest.mark.integration


def share(lab, host: str):
    return lab.dir / "hosts" / host / "share"


def local(lab, host: str, host_path: str):
    root = lab.cfg.host(host).vm_root
    assert host_path.lower().startswith(root.lower() + "\\"), host_path
    return share(lab, host).joinpath(*host_path[len(root) + 1:].split("\\"))


def vm_on(lab, host: str, name: str) -> dict | None:
    return next((v for v in lab.emulator(host).state()["vms"] if v["name"] == name), None)


def fingerprint(lab, host: str, name: str) -> dict:
    """What 'untouched' means for a VM: its registration as the host reports it and every
    file of its folder and disk chain, byte for byte, with its modification time."""
    vm = vm_on(lab, host, name)
    assert vm is not None, f"{name} is not on {host}"
    files = {p for p in local(lab, host, vm["path"]).rglob("*") if p.is_file()}
    files |= {local(lab, host, hp) for d in vm["disks"] for hp in d["chain"]}
    return {"vm": {k: vm[k] for k in ("id", "state", "path", "config_path", "disks", "snapshots", "state_files")},
            "files": {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
                      for p in sorted(files)}}


def events_of(lab, vm_id: str) -> list[tuple[str, str]]:
    lines = (lab.dir / "events.jsonl").read_text().splitlines()
    # VM events only: a file event carries the path it was about
    return [(e["host"], e["event"]) for e in map(json.loads, lines) if e.get("vm_id") == vm_id and "path" not in e]


def driver(lab, host: str) -> HyperVDriver:
    return HyperVDriver(lab.cfg.host(host), lab.cfg.credentials(host))


def wait_state(lab, mid: str, states: tuple[str, ...], bound_s: float = 180) -> dict:
    store, deadline = Store(lab.redis()), time.monotonic() + bound_s
    while (rec := store.get(mid))["state"] not in states:
        assert time.monotonic() < deadline, f"{mid} is still {rec['state']} after {bound_s}s: {rec.get('error')}"
        time.sleep(0.1)
    return rec


# -- item 3: a VM with the same id on the destination -----------------------------------------

def replica_of(lab, vm: dict, host: str, name: str) -> dict:
    """A Hyper-V Replica replica of `vm` on `host`: the primary's id, off, in the replica folder."""
    root = lab.cfg.host(host).vm_root
    return lab.add_vm(name, host, vm_id=vm["id"], start=False, write_rate_kbps=0,
                      path=f"{root}\\Hyper-V Replica\\{vm['id']}")


def test_a_same_id_vm_on_the_destination_is_refused_before_the_checkpoint_and_left_untouched(lab):
    vm = lab.add_vm("sameid-a", "hv1")
    replica_of(lab, vm, "hv3", "sameid-a-replica")
    before = fingerprint(lab, "hv3", "sameid-a-replica")
    rec = migrate_refused(lab, "sameid-a", "hv1", "hv3")
    for words in ("pre-flight refused", "hv3 already has a VM with the id of sameid-a", vm["id"],
                  "'sameid-a-replica'", "Hyper-V Replica", "Remove-VMReplication", "choose another destination"):
        assert words in rec["error"], rec["error"]
    # refused before the checkpoint: none was ever taken, nothing was copied, the VM never stopped
    assert rec.get("checkpoint_at") is None and rec.get("snapshot") is None
    assert rec["bytes_copied"] == 0 and "copied_by_kind" not in rec
    assert [e for h, e in events_of(lab, vm["id"]) if h == "hv1"] == ["create", "start"]
    check = lab.verify("sameid-a")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    # and the replica is still there, untouched
    assert fingerprint(lab, "hv3", "sameid-a-replica") == before
    assert [e for h, e in events_of(lab, vm["id"]) if h == "hv3"] == ["create"]


@pytest.mark.parametrize("appears_during, then", [
    ("checkpoint_vm", "prepare refuses it"),      # after pre-flight, before the copy
    ("compare_vm", "prepare's Compare-VM -Register refuses the id"),  # after prepare's look, during its validation
    ("save_vm", "the cutover's Import-VM -Register refuses the id"),  # in the downtime, before the import
])
def test_a_same_id_vm_that_appears_later_is_never_removed_by_the_rollback(lab, appears_during, then):
    """Only a VM this migration imported (from the configuration it copied) is removed: a
    rollback that finds another VM with the id, whenever it appeared, leaves it as it is."""
    name = f"sameid-late-{appears_during}"
    vm = lab.add_vm(name, "hv1")
    faulty = lab.emulator("hv3" if appears_during == "compare_vm" else "hv1")
    faulty.inject_fault(op=appears_during, action="delay", seconds=4, times=1)
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv3")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        wait_state(lab, mid, {"checkpoint_vm": ("snapshotting",), "compare_vm": ("preparing",),
                              "save_vm": ("cutting_over",)}[appears_during])
        time.sleep(1)  # the delayed operation has started
        replica_of(lab, vm, "hv3", f"{name}-replica")
        before = fingerprint(lab, "hv3", f"{name}-replica")
        rec = wait_state(lab, mid, ("rolled_back", "failed", "completed"))
    finally:
        faulty.clear_faults()
    assert rec["state"] == "rolled_back", rec
    if appears_during == "checkpoint_vm":
        assert "already has a VM with the id" in rec["error"], rec
    elif appears_during == "compare_vm":  # validation registers the copied configuration as the import would
        assert rec["error"].startswith("prepare: ") and "already exists" in rec["error"], rec
    else:
        assert rec["error"].startswith("cutover: ") and "already exists" in rec["error"], rec
        assert rec.get("import_started_at"), rec
    if appears_during != "save_vm":
        assert rec.get("import_started_at") is None and rec.get("save_started_at") is None, rec
    assert fingerprint(lab, "hv3", f"{name}-replica") == before, then
    assert ("hv3", "remove") not in events_of(lab, vm["id"])
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    # what the migration copied is gone from the destination, the replica's folder aside
    assert not (share(lab, "hv3") / vm["id"]).exists()


# -- item 4: a golden parent shared on the source ----------------------------------------------

@pytest.mark.parametrize("other", ["running", "off"])
def test_a_golden_parent_another_vm_shares_on_the_source_survives_the_migration(lab, other):
    golden = f"D:\\VMs\\hv1\\Golden\\base-{other}.vhdx"
    a = lab.add_vm(f"gold-a-{other}", "hv1", parent=golden)
    b = lab.add_vm(f"gold-b-{other}", "hv1", parent=golden, start=other == "running")
    assert a["disks"][0]["chain"][-1] == b["disks"][0]["chain"][-1] == golden
    digest = hashlib.sha256(local(lab, "hv1", golden).read_bytes()).hexdigest()
    res, rec = migrate(lab, f"gold-a-{other}", "hv1", "hv2")
    assert rec["state"] == "completed", rec["error"]
    # the parent the other VM uses is still there, unchanged; the migrated VM's own files are gone
    assert hashlib.sha256(local(lab, "hv1", golden).read_bytes()).hexdigest() == digest
    assert not (share(lab, "hv1") / a["id"]).exists()
    check = lab.verify(f"gold-a-{other}")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check
    moved = vm_on(lab, "hv2", f"gold-a-{other}")["disks"][0]["chain"]
    assert moved[-1] == golden.replace("\\hv1\\", "\\hv2\\", 1)  # its own copy of the parent there
    # and the other VM still runs (or still boots) on it
    if other == "off":
        driver(lab, "hv1").start_vm(b["id"])
    driver(lab, "hv1").wait_heartbeat(b["id"], 30)
    time.sleep(0.5)
    check = lab.verify(f"gold-b-{other}")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check


# -- item 5: paths from a host or a record ------------------------------------------------------

def held_before_its_window(lab, producer: Producer, name: str, source: str, destination: str) -> str:
    """A migration that copies everything, then waits an hour for its cutover window."""
    opens = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600)) + "Z"
    mid = producer.enqueue(MigrationRequest(name, source, destination, {"not_before": opens, "window": "10m"}))["id"]
    deadline = time.monotonic() + 180
    while not producer.get(mid).get("waiting", "").startswith("waiting for the cutover window"):
        assert time.monotonic() < deadline, producer.get(mid)
        time.sleep(0.2)
    return mid


def test_a_forged_record_cannot_make_the_rollback_delete_anything_outside_the_roots_or_another_vms_files(lab):
    producer = Producer(lab.cfg)
    lab.add_vm("forge-mover", "hv1")
    victim = lab.add_vm("forge-victim", "hv2", start=False, write_rate_kbps=0)
    bystander = lab.add_vm("forge-bystander", "hv3", start=False, write_rate_kbps=0)
    loose = share(lab, "hv2") / "admin-notes.txt"
    loose.write_text("not quickmig's")
    victims = {"victim": fingerprint(lab, "hv2", "forge-victim"),
               "bystander": fingerprint(lab, "hv3", "forge-bystander")}
    disk = victim["disks"][0]["path"]
    mid = held_before_its_window(lab, producer, "forge-mover", "hv1", "hv2")
    ours = list(producer.get(mid)["created_files"])
    forged = [
        disk,                                                         # another VM's disk, inside the root
        victim["config_path"],                                        # and its configuration
        f"D:\\VMs\\hv2\\{victim['id']}\\..\\admin-notes.txt",         # a way up
        "D:\\VMs\\hv2\\x/../admin-notes.txt",                         # a way up the Windows API reads
        "D:\\VMs\\hv2\\admin-notes.txt:Zone.Identifier",              # an alternate data stream
        f"D:\\VMs\\hv2\\{victim['id']}::$INDEX_ALLOCATION",            # the folder itself
        "D:\\VMs\\hv2\\admin-notes.txt.",                              # Windows drops the period
        "\\\\?\\D:\\VMs\\hv2\\admin-notes.txt",                         # no parsing at all
        bystander["disks"][0]["path"],                                # another host's root
        "C:\\Windows\\System32\\config\\SAM",
    ]
    Store(lab.redis()).update(mid, lambda r: r["created_files"].extend(forged))
    producer.cancel(mid)
    rec = producer.wait(mid, timeout_s=180)
    assert rec["state"] == "rolled_back", rec
    # refused in Python, each named in the record; the others were kept by the host's own walk
    refused = rec.get("paths_refused") or []
    for p in forged[2:]:
        assert any(r.startswith(repr(p)) for r in refused), (p, refused)
    assert all(any(r.startswith(repr(p)[:-1]) for p in forged[2:]) for r in refused), refused  # or their .partial
    assert fingerprint(lab, "hv2", "forge-victim") == victims["victim"]
    assert fingerprint(lab, "hv3", "forge-bystander") == victims["bystander"]
    assert loose.read_text() == "not quickmig's"
    # what the migration made is gone
    mover = vm_on(lab, "hv1", "forge-mover")
    assert not (share(lab, "hv2") / mover["id"]).exists()
    assert all(not local(lab, "hv2", p).exists() for p in ours if "\\ISO\\" not in p)
    check = lab.verify("forge-mover")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check


@pytest.mark.parametrize("path", [
    "D:\\VMs\\hv2\\{id}\\Virtual Hard Disks\\..\\..\\keep.txt",
    "D:\\VMs\\hv2\\{id}/../keep.txt",
    "D:\\VMs\\hv2\\keep.txt:stream",
    "D:\\VMs\\hv2\\keep.txt::$DATA",
    "D:\\VMs\\hv2\\keep.txt ",
    "D:\\VMs\\hv2\\{id}\\NUL.vhdx",
    "\\\\?\\D:\\VMs\\hv2\\keep.txt",
    "\\\\.\\D:\\VMs\\hv2\\keep.txt",
])
def test_the_host_script_refuses_a_bad_path_itself_and_touches_nothing(lab, path):
    """Python refuses these before any script is sent (driver.delete_files, driver.remove_vm,
    driver.reparent_disks); sent as they are, the host's scripts refuse them again."""
    name = "paths-victim"
    vm = vm_on(lab, "hv2", name) or lab.add_vm(name, "hv2", start=False, write_rate_kbps=0)
    keep = share(lab, "hv2") / "keep.txt"
    keep.write_text("keep")
    before = fingerprint(lab, "hv2", name)
    path = path.format(id=vm["id"])
    drv, roots = driver(lab, "hv2"), ["D:\\VMs\\hv2"]
    with pytest.raises(HostPathError):
        drv.delete_files([path])
    with pytest.raises(HostPathError):
        drv.remove_vm(vm["id"], vm["config_path"], turn_off=True, delete_paths=[path])
    with pytest.raises(HostPathError):
        drv.reparent_disks([{"path": vm["disks"][0]["path"], "parent_path": path}])
    for op, args in (("delete_files", {"paths": [path], "roots": roots}),
                     ("remove_vm", {"vm_id": vm["id"], "config_path": vm["config_path"], "turn_off": True,
                                    "delete_paths": [path], "roots": roots}),
                     ("remove_vm", {"vm_id": vm["id"], "config_path": path, "turn_off": True,
                                    "delete_paths": [], "roots": roots}),
                     ("reparent_disks", {"parent_fixes": [{"path": vm["disks"][0]["path"], "parent_path": path}],
                                         "roots": roots})):
        with pytest.raises(HyperVError):
            drv.run(op, args)
    assert keep.read_text() == "keep" and fingerprint(lab, "hv2", name) == before


def test_the_host_script_confines_every_path_to_the_roots_it_is_given(lab):
    name = "roots-victim"
    vm = vm_on(lab, "hv2", name) or lab.add_vm(name, "hv2", start=False, write_rate_kbps=0)
    before = fingerprint(lab, "hv2", name)
    elsewhere = ["D:\\VMs\\hv2\\Golden"]  # a root that does not hold the VM's files
    drv = driver(lab, "hv2")
    for op, args in (("delete_files", {"paths": [vm["disks"][0]["path"]], "roots": elsewhere}),
                     ("remove_vm", {"vm_id": vm["id"], "config_path": vm["config_path"], "turn_off": True,
                                    "delete_paths": [], "roots": elsewhere}),
                     ("delete_files", {"paths": [vm["disks"][0]["path"]], "roots": ["D:\\"]}),
                     ("delete_files", {"paths": [vm["disks"][0]["path"]], "roots": []})):
        with pytest.raises(HyperVError) as e:
            drv.run(op, args)
        assert "refused" in str(e.value).lower() or "roots" in str(e.value), e.value
    assert fingerprint(lab, "hv2", name) == before


def test_lab_add_vm_makes_a_vm_on_a_golden_parent_and_refuses_an_id_the_host_has(lab):
    golden = "D:\\VMs\\hv2\\Golden\\cli.vhdx"
    res, vm = lab.cli_json("lab", "add-vm", "cli-gold", "--host", "hv2", "--parent", golden, "--disk-mb", "8",
                           "--memory-mb", "16", "--json")
    assert res.returncode == 0 and vm["disks"][0]["chain"][1:] == [golden], res.stderr
    res = lab.cli("lab", "add-vm", "cli-twin", "--host", "hv2", "--id", vm["id"], "--disk-mb", "8")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "already exists on hv2" in res.stderr and vm["id"] in res.stderr
