"""The orphan sweep (issue 16 item 3), in a lab of its own that sweeps every 3 s: Redis loses
every key (FLUSHALL) in the middle of a copy and in the middle of a downtime. Within a few
minutes nothing of the migration is left on either host (no quickmig checkpoint, no marker,
no copied file, no imported VM), the VM runs on exactly one host with every guest write,
and `quickmig orphans` says what was found and done."""
import json
import time
from pathlib import Path

import pytest

from lab.emulator.hostpaths import storage_dir
from workers.model import states

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orphan_lab(own_lab):
    with own_lab("orphanlab", hosts=2, orphan_sweep_s=3) as lab:
        yield lab


def start(lab, vm: str) -> str:
    from producer.migrations import MigrationRequest
    return lab.producer.enqueue(MigrationRequest(vm, "hv1", "hv2"))["id"]


def wait_state(lab, mid: str, ok, bound_s: float, what: str) -> dict:
    deadline = time.monotonic() + bound_s
    while True:
        rec = lab.producer.get(mid)
        if ok(rec):
            return rec
        assert time.monotonic() < deadline, f"{what} not within {bound_s}s ({rec['state']})"
        time.sleep(0.05)


def left_on(lab, host: str, vm_id: str) -> list[str]:
    """Files on a lab host's storage that are this VM's or a marker."""
    out = []
    for i, s in enumerate(lab.cfg.host(host).storage):
        top = Path(storage_dir(lab.dir, host, i, s.share))
        for _ in range(20):  # the sweep may be deleting a folder while we walk it
            try:
                out += [str(p.relative_to(top)) for p in top.rglob("*")
                        if p.is_file() and (vm_id.lower() in str(p).lower() or "quickmig-markers" in str(p))]
                break
            except FileNotFoundError:
                time.sleep(0.1)
    return out


def wait_clean(lab, vm: str, vm_id: str, bound_s: float = 120) -> dict:
    """Until the VM runs on one host with no quickmig checkpoint and hv2 has nothing of it."""
    deadline = time.monotonic() + bound_s
    while True:
        vms = {h: {v["id"]: v for v in lab.emulator(h).state()["vms"]} for h in ("hv1", "hv2")}
        ours = [s["name"] for h in vms for v in vms[h].values() if v["id"] == vm_id
                for s in v.get("snapshots", []) if s["name"].startswith("quickmig-")]
        if not ours and vm_id not in vms["hv2"] and not left_on(lab, "hv2", vm_id):
            break
        assert time.monotonic() < deadline, (f"not swept within {bound_s}s: checkpoints {ours}, on hv2: "
                                             f"{vm_id in vms['hv2']}, files {left_on(lab, 'hv2', vm_id)}")
        time.sleep(0.5)
    check = lab.verify(vm)
    assert check["integrity"] == "ok", check
    assert check["running_on"] == ["hv1"], check
    return check


def findings(lab, vm: str) -> list[dict]:
    res = lab.cli("orphans", "--json")
    assert res.returncode == 0, res.stderr
    return [f for f in json.loads(res.stdout) if f["vm"] == vm]


def test_redis_loses_every_key_in_the_middle_of_a_copy(orphan_lab):
    lab = orphan_lab
    lab.add_vm("oc1", "hv1", disk_mb=96, memory_mb=16)
    assert lab.cli("throttle", "--global", "8M").returncode == 0
    mid = start(lab, "oc1")
    rec = wait_state(lab, mid, lambda r: r["state"] == states.COPYING and r["bytes_copied"] > 0, 90, "a copy")
    lab.redis().flushall()
    wait_clean(lab, "oc1", rec["vm_id"])
    done = {(f["kind"], f["action"]) for f in findings(lab, "oc1")}
    assert ("checkpoint", "merged") in done and ("copied files", "deleted") in done, done


def test_redis_loses_every_key_in_the_middle_of_a_downtime(orphan_lab):
    lab = orphan_lab
    lab.add_vm("od1", "hv1")
    # the import waits 3 s: the source VM is saved meanwhile, and Redis goes then
    lab.emulator("hv2").inject_fault(op="import_vm", action="delay", seconds=3, times=1)
    try:
        mid = start(lab, "od1")
        rec = wait_state(lab, mid, lambda r: r["state"] == states.CUTTING_OVER and r.get("save_started_at"), 90,
                         "the downtime")
        lab.wait_vm_state("hv1", "od1", "Saved", 10)
        lab.redis().flushall()
        wait_clean(lab, "od1", rec["vm_id"])
    finally:
        lab.emulator("hv2").clear_faults()
    done = {(f["kind"], f["action"]) for f in findings(lab, "od1")}
    assert ("source VM", "resumed") in done, done


def test_a_record_handed_back_without_its_last_noted_files_still_rolls_them_back(orphan_lab):
    """A Redis failover keeps only what reached the replica: a copy can carry on with a record
    that lost the files it noted last. The destination's marker still lists them (it only
    grows), and the rollback reads it: before, it removed what `created_files` said and left
    the copy's file on the destination, with a record and so nothing for the orphan sweep."""
    from workers.model.record import Store
    lab = orphan_lab
    lab.add_vm("ol1", "hv1", disk_mb=96, memory_mb=16)
    assert lab.cli("throttle", "--global", "8M").returncode == 0
    mid = start(lab, "ol1")
    rec = wait_state(lab, mid, lambda r: r["state"] == states.COPYING and r["bytes_copied"] > 0, 90, "a copy")
    assert any("quickmig-markers" not in f for f in left_on(lab, "hv2", rec["vm_id"]))
    Store(lab.redis()).update(mid, lambda r: r.update(created_files=[]))
    lab.producer.cancel(mid)
    rec = wait_state(lab, mid, lambda r: r["state"] in states.ENDS, 120, "the rollback")
    assert rec["state"] == states.ROLLED_BACK, rec.get("error")
    assert left_on(lab, "hv2", rec["vm_id"]) == []
    check = lab.verify("ol1")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
