"""The switchover (phase 4): a failure at any of its steps rolls back on its own, and the VM
runs on the source again with every acknowledged write, its checkpoint merged."""
import pytest

from tests.integration.test_migration import migrate

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("host, op, action", [
    ("hv1", "save_vm", "fail"),
    ("hv1", "save_vm", "drop"),        # saved, but the answer is lost
    ("hv3", "import_vm", "fail"),
    ("hv3", "start_vm", "fail"),
    ("hv3", "wait_heartbeat", "fail"),
])
def test_a_failed_switchover_step_rolls_back_with_integrity(lab, host, op, action):
    name = f"sw-{op}-{action}"
    lab.add_vm(name, "hv1", write_rate_kbps=64)
    lab.emulator(host).inject_fault(op=op, action=action, message=f"injected: {op} broke", times=1)
    try:
        res, rec = migrate(lab, name, "hv1", "hv3")
    finally:
        lab.emulator(host).clear_faults()
    assert res.returncode == 1
    assert rec["state"] == "rolled_back", rec
    assert rec["error"].startswith("cutover:"), rec["error"]
    assert rec["rollback_seconds"] > 0
    assert rec["downtime_seconds"] > 0  # the VM was down from Save-VM until it ran on the source again
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)
    assert vm["snapshots"] == []
    assert all(v["name"] != name for v in lab.emulator("hv3").state()["vms"])
    assert not list((lab.dir / "hosts" / "hv3" / "share").glob(f"{vm['id']}*"))


def _squatter_meets_the_cutover(lab, name: str, fault_host: str, fault_op: str, reached):
    """Migrate `name` hv1 -> hv3 with `fault_op` on `fault_host` delayed 4 s; once
    `reached(record)`, someone else's file appears where the leaf disk goes. Returns the
    ended record, that file, and every file the record said it created while it ran (an
    ended record no longer lists them)."""
    import time

    from workers.model.record import Store
    vm = lab.add_vm(name, "hv1", write_rate_kbps=64)
    lab.emulator(fault_host).inject_fault(op=fault_op, action="delay", seconds=4, times=1)
    try:
        res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv3", "--max-rounds", "0")
        assert res.returncode == 0, res.stderr
        store, mid = Store(lab.redis()), res.stdout.strip()
        deadline = time.monotonic() + 120
        while not reached(store.get(mid)):
            assert time.monotonic() < deadline and store.get(mid)["state"] not in ("rolled_back", "completed")
            time.sleep(0.05)
        sid = store.get(mid)["snapshot"]["id"]
        squatter = lab.dir / "hosts" / "hv3" / "share" / vm["id"] / "Virtual Hard Disks" / f"disk0_{sid}.avhdx"
        squatter.parent.mkdir(parents=True, exist_ok=True)
        squatter.write_bytes(b"not quickmig's")
        made: set[str] = set()
        while (now := store.get(mid))["state"] not in ("rolled_back", "failed", "completed"):
            made.update(now.get("created_files", []))
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rec = store.get(mid)
    finally:
        lab.emulator(fault_host).clear_faults()
    assert rec["state"] == "rolled_back", rec
    assert "already has" in rec["error"] and rec["error"].startswith("cutover:"), rec["error"]
    assert rec["rollback_seconds"] > 0
    assert squatter.read_bytes() == b"not quickmig's"  # never delete what we did not make
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    assert next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)["snapshots"] == []
    return rec, squatter, made


def test_a_failed_downtime_copy_rolls_back_and_leaves_files_not_ours_alone(lab):
    """The copy step: the leaf cannot land on the destination (a file of someone else's
    appeared there while Save-VM ran, after the cutover's first look)."""
    _squatter_meets_the_cutover(lab, "sw-copy", "hv1", "save_vm", lambda r: r.get("save_started_at"))


def test_a_destination_file_in_the_way_is_refused_before_save_vm_costing_no_downtime(lab):
    """The cutover looks for the downtime's files on the destination while the VM still runs:
    one already there (not ours) stops the migration before Save-VM."""
    rec, squatter, made = _squatter_meets_the_cutover(lab, "sw-early", "hv3", "compare_vm",  # holds prepare
                                                lambda r: r["state"] == "preparing")
    assert not rec.get("save_started_at") and not rec.get("downtime_seconds")  # the VM never went down
    assert made and str(squatter.name) not in " ".join(made)


def test_the_downtime_copy_is_not_paced_by_copy_slots_or_bandwidth_limits(lab):
    """Slots and limits pace the bulk copies; a VM that is down must not queue behind
    other VMs' disks or a bandwidth cap."""
    import time

    from workers.coord.slots import CopySlots
    from workers.model import keys

    # no guest writes and no pre-copy rounds: those copy while the VM runs, paced as they should be
    lab.add_vm("sw-unpaced", "hv1", memory_mb=16, disk_mb=16, write_rate_kbps=0)
    opens = time.time() + 20
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(opens)) + "Z"
    res, queued = lab.cli_json("migrate", "sw-unpaced", "--from", "hv1", "--to", "hv2", "--json",
                               "--not-before", iso, "--window", "10m", "--max-rounds", "0")
    assert res.returncode == 0, res.stderr
    mid, r = queued["id"], lab.redis()
    deadline = time.time() + 15
    while True:  # the base copy is done and the copy step waits for the window
        rec = lab.cli_json("status", mid, "--json")[1]
        frozen = {f["path"] for f in (rec.get("plan") or {}).get("frozen", [])}
        if rec["state"] == "copying" and frozen and frozen <= {c["path"] for c in rec.get("copied", [])}:
            break
        assert time.time() < deadline, rec
        time.sleep(0.3)
    slots = CopySlots(r)
    k = lab.cfg.host("hv1").max_copies
    blockers = [f"blocker-{i}" for i in range(k)]
    try:
        for b in blockers:  # every read slot of hv1 and write slot of hv2 taken by others
            assert slots.try_acquire(b, "hv1", "hv2", k, k)
        r.set(keys.THROTTLE_GLOBAL, 1)  # 1 byte/s: a paced copy would never finish
        blocked_at = time.time()
        assert lab.cli_json("status", mid, "--json")[1]["state"] == "copying"
        final = lab.cli_json("status", mid, "--json")[1]
        deadline = time.time() + 120
        while final["state"] not in ("completed", "rolled_back", "failed"):
            assert time.time() < deadline, final
            time.sleep(0.5)
            final = lab.cli_json("status", mid, "--json")[1]
    finally:
        r.delete(keys.THROTTLE_GLOBAL)
        for b in blockers:
            slots.release(b, "hv1", "hv2")
    assert final["state"] == "completed", final["error"]
    assert final["save_started_at"] > blocked_at
    assert final["downtime_bytes"] >= 16 * 2**20
    assert lab.verify("sw-unpaced")["running_on"] == ["hv2"]
