"""Phase 0 and 1 (docs/design.md, "The method"): pre-flight, then the checkpoint that
freezes every disk the copy will read.

Runs on the `snapshot` pool with the other short control steps; the VM keeps running.
"""
from __future__ import annotations

import time

from workers.engine import context
from workers.engine.step import (
    HardFailure,
    enter,
    fence,
    send,
    start_rollback,
    step_task,
)
from workers.hyperv.driver import HyperVDriver
from workers.model import hostpaths, network_map, options, preflight, routing, states
from workers.model.config import Config
from workers.model.file_plan import (
    IsoCheck,
    PathMap,
    chain_paths,
    checkpoint_files,
    downtime_files,
    frozen_files,
    iso_check,
    layout_problems,
    library_isos,
    stored_isos,
    unc_reachable,
)
from workers.model.hostpaths import HostPathError
from workers.smb.endpoint import SmbEndpoint
from workers.steps.checkpoint import ours, snapshot_name
from workers.steps.transfer import file_size


def preflight_problems(cfg: Config, rec: dict, vm: dict, src: HyperVDriver, dst: HyperVDriver,
                       ep: SmbEndpoint) -> tuple[list[str], int, int, IsoCheck]:
    """Phase 0's checks, look-ups only (they change nothing, so a dry run makes them too):
    every reason the destination could not run the VM, how many files move and their bytes,
    and what becomes of the ISO images quickmig does not copy (`file_plan.iso_check`).
    `rec`: the migration (source, destination, options); `vm`: the VMInfo with its pre-flight
    facts (describe_vm `preflight`). The destination's host_info checks the VM's compatibility
    blob and lists its guardians when the VM needs them."""
    src_info = src.run("host_info", {})
    facts = vm.get("preflight") or {}
    asked = {"vm_root": cfg.host(rec["destination"]).vm_root}
    if facts.get("compatibility_info"):
        asked["compatibility_info"] = facts["compatibility_info"]
    if preflight.needs_key_protector(vm):
        asked["guardians"] = True
    unc = [p for p in library_isos(cfg.host(rec["source"]), vm) if hostpaths.unc_problem(p) is None]
    if unc:  # which library images the destination reaches (only well-formed UNC paths are asked about)
        asked["unc_paths"] = unc
    dst_info = dst.run("host_info", asked)
    isos = iso_check(cfg.host(rec["source"]), vm, source=rec["source"], destination=rec["destination"],
                     reachable=unc_reachable(dst_info, unc), eject=options.of(rec).eject_unmovable_isos)
    pm = PathMap.for_record(cfg, rec, vm)
    src_host = cfg.host(rec["source"])
    files = set(chain_paths(vm)) | set(vm.get("state_files", [])) | set(stored_isos(src_host, vm))
    files |= {p for snap in vm.get("snapshots", []) for p in checkpoint_files(snap)}
    sizes = {p: file_size(ep, pm.src_place(p)) for p in files}
    file_bytes = sum(sizes.values())
    cold = vm.get("state") in states.COLD_VM_STATES
    if vm.get("checkpoint_type") == "Standard" and not cold:  # our checkpoint of the running VM keeps its memory
        file_bytes += preflight.saved_memory_bytes(vm)
    found = layout_problems(vm) + pm.problems(vm)  # every file placed where -Register will look
    switches = network_map.switch_map(cfg, rec["source"], rec["destination"], options.of(rec), vm.get("switches", []))
    found += preflight.problems(vm, src_info, dst_info, destination=rec["destination"], file_bytes=file_bytes,
                                switches=switches, source=rec["source"])
    found += preflight.fact_problems(vm, src_info, dst_info, source=rec["source"], destination=rec["destination"],
                                     start=options.of(rec).start)
    found += _room_on_other_volumes(cfg, rec, pm, sizes, dst)
    found += isos.problems
    same_id = next((v for v in dst.run("list_vms", {})["vms"] if v["id"].lower() == vm["id"].lower()), None)
    problem = preflight.same_id_problem(vm, rec["destination"], same_id)
    if problem:
        found.append(problem)
    return found, len(files), file_bytes, isos


