"""Pre-copy rounds, the predicted-downtime gate (--max-downtime with abort / proceed) and
cutover windows, end to end in the lab."""
import time

import pytest

from tests.integration.test_migration import migrate
from workers.model import keys

pytestmark = pytest.mark.integration

MiB = 2**20


def on_source_untouched(lab, name, rec):
    assert rec["state"] == "rolled_back", rec
    assert rec.get("save_started_at") is None
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == name)
    assert vm["snapshots"] == []


# A round pays once the base copy took long enough for the guest to write a delta worth it
# (precopy.pays: about 0.5 s + 1 MiB / write rate); 256 MiB at 4 MiB/s of writes clears that
# even when the copy runs at 250 MB/s (96 MiB at 2 MiB/s stopped clearing it once the copy
# engine got faster).
def test_rounds_run_while_they_pay_and_the_downtime_carries_only_memory_and_the_last_delta(lab):
    lab.add_vm("pc-rounds", "hv1", memory_mb=16, disk_mb=256, write_rate_kbps=4096)
    res, rec = migrate(lab, "pc-rounds", "hv1", "hv2", "--max-rounds", "4")
    assert rec["state"] == "completed", rec["error"]
    assert len(rec["rounds"]) >= 1 and rec["rounds"][0]["bytes"] > MiB
    assert rec["predicted_downtime_seconds"] > 0 and rec["downtime_seconds"] > 0
    assert rec["guest_write_bps"] > 1e6  # the guest writes 4 MiB/s
    # the last delta is smaller than the first one we copied while the VM ran
    assert rec["downtime_bytes"] - 16 * MiB < rec["rounds"][0]["bytes"]
    check = lab.verify("pc-rounds")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv2").state()["vms"] if v["name"] == "pc-rounds")
    assert vm["snapshots"] == []  # every round's checkpoint merged


def test_an_unreachable_max_downtime_aborts_before_any_downtime(lab):
    # a guest that writes enough for rounds to pay: they run, cannot reach the bound, and
    # the rollback merges every checkpoint they took
    lab.add_vm("pc-abort", "hv1", memory_mb=16, disk_mb=256, write_rate_kbps=4096)
    res, rec = migrate(lab, "pc-abort", "hv1", "hv2", "--max-downtime", "0.001", "--on-exceed", "abort",
                       "--max-rounds", "2")
    assert res.returncode == 1
    assert 1 <= len(rec["rounds"]) <= 2
    assert "exceeds --max-downtime 0.001s" in rec["error"] and "--on-exceed proceed" in rec["error"]
    assert rec["predicted_downtime_seconds"] > 0.001
    on_source_untouched(lab, "pc-abort", rec)


def test_proceed_cuts_over_anyway_and_records_prediction_and_downtime(lab):
    lab.add_vm("pc-proceed", "hv1", write_rate_kbps=64)
    res, rec = migrate(lab, "pc-proceed", "hv1", "hv2", "--max-downtime", "0.001", "--on-exceed", "proceed")
    assert rec["state"] == "completed", rec["error"]
    assert rec["predicted_downtime_seconds"] > 0.001 and rec["downtime_seconds"] > 0
    assert lab.verify("pc-proceed")["integrity"] == "ok"


def test_the_downtime_is_predicted_at_the_rate_the_downtime_copy_gets_not_the_limited_one(lab):
    # The downtime copy skips the bandwidth limits. Predicted at the limited 8 MB/s, the 48 MiB
    # of memory alone would take 6 s and --max-downtime 4 would roll back a VM whose
    # switchover takes about a second. A switchover between the same hosts measured the rate
    # the downtime copy gets.
    lab.add_vm("pc-measure", "hv1", memory_mb=32, write_rate_kbps=64)
    _, first = migrate(lab, "pc-measure", "hv1", "hv2")
    assert first["state"] == "completed", first["error"]
    remembered = float(lab.redis().hget(keys.cutover_costs("hv1"), "downtime_copy_bps:hv2"))
    assert remembered == pytest.approx(first["downtime_bytes"] / first["downtime_breakdown"]["copy"], rel=0.01)
    limit = lab.cli("throttle", "--pair", "hv1", "hv2", "8M")
    assert limit.returncode == 0, limit.stderr
    try:
        lab.add_vm("pc-limited", "hv1", memory_mb=48, disk_mb=32, write_rate_kbps=64)
        res, rec = migrate(lab, "pc-limited", "hv1", "hv2", "--max-downtime", "4")
    finally:
        lab.cli("throttle", "--pair", "hv1", "hv2", "0")
    assert rec["state"] == "completed", rec["error"]
    assert rec["copy_bps"] < 10e6 < rec["downtime_copy_bps"], rec
    assert 48 * MiB / rec["copy_bps"] > 4 > rec["predicted_downtime_seconds"], rec
    assert lab.verify("pc-limited")["integrity"] == "ok"


