"""Phase 2 (docs/design.md, "The method"): copy the frozen files while the VM runs, then
the pre-copy rounds and the gate that decides when the cutover may begin, then the plan's
pre_cutover hook if it has one (workers.steps.hooks).

Runs alone on the `copy` pool: a copy of a large disk may take hours, and must never
delay a cutover that holds a VM down.
"""
from __future__ import annotations

from workers.coord.locks import LeaseKeeper
from workers.engine import context, markers
from workers.engine.step import fence, resume, send, start_rollback, step_task
from workers.model import routing, states
from workers.steps import hooks, precopy
from workers.steps.transfer import transfer


@step_task(routing.COPY, on_hard_failure=start_rollback)
def copy(mid: str, lg) -> None:
    rec = resume(mid, states.COPYING)
    if rec is None:
        return
    with LeaseKeeper(context.locks(), rec["vm_id"], mid):
        fence(rec)  # a stale delivery must not write over files a newer migration owns
        rec = markers.recover(rec, lg)
        transfer(rec, rec["plan"]["frozen"], lg)
        if not rec.get("cold"):  # a cold move's files were all copied: nothing writes to them
            precopy.gate(mid, lg)
        # here, not in the cutover: a hook never runs in the downtime or holds a cutover slot
        hooks.pre_cutover(mid, lg)
    context.store().transition(mid, {states.COPYING}, states.PREPARING)
    send(routing.PREPARE, mid)
