"""Rollback: any failure before the destination VM is verified running ends here, and
the VM runs on the source again (docs/design.md, "The method").

It removes what this migration made on the destination (the files it recorded in
created_files before their first byte that no VM there refers to, each a plain path inside
the destination's roots; the VM it imported, only if the VM with that id there is the one
registered from the configuration it copied; ISO images no other VM there uses), brings
back whatever the guest wrote on the destination if it ever started there, resumes the
source VM (from its saved state, if the cutover saved it), gives it back its automatic
start action (the cutover set Nothing; the record keeps the value, so this holds after a
worker crash too) and merges our checkpoint. It runs on the `cutover` pool: it may be what
brings a saved VM back.
"""
from __future__ import annotations

import time

from workers.coord.shared_files import SharedFiles
from workers.engine import context, markers
from workers.engine.step import RetryPolicy, end, fence, resume, step_task
from workers.hyperv.errors import VMNotFound
from workers.model import hostpaths, routing, states
from workers.model.file_plan import SHARED_KINDS, PathMap, place_of
from workers.smb import file_copy
from workers.steps import start_action
from workers.steps.checkpoint import ours


def import_config_path(rec: dict) -> str | None:
    """The configuration the cutover imported on the destination (None before the import
    started): the VM registered from it, and only that one, is this migration's to remove."""
    if not rec.get("import_started_at"):
        return None
    if rec.get("import_config_path"):
        return rec["import_config_path"]
    # a record from before the cutover noted it: the path the cutover computed then
    src = context.driver(rec["source"]).run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    return PathMap.for_record(context.config(), rec, src).dest(src["config_path"])


def imported_by(rec: dict, vm: dict) -> bool:
    """Whether `vm` (a VMInfo on the destination) is the VM this migration imported there: the
    import started, and the VM's configuration is the one the migration copied. A VM with the
    same id and another configuration (a Hyper-V Replica replica keeps its primary's id) is not."""
    path = import_config_path(rec)
    return path is not None and hostpaths.same(vm.get("config_path") or "", path)


def _bring_back(rec: dict, src, dst, lg) -> None:
    """The guest ran on the destination before it was verified: whatever it acknowledged
    there is newer than the source's saved state, so save it there and bring its leaf
    disks and memory back before the source resumes (nothing lost)."""
    try:
        vm = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    except VMNotFound:
        return  # already removed by an earlier run of this rollback, after the copy back
    if not imported_by(rec, vm):
        lg.warning("the VM with id %s on %s is not the one this migration imported (its configuration is %s); "
                   "nothing brought back from it", rec["vm_id"], rec["destination"], vm.get("config_path"))
        return
    if vm["state"] == "Running":
        fence(rec)
        # a copy about to be removed: a restart of the destination must not resume it meanwhile
        vm = dst.run("save_vm", {"vm_id": rec["vm_id"], "automatic_start_action": start_action.NEVER})["vm"]
    if vm["state"] != "Saved":
        return  # never ran: the source's own saved state is the newest
    cfg = context.config()
    dst_ep, src_ep = context.smb_endpoint(rec["destination"]), context.smb_endpoint(rec["source"])
    paths = [d["chain"][0] for d in vm["disks"] if d["chain"]]
    paths += [p for p in vm.get("state_files", []) if not p.lower().endswith(".vmcx")]
    # each file goes back to the source file it was placed from (the migration's placement,
    # inverted over the saved source's own files, its memory among them); a path from the destination's answer that
    # is no such file is never written anywhere
    saved = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    pm = PathMap.for_record(cfg, rec, saved)
    back = {pm.dest(p).lower(): p for d in saved["disks"] for p in d.get("chain", [])}
    back |= {pm.dest(p).lower(): p for p in saved.get("state_files", [])}

    def source_of(p: str) -> str:
        if p.lower() not in back:
            raise hostpaths.HostPathError(f"{p!r} on {rec['destination']} is no file this migration placed")
        return back[p.lower()]
    fixes = [{"path": source_of(d["chain"][0]), "parent_path": source_of(d["chain"][1])}
             for d in vm["disks"] if len(d["chain"]) > 1]
    fence(rec)
    for p in paths:
        there, here = place_of(cfg.host(rec["destination"]), p), pm.src_place(source_of(p))
        file_copy.copy_file(dst_ep.on_share(there.share), there.rel, src_ep.on_share(here.share), here.rel)
    src.reparent_disks(fixes)
    lg.info("brought %d files the guest changed on %s back to %s", len(paths), rec["destination"], rec["source"])


