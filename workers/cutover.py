"""The cutover pool: the only steps that hold a VM down, and the rollback.

Downtime runs from the start of Save-VM to the destination VM's heartbeat. The source
is never changed destructively here: a failure anywhere before the heartbeat turns off
and removes what we made on the destination, then resumes the source from its saved state.
"""
from __future__ import annotations

import time

from workers import context, options, precopy, states
from workers.downtime_copy import DowntimeCopy
from workers.hyperv.errors import VMNotFound
from workers.locks import Fenced, LeaseKeeper
from workers.pipeline import (HardFailure, RetryPolicy, end, fence, is_retryable, mlog, pipeline_task,
                              resume, send)
from workers.plan import PathMap, chain_paths, downtime_files
from workers.record import RecordNotFound, StaleState
from workers.shared_files import SharedFiles
from workers.smb.copy import PARTIAL_SUFFIX
from workers.snapshot import ours

HEARTBEAT_TIMEOUT_S = 120


def _rollback_now(mid: str, error: str) -> None:
    """Called by the cutover itself: the VM is down, so roll back in this process.

    If that meets a transient fault (the destination's WinRM unreachable: the copy there
    must be removed before the source may run again), hand over to the rollback task,
    which retries with backoff; left to escape, the fault would leave the VM saved until
    the reconciler noticed the migration stuck in rolling_back."""
    try:
        context.store().transition(mid, {states.CUTTING_OVER}, states.ROLLING_BACK, error=error)
    except StaleState:  # someone else already moved it; their step owns it
        return
    lg = mlog(mid, "rollback")
    try:
        rollback.__wrapped_step__(mid, lg)
    except (Fenced, RecordNotFound, StaleState) as e:  # someone else moved it on: theirs now
        lg.warning("dropped: %s", e)
    except Exception as e:  # noqa: BLE001 - every failure must route somewhere
        if not is_retryable(e):
            lg.error("failed: %s: %s", type(e).__name__, e)
            _fail_rollback(mid, f"rollback: {e}")
            return
        lg.warning("transient failure, the rollback task takes over: %s", e)
        send("quickmig.rollback", mid)  # leaves once this delivery's step claim is released


