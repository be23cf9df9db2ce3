"""Admission in the lab (real Redis, Celery pools, beat and the reconciler; Hyper-V
emulated): a migration waits for a place on its hosts, says why, is not mistaken for a
stuck one, can be cancelled while it waits; the reconciler repairs what a crash left."""
import time

import pytest

from workers.model import keys

pytestmark = pytest.mark.integration


def producer(lab):
    from producer.migrations import Producer
    return Producer(lab.cfg)


def ended(p, mid, timeout_s=180):
    return p.wait(mid, timeout_s=timeout_s, poll_s=0.2)


def test_a_migration_waits_for_a_place_says_why_is_not_stuck_and_cancels_cleanly(lab, monkeypatch):
    from producer.migrations import MigrationRequest
    for name in ("adm-a", "adm-b", "adm-c"):
        # no ISO: two migrations copying the same new ISO to one host at once collide on its
        # .partial file (a copy-engine race this test is not about)
        lab.add_vm(name, "hv1", iso=False)
    p = producer(lab)
    # two migrations from hv1 held in their prepare step keep hv1's two places taken
    lab.emulator("hv2").inject_fault(op="compare_vm", action="delay", seconds=15, times=2)
    try:
        a = p.enqueue(MigrationRequest("adm-a", "hv1", "hv2"))["id"]
        b = p.enqueue(MigrationRequest("adm-b", "hv1", "hv2"))["id"]
        c = p.enqueue(MigrationRequest("adm-c", "hv1", "hv3"))["id"]
        assert p.admission.holders("hv1") >= {a, b} and p.admission.waiting_ids() == [c]
        assert p.admission.holders("hv3") == set()  # c took no place on its free host
        res = lab.cli("status", c)
        assert res.returncode == 0 and "waiting: hv1 has 2 migrations (limit 2)" in res.stdout, res.stdout
        res, rec = lab.cli_json("status", c, "--json")
        assert rec["state"] == "queued" and rec["waiting"] == "waiting: hv1 has 2 migrations (limit 2)"

        # long past its queued deadline, the reconciler still leaves it alone: it is in line
        from workers.engine import context, reconciler
        monkeypatch.setenv("QUICKMIG_CONFIG", str(lab.config_path))
        context.reset()
        before = p.get(c)
        deadlines, nudges = lab.cfg.reconciler.deadlines_s, lab.cfg.reconciler.max_nudges
        assert reconciler.reconcile_one(c, deadlines, nudges, now=time.time() + 3600) is None
        assert p.get(c) == before

        p.cancel(c)
        rec = ended(p, c)
    finally:
        lab.emulator("hv2").clear_faults()
        context.reset()
    assert rec["state"] == "rolled_back" and rec["error"] == "cancelled by request"
    assert [h["state"] for h in rec["history"]] == ["queued", "rolling_back", "rolled_back"]
    assert c not in p.admission.waiting_ids() and all(c not in p.admission.holders(h) for h in lab.cfg.hosts)
    check = lab.verify("adm-c")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in lab.emulator("hv1").state()["vms"] if v["name"] == "adm-c")
    assert vm["snapshots"] == []
    for mid in (a, b):
        assert ended(p, mid)["state"] == "completed"
    # an end is stamped on the record before its places are given back (a crash between
    # the two is the reconciler's to repair), so the release may follow "completed"
    deadline = time.monotonic() + 10
    while True:
        log = [e for e in p.admission.log() if e["migration"] in (a, b, c)]
        if sum(e["event"] == "release" for e in log) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {(e["event"], e["migration"]) for e in log} == {("admit", a), ("admit", b), ("release", a),
                                                          ("release", b)}


def test_the_reconciler_gives_back_places_of_vanished_migrations_and_lines_up_lost_ones(lab):
    """A place held by a migration whose record is gone (a crash between its end and the
    release) is given back; a queued migration that never reached the line (the producer
    died after creating it) is put in line and completes."""
    from workers.model.record import new_record
    p = producer(lab)
    r = lab.redis()
    r.sadd(keys.admitted("hv3"), "ghost-migration0")
    lab.add_vm("adm-lost", "hv2")
    vm = next(v for v in lab.emulator("hv2").state()["vms"] if v["name"] == "adm-lost")
    rec = new_record(vm="adm-lost", vm_id=vm["id"], source="hv2", destination="hv3", fence=0)
    rec["fence"] = p.locks.acquire(vm["id"], rec["id"])
    p.store.create(rec)  # and nothing else: no place in line, no message
    deadline = time.monotonic() + 60  # the reconciler passes every 10 s
    while r.sismember(keys.admitted("hv3"), "ghost-migration0"):
        assert time.monotonic() < deadline, "the place of a vanished migration was not given back"
        time.sleep(0.5)
    assert any(e["event"] == "release" and e["migration"] == "ghost-migration0" and e["hosts"] == ["hv3"]
               for e in p.admission.log())
    done = ended(p, rec["id"])
    assert done["state"] == "completed", done["error"]
    assert done.get("admitted_at") and lab.verify("adm-lost")["running_on"] == ["hv3"]
