"""The VM's AutomaticStartAction across a migration: what its host does with it at boot.

A saved or kept source copy that kept StartIfRunning or Start would run again by itself after
a restart of the source host, beside the VM on the destination. So the cutover notes the
running source's action in the record (`automatic_start_action`) and has Save-VM's script set
it to Nothing first; the VM gets its own action back wherever it runs on (start_vm sets it
once the VM runs: nothing documents that Set-VM may change a Saved VM), and a kept source
stays at Nothing, off (docs/hyperv-rules.md, "VM lifecycle").
"""
from __future__ import annotations

from workers.engine import context
from workers.hyperv.driver import START_ACTIONS

NEVER = "Nothing"


def note(mid: str, rec: dict, vm: dict) -> dict:
    """Note the running source VM's action in the record before anything changes it (a
    redelivered cutover keeps the first one noted); returns the record."""
    action = vm.get("automatic_start_action")
    if rec.get("automatic_start_action") or action not in START_ACTIONS:
        return rec
    return context.store().set(mid, automatic_start_action=action)


def never(rec: dict) -> dict:
    """save_vm's or stop_vm's argument that makes a copy never start by itself (once the
    record holds the action to give back)."""
    return {"automatic_start_action": NEVER} if rec.get("automatic_start_action") in START_ACTIONS else {}


def restore(rec: dict) -> dict:
    """start_vm's argument that gives the VM its own action back, if the record has it."""
    action = rec.get("automatic_start_action")
    return {"automatic_start_action": action} if action in START_ACTIONS else {}


def differs(rec: dict, vm: dict) -> bool:
    """Whether `vm` (VMInfo) lacks the action the record says it should get back."""
    want = restore(rec).get("automatic_start_action")
    return want is not None and vm.get("automatic_start_action") != want
