"""The CLI as a client of the lab's HTTP API: a config with only `[api] url`, a token in the
environment, no Redis URL, no hosts, no credentials file. Everything it does goes through
the API; what it prints is what the CLI on a fleet node prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from producer.api import auth

pytestmark = pytest.mark.integration


class Client:
    def __init__(self, lab, tmp_path):
        self.lab = lab
        url = json.loads((lab.dir / "endpoints.json").read_text())["api"]
        self.config = tmp_path / "client.toml"
        self.config.write_text(f'[api]\nurl = "{url}"\n')
        self.migrate_token = auth.new_token()
        self.name = f"remote-cli-{tmp_path.name[-12:].replace('_', '-')}"
        with open(lab.cfg.credentials_file, "a") as f:
            f.write("\n" + auth.token_entry(self.name, self.migrate_token, ["migrate"]))
        self.admin_token = (lab.dir / "api-token").read_text().strip()
        self.cwd = tmp_path

    def run(self, *args, token: str | None = "migrate") -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMIG_")}
        env["QUICKMIG_CONFIG"] = str(self.config)
        if token is not None:
            env["QUICKMIG_API_TOKEN"] = self.migrate_token if token == "migrate" else self.admin_token
        return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=300)

    def json(self, *args, **kw):
        res = self.run(*args, **kw)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


def test_the_cli_migrates_lists_cancels_and_throttles_through_the_api_alone(lab, tmp_path):
    c = Client(lab, tmp_path)
    lab.add_vm("remote-1", "hv2", write_rate_kbps=32)
    # a dry run: the plan, the pre-flight and the predictions, nothing queued
    dry = c.json("migrate", "remote-1", "--from", "hv2", "--to", "hv3", "--dry-run", "--json")
    assert dry["preflight"]["ok"] and dry["predicted_downtime_seconds"] > 0 and dry["files"]
    text = c.run("migrate", "remote-1", "--from", "hv2", "--to", "hv3", "--dry-run")
    assert "nothing copied (--dry-run)" in text.stdout and "predicted: copy" in text.stdout
    # to the end, followed over the API
    rec = c.json("migrate", "remote-1", "--from", "hv2", "--to", "hv3", "--max-rounds", "1", "--wait", "--json")
    assert rec["state"] == "completed", rec.get("error")
    assert rec["requested_by"] == c.name
    assert c.json("status", rec["id"], "--json")["history"] == rec["history"]
    assert rec["id"] in [r["id"] for r in c.json("list", "--limit", "500", "--json")]
    assert lab.verify("remote-1")["running_on"] == ["hv3"]
    # refusals: the one line the CLI on a fleet node prints, exit 2
    for args in (["remote-1", "--from", "hv2", "--to", "hv1"], ["remote-1", "--from", "hv3", "--to", "hv9"]):
        here, there = c.run("migrate", *args), lab.cli("migrate", *args)
        assert (here.returncode, here.stderr) == (2, there.stderr) and there.stderr.count("\n") == 1
    late = c.run("cancel", rec["id"])
    assert late.returncode == 2 and "already completed" in late.stderr and late.stderr.count("\n") == 1
    # throttle: the migrate token may read, only the admin's may set
    assert c.json("throttle", "--json") == {"global": None, "pairs": {}}
    denied = c.run("throttle", "--global", "5M")
    assert denied.returncode == 2 and "'admin'" in denied.stderr
    try:
        assert c.json("throttle", "--pair", "hv2", "hv3", "700M", "--json", token="admin")["pairs"] == \
            {"hv2->hv3": 700_000_000}
        _, shown = lab.cli_json("throttle", "--json")
        assert shown["pairs"] == {"hv2->hv3": 700_000_000}
    finally:
        c.run("throttle", "--pair", "hv2", "hv3", "0", token="admin")
    assert lab.cli_json("throttle", "--json")[1]["pairs"] == {}
    # no token: one line saying where to put it
    none = c.run("status", rec["id"], token=None)
    assert none.returncode == 2 and "QUICKMIG_API_TOKEN" in none.stderr and none.stderr.count("\n") == 1


def test_a_cancel_over_the_api_client_rolls_back(lab, tmp_path):
    c = Client(lab, tmp_path)
    lab.add_vm("remote-2", "hv3")
    lab.emulator("hv3").inject_fault(op="checkpoint_vm", action="delay", seconds=4, times=1)
    try:
        mid = c.run("migrate", "remote-2", "--from", "hv3", "--to", "hv2").stdout.strip()
        assert mid, "no migration id"
        time.sleep(0.5)
        out = c.json("cancel", mid, "--wait", "--json")
        assert out["state"] == "rolled_back"
        assert lab.verify("remote-2")["running_on"] == ["hv3"]
    finally:
        lab.emulator("hv3").clear_faults()