def test_the_cutover_waits_for_its_window(lab):
    lab.add_vm("pc-window", "hv1", write_rate_kbps=64)
    opens = time.time() + 10
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(opens)) + "Z"
    res, rec = migrate(lab, "pc-window", "hv1", "hv2", "--not-before", iso, "--window", "10m")
    assert rec["state"] == "completed", rec["error"]
    assert rec["save_started_at"] >= int(opens)
    assert rec["phases"]["copy"]["end"] >= int(opens)  # copied ahead, then kept syncing until it opened
    assert rec["phases"]["copy"]["start"] < int(opens)
    assert lab.verify("pc-window")["integrity"] == "ok"


def test_migrations_waiting_for_their_window_hold_no_copy_worker(lab):
    """As many migrations wait for a window as the lab has copy workers (2); another
    migration still copies and cuts over meanwhile, and the waiting ones say what they wait for."""
    opens = time.time() + 40
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(opens)) + "Z"
    waiting = []
    for name, dst in (("pc-later-1", "hv2"), ("pc-later-2", "hv3")):  # hv1 full (2), hv2 and hv3 one each
        lab.add_vm(name, "hv1", memory_mb=16, disk_mb=16, write_rate_kbps=16)
        res, queued = lab.cli_json("migrate", name, "--from", "hv1", "--to", dst, "--json",
                                   "--not-before", iso, "--window", "10m")
        assert res.returncode == 0, res.stderr
        waiting.append(queued["id"])
    deadline = time.time() + 30
    while not all("cutover window" in (lab.cli_json("status", m, "--json")[1].get("waiting") or "") for m in waiting):
        assert time.time() < deadline, [lab.cli_json("status", m, "--json")[1] for m in waiting]
        time.sleep(0.3)
    rec = lab.cli_json("status", waiting[0], "--json")[1]
    assert rec["state"] == "copying" and rec["resume_at"] <= opens + 1, rec
    assert "waiting for the cutover window (opens " in lab.cli("status", waiting[0]).stdout

    lab.add_vm("pc-meanwhile", "hv2", memory_mb=16, disk_mb=16, write_rate_kbps=16)
    res, rec = migrate(lab, "pc-meanwhile", "hv2", "hv3")
    assert rec["state"] == "completed", rec["error"]
    assert time.time() < opens  # it did not wait for their windows: they held no copy worker

    for mid in waiting:
        deadline = time.time() + 120
        while (rec := lab.cli_json("status", mid, "--json")[1])["state"] not in ("completed", "rolled_back", "failed"):
            assert time.time() < deadline, rec
            time.sleep(0.5)
        assert rec["state"] == "completed", rec["error"]
        assert rec["save_started_at"] >= int(opens)
        assert "waiting" not in rec and "resume_at" not in rec
    assert all(lab.verify(n)["integrity"] == "ok" for n in ("pc-later-1", "pc-later-2", "pc-meanwhile"))


def test_a_missed_window_is_reported_and_the_vm_stays_on_the_source(lab):
    lab.add_vm("pc-missed", "hv1", write_rate_kbps=64)
    lab.emulator("hv2").inject_fault(op="compare_vm", action="delay", seconds=6, times=1)
    try:
        res, rec = migrate(lab, "pc-missed", "hv1", "hv2", "--window", "4s")
    finally:
        lab.emulator("hv2").clear_faults()
    assert res.returncode == 1
    assert "cutover window closed" in rec["error"], rec["error"]
    on_source_untouched(lab, "pc-missed", rec)


@pytest.mark.parametrize("args, says", [
    (("--max-downtime", "fast"), "--max-downtime"),
    (("--max-downtime", "2", "--on-exceed", "maybe"), "--on-exceed"),
    (("--max-rounds", "x"), "--max-rounds"),
    (("--keep-source", "-3"), "--keep-source"),
])
def test_bad_cutover_options_are_refused_and_change_nothing(lab, args, says):
    if not any(v["name"] == "pc-bad" for v in lab.emulator("hv1").state()["vms"]):
        lab.add_vm("pc-bad", "hv1")
    before = lab.redis_state()
    res = lab.cli("migrate", "pc-bad", "--from", "hv1", "--to", "hv2", *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], res.stderr
    assert lab.redis_state() == before


