"""The migration record and the VM lease against a real redis-server."""
import threading

import pytest

from workers.coord.locks import Fenced, LockHeld, VMLocks
from workers.model import keys, states
from workers.model.record import StaleState, Store, new_record


@pytest.fixture
def store(redis_url):
    s = Store.from_url(redis_url)
    s.r.flushdb()
    return s


def make(store, **kw):
    rec = new_record(vm="vm", vm_id="id-1", source="a", destination="b", fence=1, **kw)
    store.create(rec)
    return rec


def test_transition_stamps_phases_and_history(store):
    rec = make(store)
    store.transition(rec["id"], {states.QUEUED}, states.SNAPSHOTTING)
    out = store.transition(rec["id"], {states.SNAPSHOTTING}, states.COPYING)
    assert out["state"] == states.COPYING
    assert out["phases"]["snapshot"]["end"] >= out["phases"]["snapshot"]["start"]
    assert "copy" in out["phases"] and "end" not in out["phases"]["copy"]
    assert [h["state"] for h in out["history"]] == ["queued", "snapshotting", "copying"]


def test_a_duplicate_transition_is_refused_and_changes_nothing(store):
    rec = make(store)
    store.transition(rec["id"], {states.QUEUED}, states.SNAPSHOTTING)
    before = store.get(rec["id"])
    with pytest.raises(StaleState):
        store.transition(rec["id"], {states.QUEUED}, states.SNAPSHOTTING)
    assert store.get(rec["id"]) == before


def test_concurrent_transitions_only_one_wins(store):
    rec = make(store)
    wins, errors = [], []

    def go():
        try:
            store.transition(rec["id"], {states.QUEUED}, states.SNAPSHOTTING)
            wins.append(1)
        except StaleState:
            errors.append(1)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(errors) == 7


def test_end_states_get_a_ttl_and_active_ones_do_not(store):
    rec = make(store)
    assert store.r.ttl(keys.migration(rec["id"])) == -1
    store.transition(rec["id"], {states.QUEUED}, states.FAILED)
    assert 0 < store.r.ttl(keys.migration(rec["id"])) <= keys.RECORD_TTL_S


def test_lock_is_exclusive_and_fencing_tokens_increase(store):
    locks = VMLocks(store.r)
    t1 = locks.acquire("vm-a", "m1")
    with pytest.raises(LockHeld) as e:
        locks.acquire("vm-a", "m2")
    assert e.value.holder == "m1"
    locks.check("vm-a", "m1", t1)
    assert not locks.release("vm-a", "m2")  # not the holder: nothing released
    assert locks.release("vm-a", "m1")
    t2 = locks.acquire("vm-a", "m2")
    assert t2 > t1
    with pytest.raises(Fenced):
        locks.check("vm-a", "m1", t1)


def test_list_drops_expired_records(store):
    a, b = make(store), make(store)
    store.r.delete(keys.migration(a["id"]))
    assert [r["id"] for r in store.recent()] == [b["id"]]
    assert store.r.zcard(keys.MIGRATIONS_INDEX) == 1


# -- an ended record (workers.model.finished) ------------------------------------------------

SRC, DST = "D:\\VMs\\hv1\\vm", "D:\\VMs\\hv2\\vm"
BASE, LEAF, CONF = SRC + "\\disk0.vhdx", SRC + "\\disk0_c1.avhdx", SRC + "\\vm.vmcx"
ISO = "D:\\ISO\\setup.iso"


def _copied(path: str, n: int, seconds: float, **extra) -> dict:
    return {"path": path, "dest": path.replace(SRC, DST), "bytes": n, "digest": "ab" * 32,
            "digest_scheme": "sha256-chunks-8MiB", "seconds": seconds, "throttled_s": 0.25,
            "bytes_reused": 0, "bytes_sent": n, **extra}


def _switched_over(store, **options) -> str:
    """A record carried to `finishing` with what a 1-disk migration with an ISO writes as it goes."""
    rec = make(store, options=options)
    mid = rec["id"]
    for a, b in [(states.QUEUED, states.SNAPSHOTTING), (states.SNAPSHOTTING, states.COPYING)]:
        store.transition(mid, {a}, b)
    store.set(mid, snapshot={"id": "c1", "name": f"quickmig-{mid}", "config_path": SRC + "\\c1.vmcx",
                             "files": [SRC + "\\c1.vmcx", SRC + "\\c1.vmrs"]},
              plan={"frozen": [{"path": BASE, "kind": "disk"}, {"path": ISO, "kind": "iso"}]},
              planned={BASE: 8 << 20, ISO: 4 << 20, LEAF: 1 << 20, CONF: 2000}, bytes_total=(13 << 20) + 2000,
              created_files=[p.replace(SRC, DST) for p in (BASE, LEAF, CONF)],
              created_folders=[DST], downtime_paths=[LEAF, CONF],
              progress={"file": LEAF, "bytes_done": 9 << 20, "bytes_total": 9 << 20, "rate_bps": None,
                        "eta_seconds": 0.0, "at": 1.0},
              copied=[_copied(BASE, 8 << 20, 2.0, bytes_reused=1 << 20, bytes_sent=9 << 20),
                      _copied(ISO, 0, 0.0, shared=True, planned_bytes=4 << 20),
                      _copied(LEAF, 1 << 20, 0.5), _copied(CONF, 2000, 0.1)],
              bytes_copied=(9 << 20) + 2000, downtime_seconds=1.25, rounds=[{"bytes": 1, "seconds": 1.0, "at": 1.0}])
    for a, b in [(states.COPYING, states.PREPARING), (states.PREPARING, states.CUTTING_OVER),
                 (states.CUTTING_OVER, states.FINISHING)]:
        store.transition(mid, {a}, b)
    return mid