# No retries: while the VM is down, rolling back beats waiting out a backoff.
@pipeline_task("quickmig.cutover", on_hard_failure=_rollback_now, retry=None)
def cutover(mid: str, lg) -> None:
    rec = resume(mid, states.CUTTING_OVER)
    if rec is None:
        return
    if rec.get("save_started_at"):
        _resume_interrupted(rec, lg)
        return
    cfg = context.config()
    pm = PathMap(cfg, rec["source"], rec["destination"])
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    end_at = options.of(rec).window_end()
    if end_at is not None and time.time() > end_at:
        raise HardFailure("the cutover window closed before Save-VM could start; "
                          "ask for a later or longer --window")
    with LeaseKeeper(context.locks(), rec["vm_id"], mid, every_s=10):
        fence(rec)
        copier = DowntimeCopy(rec, lg)
        # the files as the pre-copy gate saw them last (a record from before it noted them: ask)
        copier.ready(rec, rec.get("downtime_paths") or [
            f["path"] for f in downtime_files(src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"])])
        t0 = time.time()
        rec = context.store().update(mid, lambda r: r.update(save_started_at=t0))
        vm = src.run("save_vm", {"vm_id": rec["vm_id"]})["vm"]
        t_saved = time.time()
        lg.info("saved in %.2fs", t_saved - t0)
        moved = copier.copy(rec, vm)
        t_copied = time.time()
        fence(rec)
        context.store().update(mid, lambda r: r.update(import_started_at=time.time()))
        dst.run("import_vm", {
            "config_path": pm.dest(vm["config_path"]),
            "disk_paths": pm.mapping(chain_paths(vm)),
            "iso_paths": pm.mapping(vm.get("isos", [])),
            "parent_fixes": pm.parent_fixes(vm),
        })
        t_imported = time.time()
        fence(rec)
        # from here the guest may run (and acknowledge writes) on the destination
        context.store().update(mid, lambda r: r.update(start_started_at=time.time()))
        dst.run("start_vm", {"vm_id": rec["vm_id"]})
        dst.run("wait_heartbeat", {"vm_id": rec["vm_id"], "timeout_s": HEARTBEAT_TIMEOUT_S})
        t1 = time.time()
    downtime = t1 - t0
    lg.info("switchover %.2fs (save %.2f, copy %.2f, import %.2f, start %.2f)", downtime,
            t_saved - t0, t_copied - t_saved, t_imported - t_copied, t1 - t_imported)
    precopy.remember_costs(rec["source"], rec["destination"], int(vm.get("memory_startup_bytes") or 0),
                           t_saved - t0, t1 - t_copied)
    context.store().transition(mid, {states.CUTTING_OVER}, states.FINISHING, downtime_seconds=round(downtime, 3),
                               downtime_bytes=moved,
                               downtime_breakdown={"save": round(t_saved - t0, 3),
                                                   "copy": round(t_copied - t_saved, 3),
                                                   "import": round(t_imported - t_copied, 3),
                                                   "start": round(t1 - t_imported, 3)})
    send("quickmig.finish", mid)


def _resume_interrupted(rec: dict, lg) -> None:
    """A previous delivery died inside the downtime (its step claim lapsed, so it is gone).
    Once the destination VM has started, its guest may have acknowledged writes that the
    source's saved state lacks: going back would lose them, so roll forward. Before that,
    nothing ran on the destination and rolling back is safe."""
    mid, dst = rec["id"], context.driver(rec["destination"])
    try:
        there = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]["state"]
    except VMNotFound:
        there = None
    if there != "Running":
        raise HardFailure(f"cutover was interrupted (worker lost) before the destination VM started "
                          f"(it is {there or 'absent'} there); rolling back")
    lg.warning("cutover was interrupted after the destination VM started; rolling forward")
    fence(rec)
    dst.run("wait_heartbeat", {"vm_id": rec["vm_id"], "timeout_s": HEARTBEAT_TIMEOUT_S})
    downtime = time.time() - rec["save_started_at"]
    context.store().transition(mid, {states.CUTTING_OVER}, states.FINISHING, downtime_seconds=round(downtime, 3),
                               cutover_resumed=True)
    send("quickmig.finish", mid)


def _bring_back(rec: dict, src, dst, lg) -> None:
    """The guest ran on the destination before it was verified: whatever it acknowledged
    there is newer than the source's saved state, so save it there and bring its leaf
    disks and memory back before the source resumes (nothing lost)."""
    from workers.smb import copy as smb
    try:
        vm = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        return  # already removed by an earlier run of this rollback, after the copy back
    if vm["state"] == "Running":
        fence(rec)
        vm = dst.run("save_vm", {"vm_id": rec["vm_id"]})["vm"]
    if vm["state"] != "Saved":
        return  # never ran: the source's own saved state is the newest
    back = PathMap(context.config(), rec["destination"], rec["source"])
    dst_ep, src_ep = context.smb_endpoint(rec["destination"]), context.smb_endpoint(rec["source"])
    paths = [d["chain"][0] for d in vm["disks"] if d["chain"]]
    paths += [p for p in vm.get("state_files", []) if not p.lower().endswith(".vmcx")]
    fence(rec)
    for p in paths:
        smb.copy_file(dst_ep, back.rel(p), src_ep, back.rel(p))
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


def _fail_rollback(mid: str, error: str) -> None:
    end(mid, states.FAILED, error=f"rollback incomplete: {error}")


# While a rollback waits the VM may be saved, not running anywhere, and nothing but the
# rollback can bring it back: retry soon after the fault clears (1, 2, 4, then every 5 s) and
# for ~10 minutes before ending `failed` with what is left to do by hand.
ROLLBACK_RETRY = RetryPolicy(attempts=125, max_delay_s=5)


@pipeline_task("quickmig.rollback", on_hard_failure=_fail_rollback, retry=ROLLBACK_RETRY)
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
    created = created + [p + PARTIAL_SUFFIX for p in created]
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
    if vm["state"] != "Running":
        fence(rec)
        vm = src.run("start_vm", {"vm_id": rec["vm_id"]})["vm"]
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