def test_keep_source_keeps_the_source_off_then_the_reaper_removes_it(lab):
    from producer.migrations import Producer
    lab.add_vm("pc-keep", "hv1", write_rate_kbps=64)
    res, rec = migrate(lab, "pc-keep", "hv1", "hv2", "--keep-source", "0.0005")  # 1.8 s
    assert rec["state"] == "completed", rec["error"]
    assert rec["source_kept_until"] > rec["phases"]["finish"]["start"]
    # the reaper deletes only the source files the record lists as copied: kept until it has
    assert rec["copied"] and rec["plan"] and "created_files" not in rec and "copied_by_kind" not in rec
    kept = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == "pc-keep")
    assert kept["state"] == "Off"
    assert lab.verify("pc-keep")["running_on"] == ["hv2"]  # (lab verify wants one registration: checked below)
    while time.time() < rec["source_kept_until"]:
        time.sleep(0.2)
    Producer(lab.cfg).app.send_task("quickmig.reap_kept_sources")
    store = Producer(lab.cfg).store
    deadline = time.monotonic() + 60
    while not store.get(rec["id"]).get("source_removed_at"):
        assert time.monotonic() < deadline, store.get(rec["id"])
        time.sleep(0.2)
    assert all(v["name"] != "pc-keep" for v in lab.emulator("hv1").state()["vms"])
    assert not list((lab.dir / "hosts" / "hv1" / "share").glob(f"{kept['id']}*"))
    reaped = store.get(rec["id"])
    assert "copied" not in reaped and "plan" not in reaped and reaped["copied_by_kind"]["disk"]["files"] >= 1
    check = lab.verify("pc-keep")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check


def test_the_reaper_leaves_the_kept_source_alone_while_the_vm_is_leased_or_when_it_is_not_the_kept_copy(lab):
    """The reaper takes the VM's lease: a newer migration of the same VM (say, back to the
    source) holds it, and the kept copy waits. And it removes only the kept copy itself:
    a VM under that id on the source without this migration's checkpoint is someone's."""
    from producer.migrations import Producer
    from workers.hyperv.driver import HyperVDriver
    from workers.model import keys
    lab.add_vm("pc-keep2", "hv1", write_rate_kbps=0)
    res, rec = migrate(lab, "pc-keep2", "hv1", "hv2", "--keep-source", "0.0002")  # 0.7 s
    assert rec["state"] == "completed", rec["error"]
    p, r, mid, vm_id = Producer(lab.cfg), lab.redis(), rec["id"], rec["vm_id"]
    while time.time() < rec["source_kept_until"]:
        time.sleep(0.2)

    def reap_and_wait(says: str) -> dict:
        p.app.send_task("quickmig.reap_kept_sources")
        deadline = time.monotonic() + 60
        while says not in (p.store.get(mid).get("source_note") or ""):
            assert time.monotonic() < deadline, p.store.get(mid)
            time.sleep(0.2)
        return p.store.get(mid)

    def kept() -> list[dict]:
        return [v for v in lab.emulator("hv1").state()["vms"] if v["id"] == vm_id]

    assert r.set(keys.vm_lock(vm_id), "a-newer-migration", nx=True, ex=120)
    try:
        got = reap_and_wait("VM lease held by a-newer-migration")
    finally:
        r.delete(keys.vm_lock(vm_id))
    assert not got.get("source_removed_at") and [v["state"] for v in kept()] == ["Off"]
    assert r.zscore(keys.KEPT_SOURCES, mid) is not None  # still due: the next round looks again

    # what hv1 has under this id loses the migration's checkpoint: not the kept copy any more
    driver = HyperVDriver(lab.cfg.host("hv1"), lab.cfg.credentials("hv1"))
    driver.run("remove_snapshots", {"vm_id": vm_id, "snapshot_ids": [s["id"] for s in kept()[0]["snapshots"]]})
    got = reap_and_wait("not the kept copy")
    assert not got.get("source_removed_at") and [v["state"] for v in kept()] == ["Off"]
    assert r.zscore(keys.KEPT_SOURCES, mid) is None and r.get(keys.vm_lock(vm_id)) is None
