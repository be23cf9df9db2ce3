"""The Redis intake as another language's producer uses it: `redis-cli XADD` to
quickmig:requests, the outcome read from quickmig:request:<request_id>, with the lab's
`quickmig intake` process (claim_idle 5 s) consuming."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab import orchestrator, processes
from producer.intake import GROUP
from tests.unit.test_intake_examples import example
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


GO_LIBS = Path("/usr/share/gocode")  # Debian's Go libraries (golang-github-gomodule-redigo-dev), GOPATH mode


@pytest.fixture(scope="module")
def go_intake(tmp_path_factory) -> Path:
    """The docs' Go example (docs/operations.md, The Redis intake), compiled as a user would."""
    if shutil.which("go") is None or not (GO_LIBS / "src/github.com/gomodule/redigo/redis").is_dir():
        pytest.skip("no Go toolchain or redigo (dev.sh installs golang-go and golang-github-gomodule-redigo-dev)")
    d = tmp_path_factory.mktemp("go-intake")
    (d / "intake.go").write_text(example("go"))
    env = dict(os.environ, GOPATH=str(GO_LIBS), GO111MODULE="off", GOCACHE=str(d / "cache"), GOFLAGS="")
    res = subprocess.run(["go", "build", "-o", str(d / "intake"), str(d / "intake.go")], env=env, cwd=d,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return d / "intake"


def test_the_docs_go_example_requests_a_migration_that_completes_and_gets_a_refusal(lab, go_intake):
    lab.add_vm("intake-go", "hv2")
    time.sleep(1)  # its guest's heartbeat answers shortly after start
    env = dict(os.environ, REDIS_URL=lab.cfg.broker_url())

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(go_intake), *args], env=env, capture_output=True, text=True, timeout=360)

    refused = run("t-go-refused", "intake-go", "hv2", "hv9")
    assert refused.returncode == 2, refused.stderr
    cli = lab.cli("migrate", "intake-go", "--from", "hv2", "--to", "hv9")
    assert refused.stdout.strip() == "refused: " + cli.stderr.strip().removeprefix("quickmig: ")
    ok = run("t-go-ok", "intake-go", "hv2", "hv1", json.dumps({"max-rounds": 1}))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mid = ok.stdout.strip().removeprefix("migration ")
    assert outcome(lab, "t-go-ok") == {**outcome(lab, "t-go-ok"), "state": "accepted", "migration_id": mid}
    deadline = time.monotonic() + 240
    _, rec = lab.cli_json("status", mid, "--json")
    while rec["state"] not in ("completed", "failed", "rolled_back"):
        assert time.monotonic() < deadline, rec
        time.sleep(0.5)
        _, rec = lab.cli_json("status", mid, "--json")
    assert rec["state"] == "completed", rec["error"]
    assert rec["requested_by"] == "redis-intake" and rec["options"] == {"max_rounds": 1}
    assert lab.verify("intake-go")["running_on"] == ["hv1"]


def blocked_reader(r) -> dict | None:
    """The intake's connection while Redis holds it blocked in XREADGROUP, else None."""
    return next((c for c in r.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")), None)


def test_the_lab_intake_killed_holding_a_request_is_restarted_and_the_request_taken_over(lab):
    """The real consumer process, not a stand-in: stopped while Redis holds its XREADGROUP
    blocked, so the request added next is handed to it (pending under its name), then killed
    before it can decide it; the lab's supervisor starts another, which claims it."""
    r = lab.redis()
    entry = orchestrator.read_lab(lab.dir)["processes"]["intake"]
    pid = entry["pid"]
    deadline = time.monotonic() + 30
    while True:
        os.kill(pid, signal.SIGSTOP)
        if blocked_reader(r) is not None:
            break
        os.kill(pid, signal.SIGCONT)  # caught between two reads: let it block again
        assert time.monotonic() < deadline, "the intake never blocked in XREADGROUP"
        time.sleep(0.05)
    try:
        xadd(lab, "request_id", "t-killed", "vm", "intake-gone", "source", "hv1", "destination", "hv2")
        held = wait_until_pending(r)
        assert len(held) == 1 and held[0]["name"].endswith(f"-{pid}") and held[0]["pending"] == 1
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (now := orchestrator.read_lab(lab.dir)["processes"]["intake"])["pid"] == pid or not processes.alive(now):
        assert time.monotonic() < deadline, "the intake was not restarted"
        time.sleep(0.3)
    got = outcome(lab, "t-killed", timeout_s=60)
    assert got["state"] == "refused" and "intake-gone" in got["error"]
    settled(lab)


def wait_until_pending(r, timeout_s: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while not (held := r.xpending(keys.REQUESTS, GROUP)["consumers"]):
        assert time.monotonic() < deadline, "the request was not handed to the stopped consumer"
        time.sleep(0.05)
    return held
