"""Phase 3 (docs/design.md, "The method"): validate the VM on the destination while it
still runs on the source, so a destination that cannot run it is found before any downtime.
"""
from __future__ import annotations

from workers.engine import context
from workers.engine.step import HardFailure, resume, send, start_rollback, step_task
from workers.hyperv.errors import VMNotFound
from workers.model import routing, states
from workers.model.file_plan import PathMap


@step_task(routing.PREPARE, on_hard_failure=start_rollback)
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
    send(routing.CUTOVER, mid)
