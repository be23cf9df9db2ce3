"""The control pool: short WinRM steps that never hold a VM down.

snapshot (phase 1), prepare (phase 3) and finish (phase 5) of DESIGN section 1.
"""
from __future__ import annotations

import time

from workers import context, options, preflight, states
from workers.hyperv.errors import VMNotFound
from workers.pipeline import HardFailure, end, enter, fence, pipeline_task, resume, send, start_rollback
from workers.plan import PathMap, chain_paths, frozen_files


def snapshot_name(mid: str) -> str:
    return f"quickmig-{mid}"


def ours(vm: dict, mid: str) -> list[dict]:
    return [s for s in vm.get("snapshots", []) if s["name"] == snapshot_name(mid)]


def _preflight(rec: dict, vm: dict, lg) -> None:
    """Phase 0: refuse, before any checkpoint, what the destination could not run."""
    from workers.smb import copy as smb
    cfg = context.config()
    src_info = context.driver(rec["source"]).run("host_info", {})
    dst_info = context.driver(rec["destination"]).run(
        "host_info", {"vm_root": cfg.host(rec["destination"]).vm_root})
    ep, pm = context.smb_endpoint(rec["source"]), PathMap(cfg, rec["source"], rec["destination"])
    files = set(chain_paths(vm)) | set(vm.get("state_files", [])) | set(vm.get("isos", []))
    file_bytes = sum(smb.file_size(ep, pm.rel(p)) for p in files)
    found = preflight.problems(vm, src_info, dst_info, destination=rec["destination"], file_bytes=file_bytes)
    if found:
        raise HardFailure("pre-flight refused: " + "; ".join(found))
    lg.info("pre-flight ok: %d files, %.0f MiB to move", len(files), file_bytes / 2**20)


@pipeline_task("quickmig.snapshot", on_hard_failure=start_rollback)
def snapshot(mid: str, lg) -> None:
    rec = context.store().get(mid)
    if rec["state"] == states.QUEUED and not context.admission().holds(mid, rec["source"]):
        # only admission starts a migration (workers.admission): a stray message must not
        # let one past the per-host limit; admission sends this step again when it is its turn
        lg.info("dropped: not admitted yet")
        return
    rec = enter(mid, {states.QUEUED}, states.SNAPSHOTTING)
    if rec is None:
        return
    src = context.driver(rec["source"])
    vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    if vm["state"] != "Running":
        raise HardFailure(f"{rec['vm']} is {vm['state']} on {rec['source']}; quickmig moves running VMs")
    mine = ours(vm, mid)
    if mine:  # a redelivery after the checkpoint was taken
        snap = mine[0]
    else:
        _preflight(rec, vm, lg)
        fence(rec)
        res = src.run("checkpoint_vm", {"vm_id": rec["vm_id"], "snapshot_name": snapshot_name(mid)})
        snap, vm = res["snapshot"], res["vm"]
        context.store().update(mid, lambda r: r.update(checkpoint_at=time.time()))
    lg.info("checkpoint %s taken; active disks now %s", snap["id"], [d["path"] for d in vm["disks"]])
    context.store().transition(mid, {states.SNAPSHOTTING}, states.COPYING,
                               snapshot=snap, plan={"frozen": frozen_files(vm, snap["id"])})
    send("quickmig.copy", mid)


@pipeline_task("quickmig.prepare", on_hard_failure=start_rollback)
def prepare(mid: str, lg) -> None:
    rec = resume(mid, states.PREPARING)
    if rec is None:
        return
    cfg = context.config()
    dst = context.driver(rec["destination"])
    try:
        dst.run("describe_vm", {"vm_id": rec["vm_id"]})
    except VMNotFound:
        pass
    else:
        raise HardFailure(f"{rec['destination']} already has a VM with id {rec['vm_id']}; "
                          "Import-VM -Register cannot register it twice")
    pm = PathMap(cfg, rec["source"], rec["destination"])
    report = dst.run("compare_vm", {"config_path": pm.dest(rec["snapshot"]["config_path"]),
                                    "vm_root": cfg.host(rec["destination"]).vm_root})
    problems = report.get("incompatibilities") or []
    if problems:
        raise HardFailure("destination cannot run this VM: " +
                          "; ".join(f"{p.get('message_id')}: {p.get('message')}" for p in problems))
    lg.info("destination validated the VM configuration")
    context.store().transition(mid, {states.PREPARING}, states.CUTTING_OVER)
    send("quickmig.cutover", mid)


def _fail_finish(mid: str, error: str) -> None:
    end(mid, states.FAILED, error=f"{error} (the VM runs on the destination; clean the source by hand)")


@pipeline_task("quickmig.finish", on_hard_failure=_fail_finish)
def finish(mid: str, lg) -> None:
    rec = resume(mid, states.FINISHING)
    if rec is None:
        return
    dst = context.driver(rec["destination"])
    vm = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    snaps = ours(vm, mid)
    if snaps:
        fence(rec)
        dst.run("remove_snapshots", {"vm_id": rec["vm_id"], "snapshot_ids": [s["id"] for s in snaps]})
        lg.info("merged checkpoint on %s", rec["destination"])
    src = context.driver(rec["source"])
    try:
        old = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        old = None
    if old is not None:
        if old["state"] == "Running":
            raise HardFailure(f"{rec['vm']} is Running on the source too; not removing it")
        fence(rec)
        hours = options.of(rec).keep_source_hours
        if hours:
            from workers import keep_source
            src.run("stop_vm", {"vm_id": rec["vm_id"]})
            end(mid, states.COMPLETED, source_kept_until=keep_source.keep(mid, hours))
            lg.info("kept the source VM on %s, off, for %g h", rec["source"], hours)
            return
        remove_source(rec, old, lg)
    end(mid, states.COMPLETED)


def remove_source(rec: dict, old: dict, lg) -> None:
    """Remove-VM on the source and delete the files that were its own."""
    paths = chain_paths(old) + old.get("state_files", []) + [s["config_path"] for s in old.get("snapshots", [])]
    context.driver(rec["source"]).run("remove_vm", {"vm_id": rec["vm_id"], "turn_off": False, "delete_paths": paths})
    lg.info("removed the VM and %d files from %s", len(paths), rec["source"])
