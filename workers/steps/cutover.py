"""Phase 4 (docs/design.md, "The method"): the switchover, the only step that holds a VM down.

Downtime runs from the start of Save-VM to the destination VM's heartbeat. The source
is never changed destructively here: a failure anywhere before the heartbeat rolls back
at once, in this process (`workers.steps.rollback`), and the source resumes from its
saved state. Runs on the `cutover` pool, which no copy can hold up.

Just before Save-VM the source's AutomaticStartAction becomes Nothing, so a restart of the
source host never resumes the saved copy while the VM runs on the destination
(`workers.steps.start_action`); the VM gets it back where it runs on: on the destination
once started here, on the source in a rollback.
"""
from __future__ import annotations

import contextlib
import time

from workers.coord.group_barrier import IMPORTED, PREPARED
from workers.coord.locks import Fenced, LeaseKeeper
from workers.engine import context, together
from workers.engine.step import HardFailure, fence, mlog, resume, send, step_task
from workers.hyperv.driver import WarmProcesses
from workers.hyperv.errors import VMNotFound
from workers.model import network_map, options, routing, states
from workers.model.errors import is_retryable
from workers.model.file_plan import PathMap, chain_paths, downtime_files, stored_isos
from workers.model.preflight import saved_memory_bytes
from workers.model.record import RecordNotFound, StaleState
from workers.steps import precopy, start_action
from workers.steps.downtime_copy import DowntimeCopy, Hasher
from workers.steps.prepare import cold_changed
from workers.steps.rollback import fail_rollback, imported_by, rollback

HEARTBEAT_TIMEOUT_S = 120


def _rollback_now(mid: str, error: str) -> None:
    """Called by the cutover itself: the VM is down, so roll back in this process.

    If that meets a transient fault (the destination's WinRM unreachable: the copy there
    must be removed before the source may run again), hand over to the rollback task,
    which retries with backoff; left to escape, the fault would leave the VM saved until
    the reconciler noticed the migration stuck in rolling_back."""
    try:
        rec = context.store().transition(mid, {states.CUTTING_OVER}, states.ROLLING_BACK, error=error)
    except StaleState:  # someone else already moved it; their step owns it
        return
    # before its own rollback: the other members waiting down at the barrier go back at once
    together.abort(rec, error)
    lg = mlog(mid, "rollback")
    try:
        rollback.__wrapped_step__(mid, lg)
    except (Fenced, RecordNotFound, StaleState) as e:  # someone else moved it on: theirs now
        lg.warning("dropped: %s", e)
    except Exception as e:  # noqa: BLE001 - every failure must route somewhere
        if not is_retryable(e):
            lg.error("failed: %s: %s", type(e).__name__, e)
            fail_rollback(mid, f"rollback: {e}")
            return
        lg.warning("transient failure, the rollback task takes over: %s", e)
        send(routing.ROLLBACK, mid)  # leaves once this delivery's step claim is released


# No retries: while the VM is down, rolling back beats waiting out a backoff.
@step_task(routing.CUTOVER, on_hard_failure=_rollback_now, retry=None)
def cutover(mid: str, lg) -> None:
    rec = resume(mid, states.CUTTING_OVER)
    if rec is None:
        return
    if together.is_member(rec) and not rec.get("cold"):
        _together(rec, lg)
        return
    if rec.get("save_started_at"):
        _resume_interrupted(rec, lg)
        return
    if rec.get("cold"):
        _cold_cutover(rec, lg)
        return
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    _check_window(rec)
    # Each operation below starts its powershell.exe and loads the Hyper-V module before Save-VM,
    # so the downtime pays for the cmdlets only (a cold start is most of a second per call).
    warm = WarmProcesses({"save": (src, "save_vm"), "import": (dst, "import_vm"), "start": (dst, "start_vm"),
                          "heartbeat": (dst, "wait_heartbeat")})
    with LeaseKeeper(context.locks(), rec["vm_id"], mid, every_s=10), warm, contextlib.ExitStack() as stack:
        rec, t = _save_copy_import(rec, lg, src, dst, warm, stack)
        t["t_start"] = t["t_imported"]  # no group to wait for
        _start(rec, dst, warm)
        t1 = time.time()
    _switched(rec, lg, t, t1)


def _check_window(rec: dict) -> None:
    end_at = options.of(rec).window_end()
    if end_at is not None and time.time() > end_at:
        raise HardFailure("the cutover window closed before Save-VM could start; "
                          "ask for a later or longer --window")


