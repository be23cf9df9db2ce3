"""The events stream as the record store writes it (real redis-server)."""
from workers.model import keys
from workers.model.record import Store, event_data, new_record


def test_a_migration_removed_before_it_started_leaves_no_queued_event(r):
    store = Store(r)
    kept = new_record(vm="vm-a", vm_id="id-a", source="hv1", destination="hv2", fence=1)
    gone = new_record(vm="vm-b", vm_id="id-b", source="hv1", destination="hv2", fence=1)
    store.create(kept)
    event_id = store.create(gone)
    assert [f["id"] for _, f in r.xrange(keys.EVENTS)] == [kept["id"], gone["id"]]
    store.delete(gone["id"], event_id)  # its enqueue failed after the record was written
    entries = r.xrange(keys.EVENTS)
    assert [f["id"] for _, f in entries] == [kept["id"]]
    assert event_data(entries[0][1])["new"] == "queued" and event_data(entries[0][1])["seq"] == 1
    assert not r.exists(keys.migration(gone["id"])) and r.exists(keys.migration(kept["id"]))
