"""Phase 3 (docs/design.md, "The method"): validate the VM on the destination while it
still runs on the source, so a destination that cannot run it is found before any downtime.
"""
from __future__ import annotations

from workers.engine import context
from workers.engine.step import HardFailure, resume, send, start_rollback, step_task
from workers.model import preflight, routing, states
from workers.model.file_plan import PathMap


@step_task(routing.PREPARE, on_hard_failure=start_rollback)
def prepare(mid: str, lg) -> None:
    rec = resume(mid, states.PREPARING)
    if rec is None:
        return
    cfg = context.config()
    dst = context.driver(rec["destination"])
    # pre-flight refused this already; a VM with the id that appeared since is refused the same
    # way, and the rollback leaves it alone (only a VM this migration imported is removed)
    there = next((v for v in dst.run("list_vms", {})["vms"] if v["id"].lower() == rec["vm_id"].lower()), None)
    problem = preflight.same_id_problem({"name": rec["vm"], "id": rec["vm_id"]}, rec["destination"], there)
    if problem:
        raise HardFailure(problem)
    pm = PathMap(cfg, rec["source"], rec["destination"])
    report = dst.run("compare_vm", {"config_path": pm.dest(rec["snapshot"]["config_path"]),
                                    "vm_root": cfg.host(rec["destination"]).vm_root})
    problems = report.get("incompatibilities") or []
    if problems:
        raise HardFailure("destination cannot run this VM: " +
                          "; ".join(f"{p.get('message_id')}: {p.get('message')}" for p in problems))
    lg.info("destination validated the VM configuration")
    context.store().transition(mid, {states.PREPARING}, states.CUTTING_OVER)
    send(routing.CUTOVER, mid)
