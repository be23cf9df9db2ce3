"""--keep-source HOURS: the source VM stays registered (off) after a migration, then goes.

finish() turns the saved source copy off (so it can never resume beside the migrated VM)
and lists it here with the time it may be removed; a periodic task removes what is due.
"""
from __future__ import annotations

import time

from workers import context, keys
from workers.celery import app
from workers.hyperv.errors import VMNotFound
from workers.pipeline import mlog
from workers.record import RecordNotFound


def keep(mid: str, hours: float) -> float:
    until = time.time() + hours * 3600
    context.store().r.zadd(keys.KEPT_SOURCES, {mid: until})
    return round(until, 3)


@app.task(name="quickmig.reap_kept_sources", acks_late=True)
def reap_kept_sources() -> int:
    """Remove every kept source VM whose time is up; returns how many were handled."""
    from workers.snapshot import remove_source
    store = context.store()
    due = store.r.zrangebyscore(keys.KEPT_SOURCES, 0, time.time())
    for mid in due:
        lg = mlog(mid, "reap")
        try:
            rec = store.get(mid)
        except RecordNotFound:
            store.r.zrem(keys.KEPT_SOURCES, mid)
            continue
        try:
            old = context.driver(rec["source"]).run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
        except VMNotFound:
            old = None
        fields = {"source_removed_at": time.time(), "source_note": None}
        if old is None:
            fields["source_note"] = f"kept source VM was already gone from {rec['source']}"
        elif old["state"] != "Off":
            # someone started it again: it is theirs now, not a kept copy
            fields = {"source_removed_at": None,
                      "source_note": f"kept source VM is {old['state']} on {rec['source']}; left in place"}
            lg.warning("%s", fields["source_note"])
        else:
            remove_source(rec, old, lg)
        store.update(mid, lambda r: r.update(fields))
        store.r.zrem(keys.KEPT_SOURCES, mid)
    return len(due)