def _room_on_other_volumes(cfg: Config, rec: dict, pm: PathMap, sizes: dict[str, int], dst: HyperVDriver) -> list[str]:
    """The room of every destination volume the files land on besides vm_root's (whose room
    `preflight.problems` checks for everything): what lands on each, against the free space
    of the volume of one of its storage folders (host_info's vm_root_free_bytes there)."""
    host = cfg.host(rec["destination"])
    first = preflight.volume_of(host.vm_root)
    need: dict[str, int] = {}
    folder: dict[str, str] = {}
    for path, n in sizes.items():
        try:
            storage, _ = host.place(pm.dest(path))
        except HostPathError:
            continue  # pm.problems names it
        vol = preflight.volume_of(storage.path)
        if vol != first:
            need[vol] = need.get(vol, 0) + n
            folder.setdefault(vol, storage.path)
    found = []
    for vol, n in sorted(need.items()):
        free = dst.run("host_info", {"vm_root": folder[vol]}).get("vm_root_free_bytes")
        problem = preflight.volume_room_problem(rec["destination"], folder[vol], free, n)
        if problem:
            found.append(problem)
    return found


def _preflight(rec: dict, vm: dict, lg) -> list[dict]:
    """Phase 0: refuse, before any checkpoint, what the destination could not run; the DVD
    drives --eject-unmovable-isos empties on the destination's copy."""
    found, n_files, file_bytes, isos = preflight_problems(context.config(), rec, vm, context.driver(rec["source"]),
                                                    context.driver(rec["destination"]),
                                                    context.smb_endpoint(rec["source"]))
    if found:
        raise HardFailure("pre-flight refused: " + "; ".join(found))
    lg.info("pre-flight ok: %d files, %.0f MiB to move", n_files, file_bytes / 2**20)
    for iso in isos.library:
        lg.info("ISO image %s stays attached as it is (%s reaches it)", iso, rec["destination"])
    for e in isos.ejects:
        lg.info("ISO image %s (DVD drive %s) will be ejected on %s's copy (--eject-unmovable-isos)",
                e["path"], e["drive"] or "?", rec["destination"])
    return isos.ejects


def _cold(mid: str, rec: dict, vm: dict, lg) -> None:
    """A cold move (docs/design.md, "Cold moves"): the VM is Off or Saved, so nothing writes
    to its files while they are copied and no checkpoint is taken; every file is copied at
    once (the copy step) and the cutover imports it, without a Save-VM or a downtime. The
    state it had is noted (`cold`): the cutover moves it only while it is still that."""
    ejects = _preflight(rec, vm, lg)
    fence(rec)
    files = frozen_files(vm, context.config().host(rec["source"]))
    files += [f for f in downtime_files(vm) if not f["path"].lower().endswith(".vmcx")]
    lg.info("cold move of a VM that is %s: no checkpoint, every file copied now", vm["state"])
    context.store().transition(mid, {states.SNAPSHOTTING}, states.COPYING, cold=vm["state"],
                               plan={"frozen": files}, vm_folder=vm["path"], ejected_isos=ejects)
    send(routing.COPY, mid)


@step_task(routing.SNAPSHOT, on_hard_failure=start_rollback)
def snapshot(mid: str, lg) -> None:
    rec = context.store().get(mid)
    if rec["state"] == states.QUEUED and not context.admission().holds(mid, rec["source"]):
        # only admission starts a migration (workers.coord.admission): a stray message must not
        # let one past the per-host limit; admission sends this step again when it is its turn
        lg.info("dropped: not admitted yet")
        return
    rec = enter(mid, {states.QUEUED}, states.SNAPSHOTTING)
    if rec is None:
        return
    src = context.driver(rec["source"])
    vm = src.run("describe_vm", {"vm_id": rec["vm_id"], "preflight": True})["vm"]
    if vm["state"] in states.COLD_VM_STATES:
        _cold(mid, rec, vm, lg)
        return
    if vm["state"] != "Running":
        raise HardFailure(f"{rec['vm']} is {vm['state']} on {rec['source']}; quickmig moves Running VMs, "
                          "and Off or Saved ones cold")
    if options.of(rec).start:
        raise HardFailure(f"--start is for a VM that is Off or Saved, and {rec['vm']} is Running on {rec['source']}")
    mine = ours(vm, mid)
    ejects = rec.get("ejected_isos") or []
    if mine:  # a redelivery after the checkpoint was taken
        snap = mine[0]
    else:
        ejects = _preflight(rec, vm, lg)
        context.store().set(mid, ejected_isos=ejects)
        fence(rec)
        res = src.run("checkpoint_vm", {"vm_id": rec["vm_id"], "snapshot_name": snapshot_name(mid)})
        snap, vm = res["snapshot"], res["vm"]
        context.store().set(mid, checkpoint_at=time.time())
    lg.info("checkpoint %s taken; active disks now %s", snap["id"], [d["path"] for d in vm["disks"]])
    context.store().transition(mid, {states.SNAPSHOTTING}, states.COPYING,
                               snapshot=snap, plan={"frozen": frozen_files(vm, context.config().host(rec["source"]))},
                               vm_folder=vm["path"], ejected_isos=ejects)
    send(routing.COPY, mid)
