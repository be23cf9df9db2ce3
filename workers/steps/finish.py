"""Phase 5 (docs/design.md, "The method"): the VM runs on the destination; merge our
checkpoint there and remove the source VM (or keep it off for a while: --keep-source: its
saved state discarded, its automatic start action Nothing, so it never starts by itself).

From here nothing rolls back: a failure ends `failed`, with what is left to clean by hand.
"""
from __future__ import annotations

import time

from workers.engine import context
from workers.engine.step import HardFailure, end, fence, resume, step_task
from workers.hyperv.errors import VMNotFound
from workers.model import keys, options, routing, states
from workers.model.file_plan import chain_paths
from workers.steps import hooks, start_action
from workers.steps.checkpoint import ours


def _fail_finish(mid: str, error: str) -> None:
    end(mid, states.FAILED, error=f"{error} (the VM runs on the destination; clean the source by hand)")


@step_task(routing.FINISH, on_hard_failure=_fail_finish)
def finish(mid: str, lg) -> None:
    rec = resume(mid, states.FINISHING)
    if rec is None:
        return
    hooks.post_cutover(mid, lg)  # the destination VM was verified running; the source is still there
    dst = context.driver(rec["destination"])
    vm = dst.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
    if start_action.differs(rec, vm):  # a cutover that died between Start-VM and Set-VM
        fence(rec)
        vm = dst.run("start_vm", {"vm_id": rec["vm_id"], **start_action.restore(rec)})["vm"]
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
            src.run("stop_vm", {"vm_id": rec["vm_id"], "automatic_start_action": start_action.NEVER})
            end(mid, states.COMPLETED, source_kept_until=keep_source(mid, hours))
            lg.info("kept the source VM on %s, off, for %g h", rec["source"], hours)
            return
        left = remove_source(rec, old, lg)
        if left:
            raise HardFailure(f"the source's VM with id {rec['vm_id']} changed before it could be removed: {left}")
    end(mid, states.COMPLETED)


def keep_source(mid: str, hours: float) -> float:
    """List the source VM, now off, for removal `hours` from now (workers.steps.keep_source
    removes it then); returns that time."""
    until = time.time() + hours * 3600
    context.store().r.zadd(keys.KEPT_SOURCES, {mid: until})
    return round(until, 3)


def source_files(rec: dict, old: dict) -> list[str]:
    """What finish may delete on the source once the VM is removed there: the VM's own disk
    chains, state files and checkpoint configurations that this migration copied, or found
    on the destination with the same digest (a golden parent an earlier migration copied
    there), so a file it never read, an ISO image, or anything else the record does not list
    stays; each a plain path inside the source's roots. remove_vm then leaves any of them
    that another VM on the source refers to at that moment (a golden parent several VMs
    share): the last of them to move takes the parent with it."""
    host = context.config().host(rec["source"])
    copied = {c["path"].lower() for c in rec.get("copied", [])}
    isos = {p.lower() for p in old.get("isos", [])}
    isos |= {f["path"].lower() for f in (rec.get("plan") or {}).get("frozen", []) if f.get("kind") == "iso"}
    own = chain_paths(old) + old.get("state_files", []) + [s["config_path"] for s in old.get("snapshots", [])]
    return [host.confine(p) for p in dict.fromkeys(own) if p.lower() in copied and p.lower() not in isos]


def remove_source(rec: dict, old: dict, lg) -> str | None:
    """Remove-VM on the source (the VM described as `old`, nothing else with its id) and
    delete the files that were its own and that no other VM there uses; None, or why the
    VM with that id was left in place (it is no longer the one described)."""
    paths = source_files(rec, old)
    out = context.driver(rec["source"]).remove_vm(rec["vm_id"], old["config_path"], turn_off=False,
                                                   delete_paths=paths)
    for k in out.get("kept") or []:
        lg.info("kept %s on %s: %s uses it", k["path"], rec["source"], k["used_by"])
    if out.get("not_ours"):
        lg.warning("left the VM with id %s on %s in place: %s", rec["vm_id"], rec["source"], out["not_ours"])
        return out["not_ours"]
    lg.info("removed the VM and %d files from %s", len(out.get("deleted") or []), rec["source"])
    return None
