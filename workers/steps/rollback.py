"""Rollback: any failure before the destination VM is verified running ends here, and
the VM runs on the source again (docs/design.md, "The method").

It removes what this migration made on the destination (the files it recorded in
created_files before their first byte, an imported VM, ISO images no other VM there
uses), brings back whatever the guest wrote on the destination if it ever started there,
resumes the source VM (from its saved state, if the cutover saved it), gives it back its
automatic start action (the cutover set Nothing; the record keeps the value, so this holds
after a worker crash too) and merges our checkpoint. It runs on the `cutover` pool: it may
be what brings a saved VM back.
"""
from __future__ import annotations

import time

from workers.coord.shared_files import SharedFiles
from workers.engine import context
from workers.engine.step import RetryPolicy, end, fence, resume, step_task
from workers.hyperv.errors import VMNotFound
from workers.model import routing, states
from workers.model.file_plan import PathMap
from workers.smb import file_copy
from workers.steps import start_action
from workers.steps.checkpoint import ours


def _bring_back(rec: dict, src, dst, lg) -> None:
    """The guest ran on the destination before it was verified: whatever it acknowledged
    there is newer than the source's saved state, so save it there and bring its leaf
    disks and memory back before the source resumes (nothing lost)."""
    try:
        vm = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        return  # already removed by an earlier run of this rollback, after the copy back
    if vm["state"] == "Running":
        fence(rec)
        # a copy about to be removed: a restart of the destination must not resume it meanwhile
        vm = dst.run("save_vm", {"vm_id": rec["vm_id"], "automatic_start_action": start_action.NEVER})["vm"]
    if vm["state"] != "Saved":
        return  # never ran: the source's own saved state is the newest
    back = PathMap(context.config(), rec["destination"], rec["source"])
    dst_ep, src_ep = context.smb_endpoint(rec["destination"]), context.smb_endpoint(rec["source"])
    paths = [d["chain"][0] for d in vm["disks"] if d["chain"]]
    paths += [p for p in vm.get("state_files", []) if not p.lower().endswith(".vmcx")]
    fence(rec)
    for p in paths:
        file_copy.copy_file(dst_ep, back.rel(p), src_ep, back.rel(p))
    src.run("reparent_disks", {"parent_fixes": [
        {"path": back.dest(d["chain"][0]), "parent_path": back.dest(d["chain"][1])}
        for d in vm["disks"] if len(d["chain"]) > 1]})
    lg.info("brought %d files the guest changed on %s back to %s", len(paths), rec["destination"], rec["source"])


def _leave_isos(rec: dict) -> tuple[set[str], list[str]]:
    """The ISO images this migration used on the destination: (those another migration's VM
    uses, which stay; those quickmig put there that no one else uses, which go)."""
    isos = [f["path"] for f in (rec.get("plan") or {}).get("frozen", []) if f["kind"] == "iso"]
    pm = PathMap(context.config(), rec["source"], rec["destination"])
    shared = SharedFiles(context.store().r)
    keep, last_use = set(), []
    for path in map(pm.dest, isos):
        if shared.leave(rec["destination"], path, rec["id"]):
            last_use.append(path)
        else:
            keep.add(path)
    return keep, last_use


def fail_rollback(mid: str, error: str) -> None:
    end(mid, states.FAILED, error=f"rollback incomplete: {error}")


# While a rollback waits the VM may be saved, not running anywhere, and nothing but the
# rollback can bring it back: retry soon after the fault clears (1, 2, 4, then every 5 s) and
# for ~10 minutes before ending `failed` with what is left to do by hand.
ROLLBACK_RETRY = RetryPolicy(attempts=125, max_delay_s=5)


@step_task(routing.ROLLBACK, on_hard_failure=fail_rollback, retry=ROLLBACK_RETRY)
def rollback(mid: str, lg) -> None:
    rec = resume(mid, states.ROLLING_BACK)
    if rec is None:
        return
    t0 = time.time()
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    # an interrupted copy leaves `<file>.partial` beside the file it was making
    keep, last_use = _leave_isos(rec)
    created = [p for p in rec.get("created_files", []) if p not in keep]
    created += [p for p in last_use if p not in created]
    created = created + [p + file_copy.PARTIAL_SUFFIX for p in created]
    fence(rec)
    if rec.get("start_started_at"):
        _bring_back(rec, src, dst, lg)
    if rec.get("import_started_at") or created:
        # remove_vm also deletes what we copied and the folders that leaves empty; a copy that
        # was registered is turned off before the source runs again: never two
        out = dst.run("remove_vm", {"vm_id": rec["vm_id"], "turn_off": True, "delete_paths": created})
        lg.info("removed %d files%s from %s", len(out.get("deleted") or []),
                " and the imported VM" if out.get("removed") else "", rec["destination"])
    for path in last_use:
        SharedFiles(context.store().r).deleted(rec["destination"], path, mid)
    if keep:
        lg.info("kept %d ISO image(s) on %s that other migrated VMs use", len(keep), rec["destination"])
    vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    if vm["state"] != "Running" or start_action.differs(rec, vm):
        fence(rec)
        was = vm["state"]
        vm = src.run("start_vm", {"vm_id": rec["vm_id"], **start_action.restore(rec)})["vm"]
        if was != "Running":
            lg.info("source VM started again from its %s state", "saved" if rec.get("save_started_at") else "off")
    snaps = ours(vm, mid)
    if snaps:
        fence(rec)
        src.run("remove_snapshots", {"vm_id": rec["vm_id"], "snapshot_ids": [s["id"] for s in snaps]})
    took = time.time() - t0
    extra = {}
    if rec.get("save_started_at"):
        extra["downtime_seconds"] = round(time.time() - rec["save_started_at"], 3)
    end(mid, states.ROLLED_BACK, rollback_seconds=round(took, 3), **extra)