def _confined(rec: dict, paths: list[str], lg) -> list[str]:
    """The paths quickmig may delete on the destination (plain paths inside its roots); any
    other one is left alone, and said so in the log and the record."""
    host = context.config().host(rec["destination"])
    ok, refused = [], []
    for p in paths:
        try:
            ok.append(host.confine(p))
        except hostpaths.HostPathError as e:
            refused.append(str(e))
    if refused:
        lg.warning("not deleting %d path(s) on %s: %s", len(refused), rec["destination"], "; ".join(refused))
        context.store().set(rec["id"], paths_refused=refused)
    return ok


def _leave_isos(rec: dict) -> tuple[set[str], list[str]]:
    """The ISO images and golden parents this migration used on the destination: (those
    another migration's VM uses, which stay; those quickmig put there that no one else uses,
    which go)."""
    isos = [f["path"] for f in (rec.get("plan") or {}).get("frozen", []) if f["kind"] in SHARED_KINDS]
    pm = PathMap.for_record(context.config(), rec)
    shared = SharedFiles(context.store().r)
    keep, last_use = set(), []
    for path in map(pm.dest, isos):
        if shared.leave(rec["destination"], path, rec["id"]):
            last_use.append(path)
        else:
            keep.add(path)
    return keep, last_use


def _remove_created_folders(rec: dict, lg) -> None:
    """The folders the copies created on the destination (a --storage-map's or
    --destination-path's own, say), deepest first, each only if it is empty now: the host's
    clean-up removes Hyper-V's own folders only."""
    host, ep = context.config().host(rec["destination"]), context.smb_endpoint(rec["destination"])
    folders = sorted(_confined(rec, rec.get("created_folders") or [], lg), key=lambda p: -p.count("\\"))
    removed = [p for p in folders if file_copy.remove_empty_folder(ep.on_share(place_of(host, p).share),
                                                                    place_of(host, p).rel)]
    if removed:
        lg.info("removed %d empty folder(s) the copies had made on %s", len(removed), rec["destination"])


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
    rec = markers.recover(rec, lg)
    # an interrupted copy leaves `<file>.partial` beside the file it was making
    keep, last_use = _leave_isos(rec)
    created = [p for p in rec.get("created_files", []) if p not in keep]
    created += [p for p in last_use if p not in created]
    created = created + [p + file_copy.PARTIAL_SUFFIX for p in created]
    created = _confined(rec, list(dict.fromkeys(created)), lg)
    fence(rec)
    if rec.get("start_started_at") and not rec.get("cold"):
        _bring_back(rec, src, dst, lg)
    config_path = import_config_path(rec)
    if config_path is not None:
        # the VM registered from the configuration we copied, and no other, is turned off and
        # removed before the source runs again (never two); remove_vm also deletes what we
        # copied that no VM there refers to, and the folders that leaves empty
        out = dst.remove_vm(rec["vm_id"], config_path, turn_off=True, delete_paths=created)
        if out.get("not_ours"):
            lg.warning("left the VM with id %s on %s alone: %s", rec["vm_id"], rec["destination"], out["not_ours"])
    elif created:
        # the import never started: whatever VM has this id there is not ours
        out = dst.delete_files(created)
    else:
        out = {}
    if out:
        lg.info("removed %d files%s from %s", len(out.get("deleted") or []),
                " and the imported VM" if out.get("removed") else "", rec["destination"])
        for k in out.get("kept") or []:
            lg.warning("kept %s on %s: %s refers to it", k["path"], rec["destination"], k["used_by"])
    for path in last_use:
        SharedFiles(context.store().r).deleted(rec["destination"], path, mid)
    if keep:
        lg.info("kept %d ISO image(s) or parent disk(s) on %s that other migrated VMs use", len(keep),
                rec["destination"])
    vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    if rec.get("cold"):
        # a cold move never changed the source: it stays Off or Saved (or whatever it became)
        _remove_created_folders(rec, lg)
        end(mid, states.ROLLED_BACK, rollback_seconds=round(time.time() - t0, 3))
        return
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
    _remove_created_folders(rec, lg)  # once the source runs again: it is only tidying
    took = time.time() - t0
    extra = {}
    if rec.get("save_started_at"):
        extra["downtime_seconds"] = round(time.time() - rec["save_started_at"], 3)
    end(mid, states.ROLLED_BACK, rollback_seconds=round(took, 3), **extra)
