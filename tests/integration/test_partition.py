"""A worker node cut off from Redis, not from the hosts, in the middle of a downtime (a lab
of its own with two nodes, `lab up --nodes 2`): the cut-off worker completes no destructive
host call after its step claim could have passed to the other node; the migration ends by
itself (completed or rolled back), nothing lost, the VM on exactly one host, and the
namespaces are gone after `lab down`."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lab import nodes, orchestrator
from lab.oplog import host_calls, node_calls
from workers.hyperv.driver import DESTRUCTIVE_OPS
from workers.model.keys import STEP_CLAIM_TTL_S


def can_make_namespaces() -> bool:
    """Root, iproute2, and a kernel (or container) that lets us add a network namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{nodes.PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not can_make_namespaces(),
                                 reason="network namespaces need root, iproute2 and CAP_SYS_ADMIN")]

IMPORT_DELAY_S = 8


def saved_by(lab_dir: Path, node: str) -> list[str]:
    return [c.op for c in host_calls(lab_dir / "logs" / f"worker-cutover-{node}.log")]


def wait_end(lab, mid: str, bound_s: float) -> dict:
    deadline = time.monotonic() + bound_s
    while True:
        rec = lab.producer.get(mid)
        if rec["state"] in ("completed", "rolled_back", "failed"):
            return rec
        assert time.monotonic() < deadline, f"migration {mid} still {rec['state']} after {bound_s:.0f}s"
        time.sleep(0.5)


def test_a_node_cut_off_from_redis_mid_downtime_completes_no_destructive_step_after_its_claim_could_pass(own_lab):
    with own_lab("partition", hosts=2, node_count=2) as lab:
        net = orchestrator.read_lab(lab.dir)["net"]
        assert [n["netns"] for n in net["nodes"]] == [f"{net['tag']}n1", f"{net['tag']}n2"]
        assert {n["netns"] for n in net["nodes"]} <= set(nodes.namespaces())
        lab.add_vm("part-vm", "hv1", write_rate_kbps=128)
        # the import on the destination takes 8 s: the cut falls inside the downtime
        lab.emulator("hv2").inject_fault(op="import_vm", action="delay", seconds=IMPORT_DELAY_S, times=1)
        res = lab.cli("migrate", "part-vm", "--from", "hv1", "--to", "hv2")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        lab.wait_vm_state("hv1", "part-vm", "Saved")
        deadline = time.monotonic() + IMPORT_DELAY_S / 2
        while True:  # the node whose cutover worker saved it (its log line comes as Save-VM returns)
            holder = [n["name"] for n in net["nodes"] if "save_vm" in saved_by(lab.dir, n["name"])]
            if holder or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(holder) == 1, holder
        cut, other = holder[0], next(n["name"] for n in net["nodes"] if n["name"] != holder[0])
        orchestrator.partition(lab.dir, cut, say=lambda *_: None)
        cut_at = time.time()
        try:
            # the other node takes the migration over once the cut-off worker's claim lapses;
            # the heal comes after that, when whatever the cut-off worker sent is delivered
            rec = wait_end(lab, mid, 180)
        finally:
            orchestrator.partition(lab.dir, cut, heal=True, say=lambda *_: None)
            lab.emulator("hv2").clear_faults()
        healed_at = time.time()
        time.sleep(STEP_CLAIM_TTL_S)  # what the cut-off worker does once it reaches Redis again
        assert rec["state"] in ("completed", "rolled_back"), rec.get("error")
        taken_over = [c.started for c in node_calls(lab.dir, other) if c.started > cut_at]
        assert taken_over, f"node {other} never took the migration over"
        late = [(c.op, c.host, round(c.started - cut_at, 1)) for c in node_calls(lab.dir, cut)
                if c.op in DESTRUCTIVE_OPS and c.outcome == "ok"
                and (c.started > cut_at + STEP_CLAIM_TTL_S or c.started > min(taken_over))]
        assert late == [], f"node {cut} (cut at +0 s) completed destructive calls after its claim could pass: {late}"
        check = lab.verify("part-vm")
        assert len(check["running_on"]) == 1 and check["integrity"] == "ok", check
        assert not check.get("overlaps"), check
        assert healed_at > cut_at
    assert not [ns for ns in nodes.namespaces() if ns.startswith(net["tag"])]
    assert not [a for a, label in nodes.lo_addresses().items() if label == net["label"]]
