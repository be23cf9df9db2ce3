"""--keep-source HOURS: the source VM stays registered (off) after a migration, then goes.

finish turns the saved source copy off (so it can never resume beside the migrated VM)
and lists it with the time it may be removed (`workers.steps.finish.keep_source`); this
periodic task, sent by beat, removes what is due.
"""
from __future__ import annotations

import time

from workers.coord.locks import LockHeld
from workers.engine import context
from workers.engine.app import app
from workers.engine.step import mlog
from workers.hyperv.errors import VMNotFound
from workers.model import keys, routing
from workers.model.record import RecordNotFound
from workers.steps.checkpoint import ours
from workers.steps.finish import remove_source

REAPER = "reap:"  # the VM lease owner while a kept copy is removed: reap:<migration id>


@app.task(name=routing.REAP_KEPT_SOURCES, acks_late=True)
def reap_kept_sources() -> int:
    """Remove every kept source VM whose time is up; returns how many were handled."""
    store = context.store()
    due = store.r.zrangebyscore(keys.KEPT_SOURCES, 0, time.time())
    for mid in due:
        _reap_one(mid)
    return len(due)


def _reap_one(mid: str) -> None:
    store = context.store()
    try:
        rec = store.get(mid)
    except RecordNotFound:
        store.r.zrem(keys.KEPT_SOURCES, mid)
        return
    locks, owner = context.locks(), REAPER + mid
    try:
        token = locks.acquire(rec["vm_id"], owner)
    except LockHeld as e:
        # a newer migration of this VM is under way (perhaps back to this very host):
        # leave the kept copy until it is done, then look again
        note = f"kept source VM not removed yet: VM lease held by {e.holder}"
        store.set(mid, source_note=note)
        mlog(mid, "reap").info("%s; trying again at the next round", note)
        return
    try:
        fields = _reap(rec, lambda: locks.check(rec["vm_id"], owner, token))
    finally:
        locks.release(rec["vm_id"], owner)
    store.set(mid, **fields)
    store.r.zrem(keys.KEPT_SOURCES, mid)


def _reap(rec: dict, fence) -> dict:
    """With the VM's lease held: remove the kept copy, if what the source has under this VM
    id is still it (off, with this migration's checkpoint); the record fields to set."""
    lg = mlog(rec["id"], "reap")
    try:
        old = context.driver(rec["source"]).run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        return {"source_removed_at": time.time(),
                "source_note": f"kept source VM was already gone from {rec['source']}"}
    if old["state"] != "Off" or not ours(old, rec["id"]):
        # started again, or a VM that came back here since (a later migration): theirs now
        what = old["state"] if old["state"] != "Off" else "not the kept copy (it lacks this migration's checkpoint)"
        note = f"VM {rec['vm_id']} on {rec['source']} is {what}; left in place"
        lg.warning("%s", note)
        return {"source_removed_at": None, "source_note": note}
    fence()
    left = remove_source(rec, old, lg)
    if left:
        return {"source_removed_at": None, "source_note": f"kept source VM not removed: {left}"}
    return {"source_removed_at": time.time(), "source_note": None}
