"""Phase 3 (docs/design.md, "The method"): validate the VM on the destination while it
still runs on the source, so a destination that cannot run it is found before any downtime.

The validation is the cutover's import without its last step, on the same files at the same
places (docs/hyperv-rules.md, "Validation and import"): the VM's own configuration is copied
where the cutover will register it (the cutover copies it again after Save-VM), the frozen
differencing disks are pointed at their parents' copies, and `compare_vm` runs Compare-VM
-Register on that configuration with the disks, ISO images and folders fixed through the
report, as `import_vm` will. Nothing is registered; the planned VM Compare-VM makes is
destroyed, and whatever could not be removed stops the migration here, named in the record.
"""
from __future__ import annotations

from workers.engine import context
from workers.engine.step import HardFailure, fence, resume, send, start_rollback, step_task
from workers.model import network_map, options, preflight, routing, states
from workers.model.file_plan import PathMap, layout_problems, stored_isos
from workers.steps.transfer import transfer


def _left_behind(rec: dict, left: list[dict]) -> str:
    what = "; ".join(f"planned virtual machine {item.get('name') or '?'} ({item.get('id')}): {item.get('error')}"
                     for item in left)
    return (f"validation on {rec['destination']} could not remove what Compare-VM made: {what}. It keeps the VM's "
            f"id and its copied configuration in use there; remove it (Msvm_VirtualSystemManagementService."
            f"DestroySystem) before migrating this VM to {rec['destination']} again")


def cold_changed(rec: dict, vm: dict) -> str:
    """Why a cold move stops: its VM is no longer in the state whose files were copied."""
    return (f"{rec['vm']} became {vm['state']} on {rec['source']} during its cold move (it was {rec['cold']} when "
            "its files were copied); it stays there as it is now: migrate it again")


def _switch_changes(cfg, rec: dict, vm: dict) -> dict[str, str]:
    """The adapters to connect to another switch on the destination (--switch-map, the pair's default)."""
    return network_map.changes(network_map.switch_map(cfg, rec["source"], rec["destination"], options.of(rec),
                                                      vm.get("switches", [])))


@step_task(routing.PREPARE, on_hard_failure=start_rollback)
def prepare(mid: str, lg) -> None:
    rec = resume(mid, states.PREPARING)
    if rec is None:
        return
    store, cfg = context.store(), context.config()
    src, dst = context.driver(rec["source"]), context.driver(rec["destination"])
    # pre-flight refused this already; a VM with the id that appeared since is refused the same
    # way, and the rollback leaves it alone (only a VM this migration imported is removed)
    there = next((v for v in dst.run("list_vms", {})["vms"] if v["id"].lower() == rec["vm_id"].lower()), None)
    problem = preflight.same_id_problem({"name": rec["vm"], "id": rec["vm_id"]}, rec["destination"], there)
    if problem:
        raise HardFailure(problem)
    vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    if rec.get("cold") and vm["state"] != rec["cold"]:
        raise HardFailure(cold_changed(rec, vm))
    pm = PathMap.for_record(cfg, rec, vm)
    found = layout_problems(vm) + pm.problems(vm)  # pre-flight refused these; the VM may have changed since
    if found:
        raise HardFailure(f"{rec['vm']} cannot be registered on {rec['destination']} as it is laid out: "
                          + "; ".join(found))
    fence(rec)
    rec = store.get(mid)
    transfer(rec, [{"path": vm["config_path"], "kind": "config"}], lg)
    cold = bool(rec.get("cold"))
    # a cold move has every disk there already, its leaves too
    fixes = pm.parent_fixes(vm) if cold else pm.frozen_parent_fixes(vm)
    if fixes:
        fence(rec)
        dst.run("reparent_disks", {"parent_fixes": fixes, "roots": cfg.host(rec["destination"]).roots})
        rec = store.set(mid, parents_fixed=[f["path"] for f in fixes])
    report = dst.run("compare_vm", {"config_path": pm.dest(vm["config_path"]),
                                    "disk_paths": (pm.mapping([d["path"] for d in vm["disks"]]) if cold
                                                   else pm.validation_disk_paths(vm)),
                                    "iso_paths": pm.mapping(stored_isos(cfg.host(rec["source"]), vm)),
                                    "eject_isos": [e["path"] for e in rec.get("ejected_isos") or []],
                                    "vm_folder": pm.vm_folder(vm),
                                    "switch_map": _switch_changes(cfg, rec, vm)})
    left = report.get("left_behind") or []
    if left:
        store.set(mid, validation_left=left)
        lg.error("validation left on %s: %s", rec["destination"], left)
        raise HardFailure(_left_behind(rec, left))
    problems = report.get("incompatibilities") or []
    if problems:
        raise HardFailure("destination cannot run this VM: " +
                          "; ".join(f"{p.get('message_id')}: {p.get('message')}" for p in problems))
    lg.info("destination validated the VM configuration (Compare-VM -Register, nothing left behind)")
    store.transition(mid, {states.PREPARING}, states.CUTTING_OVER)
    send(routing.CUTOVER, mid)