def _save_copy_import(rec: dict, lg, src, dst, warm: WarmProcesses, stack: contextlib.ExitStack) -> tuple[dict, dict]:
    """Save-VM on the source, copy what changed since the pre-copy, import on the destination:
    the VM is then down, registered there and not started. Returns the record and the times."""
    mid, cfg = rec["id"], context.config()
    pm = PathMap.for_record(cfg, rec)
    fence(rec)
    copier = DowntimeCopy(rec, lg)
    running = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    rec = start_action.note(mid, rec, running)
    # the files as the pre-copy gate saw them last (a record from before it noted them: these)
    paths = rec.get("downtime_paths") or [f["path"] for f in downtime_files(running)]
    copier.ready(rec, paths)
    memory = saved_memory_bytes(running)
    hasher = stack.enter_context(Hasher(dst))
    t0 = time.time()
    rec = context.store().set(mid, save_started_at=t0)
    vm = src.run("save_vm", {"vm_id": rec["vm_id"], **start_action.never(rec)}, warm=warm.get("save"))["vm"]
    t_saved = time.time()
    lg.info("saved in %.2fs", t_saved - t0)
    moved = copier.copy(rec, vm, hasher)
    t_copied = time.time()
    fence(rec)
    # the configuration quickmig copied: only the VM registered from it is ours to remove
    args = _import_args(cfg, rec, vm, pm)
    rec = context.store().set(mid, import_started_at=time.time(), import_config_path=args["config_path"])
    dst.run("import_vm", args, warm=warm.get("import"))
    t_imported = time.time()
    return rec, {"t0": t0, "t_saved": t_saved, "t_copied": t_copied, "t_imported": t_imported,
                 "moved": moved, "memory": memory}


def _start(rec: dict, dst, warm: WarmProcesses | None = None) -> None:
    fence(rec)
    # from here the guest may run (and acknowledge writes) on the destination
    context.store().set(rec["id"], start_started_at=time.time())
    # the copied configuration says Nothing: the VM's own action back once it runs there
    dst.run("start_vm", {"vm_id": rec["vm_id"], **start_action.restore(rec)}, warm=warm.get("start") if warm else None)
    dst.run("wait_heartbeat", {"vm_id": rec["vm_id"], "timeout_s": HEARTBEAT_TIMEOUT_S},
            warm=warm.get("heartbeat") if warm else None)


def _switched(rec: dict, lg, t: dict, t1: float) -> None:
    """The VM runs on the destination, verified: record its downtime and go on to finish."""
    mid = rec["id"]
    t0, t_saved, t_copied, t_imported = t["t0"], t["t_saved"], t["t_copied"], t["t_imported"]
    downtime = t1 - t0
    # a together member's wait for its group's point of no return is downtime, named apart
    waited = t["t_start"] - t_imported
    lg.info("switchover %.2fs (save %.2f, copy %.2f, import %.2f, start %.2f)", downtime,
            t_saved - t0, t_copied - t_saved, t_imported - t_copied, t1 - t["t_start"])
    precopy.remember_costs(rec["source"], rec["destination"], t["memory"],
                           t_saved - t0, t1 - t_copied - waited, t["moved"], t_copied - t_saved)
    breakdown = {"save": round(t_saved - t0, 3), "copy": round(t_copied - t_saved, 3),
                 "import": round(t_imported - t_copied, 3), "start": round(t1 - t["t_start"], 3)}
    if together.is_member(rec):
        breakdown["group_wait"] = round(waited, 3)
    context.store().transition(mid, {states.CUTTING_OVER}, states.FINISHING, downtime_seconds=round(downtime, 3),
                               downtime_bytes=t["moved"], verified_at=round(t1, 3), downtime_breakdown=breakdown)
    send(routing.FINISH, mid)


def _together(rec: dict, lg) -> None:
    """A member of a `together` group (docs/plans.md): wait for every member's gate
    (`prepared`), then save, copy and import, wait for every member to be imported
    (`imported`: the group's point of no return), then start. A member that waits ends its
    task; the last one in sends this step to the others. An abort of the group (any member
    that could not get this far) rolls this member back here."""
    mid = rec["id"]
    if rec.get("group_times"):
        _together_start(rec, lg)
        return
    if rec.get("save_started_at"):
        _resume_interrupted(rec, lg)  # died between Save-VM and ready to start: rolls back
        return
    v = together.arrive(rec, PREPARED)
    if v.what == "abort":
        raise HardFailure(v.why)
    if v.what == "wait":
        context.store().set(mid, group_waiting=PREPARED)
        lg.info("waiting for the other members of group %s to be ready", rec["member_of"]["group"])
        return
    _check_window(rec)
    late = together.spread_exceeded(rec)
    if late:
        raise HardFailure(late)
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    warm = WarmProcesses({"save": (src, "save_vm"), "import": (dst, "import_vm")})
    with LeaseKeeper(context.locks(), rec["vm_id"], mid, every_s=10), warm, contextlib.ExitStack() as stack:
        rec, t = _save_copy_import(rec, lg, src, dst, warm, stack)
    rec = context.store().set(mid, group_times=t, group_waiting=IMPORTED)
    lg.info("ready to start (saved on %s, imported on %s)", rec["source"], rec["destination"])
    _together_start(rec, lg)


