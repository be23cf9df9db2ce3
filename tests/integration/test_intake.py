"""The Redis intake as another language's producer uses it: `redis-cli XADD` to
quickmig:requests, the outcome read from quickmig:request:<request_id>, with the lab's
`quickmig intake` process (claim_idle 5 s) consuming."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from producer.intake import GROUP
from workers.model import keys

pytestmark = pytest.mark.integration


def xadd(lab, *fields: str) -> str:
    port = lab.cfg.redis_url.rsplit(":", 1)[1].split("/")[0]
    res = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", port, "XADD", keys.REQUESTS, "*", *fields],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "-" in res.stdout, res.stdout + res.stderr
    return res.stdout.strip()


def outcome(lab, rid: str, timeout_s: float = 60) -> dict:
    r = lab.redis()
    deadline = time.monotonic() + timeout_s
    while not (got := r.hgetall(keys.request(rid))):
        assert time.monotonic() < deadline, f"no outcome for {rid} after {timeout_s}s"
        time.sleep(0.2)
    return got


def settled(lab, timeout_s: float = 30) -> None:
    """Every entry decided: acknowledged and deleted."""
    r = lab.redis()
    deadline = time.monotonic() + timeout_s
    while r.xlen(keys.REQUESTS) or r.xpending(keys.REQUESTS, GROUP)["pending"]:
        assert time.monotonic() < deadline, r.xrange(keys.REQUESTS)
        time.sleep(0.2)


def state_but_intake(lab) -> dict:
    return {k: v for k, v in lab.redis_state().items() if not k.startswith(keys.request("")) and k != keys.REQUESTS}


def test_a_request_from_redis_cli_is_accepted_completes_and_a_duplicate_makes_no_second(lab):
    lab.add_vm("intake-ok", "hv1")
    time.sleep(1)  # its guest's heartbeat answers shortly after start
    fields = ["request_id", "t-intake-ok", "vm", "intake-ok", "source", "hv1", "destination", "hv3",
              "options", json.dumps({"max-rounds": 1, "keep_source_hours": None})]
    xadd(lab, *fields)
    got = outcome(lab, "t-intake-ok")
    assert got["state"] == "accepted", got
    mid = got["migration_id"]
    res, rec = lab.cli_json("status", mid, "--json")
    assert rec["vm"] == "intake-ok" and rec["requested_by"] == "redis-intake"
    assert rec["options"] == {"max_rounds": 1}
    xadd(lab, *fields)  # the same request again
    settled(lab)
    assert outcome(lab, "t-intake-ok") == got
    _, every = lab.cli_json("list", "--json", "--limit", "500")
    assert [r["id"] for r in every if r["vm"] == "intake-ok"] == [mid]
    deadline = time.monotonic() + 240
    while rec["state"] not in ("completed", "failed", "rolled_back"):
        assert time.monotonic() < deadline, rec
        time.sleep(0.5)
        _, rec = lab.cli_json("status", mid, "--json")
    assert rec["state"] == "completed", rec["error"]
    assert lab.verify("intake-ok")["running_on"] == ["hv3"]


def test_a_refused_request_gets_the_clis_reason_and_changes_nothing(lab):
    lab.add_vm("intake-no", "hv2")
    # besides the outcomes and the intake stream's own position (its entries are checked by
    # `settled`), nothing changes: no record, lease, event or idempotency key
    before = state_but_intake(lab)
    cases = [("t-no-host", ["vm", "intake-no", "source", "hv2", "destination", "hv9"],
              ["intake-no", "--from", "hv2", "--to", "hv9"]),
             ("t-no-vm", ["vm", "intake-nowhere", "source", "hv2", "destination", "hv1"],
              ["intake-nowhere", "--from", "hv2", "--to", "hv1"]),
             ("t-bad-opt", ["vm", "intake-no", "source", "hv2", "destination", "hv1",
                            "options", json.dumps({"max-downtime": "soon"})],
              ["intake-no", "--from", "hv2", "--to", "hv1", "--max-downtime", "soon"])]
    for rid, fields, cli in cases:
        xadd(lab, "request_id", rid, *fields)
        got = outcome(lab, rid)
        assert got["state"] == "refused" and "migration_id" not in got
        res = lab.cli("migrate", *cli)
        assert res.returncode == 2 and res.stderr.strip() == f"quickmig: {got['error']}"
    xadd(lab, "request_id", "t-unknown-opt", "vm", "intake-no", "source", "hv2", "destination", "hv1",
         "options", json.dumps({"turbo": True}))
    assert "unknown option 'turbo'" in outcome(lab, "t-unknown-opt")["error"]
    xadd(lab, "request_id", "t-no-dest", "vm", "intake-no", "source", "hv2")
    assert outcome(lab, "t-no-dest")["error"] == "the request has no destination"
    settled(lab)
    assert state_but_intake(lab) == before


def test_a_request_a_dead_consumer_took_is_taken_over(lab):
    r = lab.redis()
    # a consumer takes the entry and dies before deciding it: in one transaction, so the lab's
    # own consumer, blocked waiting for new entries, cannot get it first
    with r.pipeline() as p:
        p.xadd(keys.REQUESTS, {"request_id": "t-orphan", "vm": "intake-none", "source": "hv1", "destination": "hv2"})
        p.xreadgroup(GROUP, "dead-consumer", {keys.REQUESTS: ">"}, count=10)
        _, taken = p.execute()
    assert [f["request_id"] for _, f in taken[0][1]] == ["t-orphan"]
    assert r.xpending(keys.REQUESTS, GROUP)["consumers"] == [{"name": "dead-consumer", "pending": 1}]
    got = outcome(lab, "t-orphan", timeout_s=60)
    assert got["state"] == "refused" and "intake-none" in got["error"]
    settled(lab)
