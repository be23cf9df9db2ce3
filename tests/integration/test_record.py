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