def test_an_ended_record_keeps_what_status_shows_and_sheds_what_only_a_running_migration_reads(store):
    from producer import report
    mid = _switched_over(store)
    active = store.get(mid)
    assert {"copied", "created_files", "planned", "progress", "downtime_paths", "plan"} <= set(active)
    returned = store.transition(mid, {states.FINISHING}, states.COMPLETED)
    # the caller ending it still has what it releases (markers, copy resume records)
    assert returned["created_files"] == active["created_files"]
    out = store.get(mid)
    for gone in ("copied", "created_files", "created_folders", "planned", "progress", "downtime_paths", "plan"):
        assert gone not in out, gone
    assert out["snapshot"] == {"id": "c1", "name": f"quickmig-{mid}"}
    assert out["copied_by_kind"] == {
        "disk": {"files": 2, "shared": 0, "bytes": 9 << 20, "bytes_sent": 10 << 20, "bytes_reused": 1 << 20,
                 "seconds": 2.5, "throttled_s": 0.5},
        "iso": {"files": 1, "shared": 1, "bytes": 0, "bytes_sent": 0, "bytes_reused": 0, "seconds": 0.0,
                "throttled_s": 0.25},
        "state": {"files": 1, "shared": 0, "bytes": 2000, "bytes_sent": 2000, "bytes_reused": 0, "seconds": 0.1,
                  "throttled_s": 0.25}}
    kept = ("id", "vm", "vm_id", "source", "destination", "state", "history", "phases", "downtime_seconds",
            "bytes_copied", "bytes_total", "error", "rounds", "options")
    assert {k: out[k] for k in kept} == {k: returned[k] for k in kept}
    # `quickmig status` reads the same from it as from every file's entry
    assert report.summary(out) == report.summary(returned)
    assert "files copied    disk 2 (9.0 MiB), iso 1 (0.0 MiB, 1 shared), state 1 (0.0 MiB)" in report.summary(out)
    assert "throughput" in report.summary(out)
    # shedding it again changes nothing
    again = store.set(mid, source_note="checked")
    assert {k: v for k, v in store.get(mid).items() if k not in ("updated_at", "source_note")} == \
        {k: v for k, v in out.items() if k != "updated_at"} and again["source_note"] == "checked"


def test_a_rolled_back_record_sheds_the_same(store):
    mid = _switched_over(store)
    store.transition(mid, {states.FINISHING}, states.FAILED)  # the only way on from finishing in this test
    rec = make(store)
    store.transition(rec["id"], {states.QUEUED}, states.ROLLING_BACK)
    store.set(rec["id"], created_files=[DST + "\\x.vhdx"], copied=[_copied(BASE, 10, 0.1)], planned={BASE: 10})
    store.transition(rec["id"], {states.ROLLING_BACK}, states.ROLLED_BACK, rollback_seconds=1.0)
    out = store.get(rec["id"])
    assert not {"created_files", "copied", "planned"} & set(out)
    assert out["copied_by_kind"]["disk"]["files"] == 1 and out["rollback_seconds"] == 1.0


def test_a_failed_record_keeps_what_cleaning_up_by_hand_needs(store):
    mid = _switched_over(store)
    active = store.get(mid)
    store.transition(mid, {states.FINISHING}, states.FAILED, error="source not removed")
    out = store.get(mid)
    for kept in ("created_files", "created_folders", "copied", "plan", "snapshot"):
        assert out[kept] == active[kept], kept
    assert not {"planned", "progress", "downtime_paths", "copied_by_kind"} & set(out)


def test_a_kept_source_keeps_its_copied_files_until_the_reaper_removed_it(store):
    mid = _switched_over(store, keep_source_hours=1)
    active = store.get(mid)
    store.transition(mid, {states.FINISHING}, states.COMPLETED, source_kept_until=2e9)
    out = store.get(mid)
    assert out["copied"] == active["copied"] and out["plan"] == active["plan"]  # finish.source_files reads them
    assert not {"planned", "progress", "downtime_paths", "created_files"} & set(out)
    store.set(mid, source_note="kept source VM not removed yet: VM lease held by m2")
    assert store.get(mid)["copied"] == active["copied"]
    store.set(mid, source_removed_at=2e9, source_note=None)
    out = store.get(mid)
    assert "copied" not in out and "plan" not in out and out["copied_by_kind"]["disk"]["files"] == 2