def _together_start(rec: dict, lg) -> None:
    mid = rec["id"]
    if rec.get("start_started_at"):
        # died while starting, past the group's point of no return: forward if it runs there
        _resume_interrupted(rec, lg)
        return
    v = together.arrive(rec, IMPORTED)
    if v.what == "abort":
        raise HardFailure(v.why)
    if v.what == "wait":
        lg.info("ready to start; waiting for the other members of group %s", rec["member_of"]["group"])
        return
    dst = context.driver(rec["destination"])
    t = dict(rec["group_times"])
    with LeaseKeeper(context.locks(), rec["vm_id"], mid, every_s=10):
        t["t_start"] = time.time()
        _start(rec, dst)
        t1 = time.time()
    _switched(rec, lg, t, t1)


def _import_args(cfg, rec: dict, vm: dict, pm: PathMap) -> dict:
    fixed = set(rec.get("parents_fixed") or [])  # prepare re-parented these already
    return {"config_path": pm.dest(vm["config_path"]),
            "disk_paths": pm.mapping(chain_paths(vm)),
            "iso_paths": pm.mapping(stored_isos(cfg.host(rec["source"]), vm)),
            "eject_isos": [e["path"] for e in rec.get("ejected_isos") or []],
            "parent_fixes": [f for f in pm.parent_fixes(vm) if f["path"] not in fixed],
            "roots": cfg.host(rec["destination"]).roots,
            "vm_folder": pm.vm_folder(vm),
            "switch_map": network_map.changes(network_map.switch_map(
                cfg, rec["source"], rec["destination"], options.of(rec), vm.get("switches", [])))}


def _cold_cutover(rec: dict, lg) -> None:
    """A cold move's switchover (docs/design.md, "Cold moves"): the VM is Off or Saved on the
    source and every file is on the destination already, so there is no Save-VM, no copy and
    no downtime: the destination imports the VM as it is (Saved with its saved state), and
    starts it only with --start (a Saved VM resumes there). The source must still be what it
    was when its files were copied, before the import and again after the start, so the VM
    never runs on both: a source started meanwhile rolls the move back (the imported copy is
    removed; the source is left as it is)."""
    mid, cfg = rec["id"], context.config()
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    with LeaseKeeper(context.locks(), rec["vm_id"], mid, every_s=10):
        fence(rec)
        vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
        if vm["state"] != rec["cold"]:
            raise HardFailure(cold_changed(rec, vm))
        pm = PathMap.for_record(cfg, rec, vm)
        args = _import_args(cfg, rec, vm, pm)
        rec = context.store().set(mid, import_started_at=time.time(), import_config_path=args["config_path"])
        imported = dst.run("import_vm", args)["vm"]
        lg.info("imported on %s as %s", rec["destination"], imported["state"])
        if options.of(rec).start:
            fence(rec)
            context.store().set(mid, start_started_at=time.time())
            dst.run("start_vm", {"vm_id": rec["vm_id"]})
            lg.info("started on %s (%s)", rec["destination"],
                    "resumed from its saved state" if rec["cold"] == "Saved" else "booted")
        now = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
        if now["state"] != rec["cold"]:
            raise HardFailure(cold_changed(rec, now))
    context.store().transition(mid, {states.CUTTING_OVER}, states.FINISHING)
    send(routing.FINISH, mid)


def _resume_interrupted(rec: dict, lg) -> None:
    """A previous delivery died inside the downtime (its step claim lapsed, so it is gone).
    Once the destination VM has started, its guest may have acknowledged writes that the
    source's saved state lacks: going back would lose them, so roll forward. Before that,
    nothing ran on the destination and rolling back is safe."""
    mid, dst = rec["id"], context.driver(rec["destination"])
    try:
        found = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        found = None
    there = found["state"] if found else None
    if found and not imported_by(rec, found):
        there = f"{there} but not the VM this migration imported"
    if there != "Running":
        raise HardFailure(f"cutover was interrupted (worker lost) before the destination VM started "
                          f"(it is {there or 'absent'} there); rolling back")
    lg.warning("cutover was interrupted after the destination VM started; rolling forward")
    fence(rec)
    dst.run("wait_heartbeat", {"vm_id": rec["vm_id"], "timeout_s": HEARTBEAT_TIMEOUT_S})
    t1 = time.time()
    context.store().transition(mid, {states.CUTTING_OVER}, states.FINISHING,
                               downtime_seconds=round(t1 - rec["save_started_at"], 3), verified_at=round(t1, 3),
                               cutover_resumed=True)
    send(routing.FINISH, mid)
