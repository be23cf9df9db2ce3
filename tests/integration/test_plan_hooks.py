"""A plan's hooks as a receiver sees them: a real HTTP server on loopback that checks every
call's signature with the secret the lab's credentials file holds under [hooks.NAME], and
answers 2xx or 500 by path. The emulated hosts' event record says whether a source VM was
ever saved (the downtime's start)."""
from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab.history import load_events
from lab.ports import free_port
from tests import signatures

pytestmark = pytest.mark.integration


class HookReceiver:
    """Accepts a POST only with a valid, fresh Quickmig-Signature (401 otherwise); then answers
    500 on a path ending in -fail or in /fail-for/VM for that VM's migration, and 204 elsewhere.
    Keeps every signed call in arrival order."""

    def __init__(self, secret: bytes):
        self.secret, self.port = secret, free_port()
        self.calls: list[tuple[str, float, dict]] = []  # (path, when, body) of each signed call
        self.refused: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not signatures.valid(outer.secret, self.headers.get("Quickmig-Signature", ""), body):
                    with outer.lock:
                        outer.refused.append(self.path)
                    self.send_response(401)
                    self.end_headers()
                    return
                with outer.lock:
                    outer.calls.append((self.path, time.time(), json.loads(body)))
                vm = json.loads(body)["migration"]["vm"]
                self.send_response(500 if self.path.endswith(("-fail", f"/fail-for/{vm}")) else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def redis_text(lab) -> str:
    """Every quickmig value in Redis as text: where a secret must never be."""
    r, out = lab.redis(), []
    for k in r.scan_iter("quickmig:*"):
        t = r.type(k)
        if t == "string":
            out.append(r.get(k) or "")
        elif t == "hash":
            out.append(json.dumps(r.hgetall(k)))
        elif t == "list":
            out.append(json.dumps(r.lrange(k, 0, -1)))
        elif t == "set":
            out.append(json.dumps(sorted(r.smembers(k))))
        elif t == "zset":
            out.append(json.dumps(r.zrange(k, 0, -1)))
        elif t == "stream":
            out.append(json.dumps(r.xrange(k)))
    return "\n".join(out)


def test_pre_cutover_hook_refusal_rolls_back_before_downtime_and_post_cutover_failure_continues(lab, tmp_path):
    secret = secrets.token_hex(24)
    receiver = HookReceiver(secret.encode())
    creds = lab.cfg.credentials_file.read_text()
    ids = {name: lab.add_vm(name, "hv1", write_rate_kbps=32)["id"] for name in ("hk-refused", "hk-agreed")}
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""\
name: hooks
concurrency: 2
on_failure: continue
on_hook_failure: continue
defaults: {{max_rounds: 1}}
hooks:
  pre_cutover: {{url: "{receiver.url('/pre')}", secret: t-hooks, timeout_s: 5}}
  post_cutover: {{url: "{receiver.url('/post-fail')}", secret: t-hooks}}
groups:
  - name: refused
    hooks:
      pre_cutover: {{url: "{receiver.url('/pre-fail')}", secret: t-hooks}}
    vms: [{{vm: hk-refused, from: hv1, to: hv2}}]
  - name: agreed
    vms: [{{vm: hk-agreed, from: hv1, to: hv3}}]
""")
    try:
        # without the secret in the credentials file the plan is refused, and nothing changes
        before = lab.redis_state()
        res = lab.cli("plan", "apply", str(plan))
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "no secret 't-hooks': add [hooks.t-hooks] secret" in res.stderr
        assert lab.redis_state() == before
        lab.cfg.credentials_file.write_text(creds + f'\n[hooks.t-hooks]\nsecret = "{secret}"\n')

        dry = lab.cli("plan", "dry-run", str(plan))
        assert dry.returncode == 0, dry.stderr
        assert (f"  hooks: pre_cutover POST {receiver.url('/pre-fail')} (timeout 10 s, secret t-hooks, on failure: "
                f"rollback before any downtime); post_cutover POST {receiver.url('/post-fail')} (timeout 10 s, "
                "secret t-hooks, on failure: continue)") in dry.stdout.splitlines()
        res, st = lab.cli_json("plan", "apply", str(plan), "--wait", "--json", timeout=300)
        assert res.returncode in (0, 1), res.stderr
        m = {x["vm"]: x for g in st["groups"] for x in g["members"]}
        assert st["state"] == "failed"  # one member rolled back, on_failure continue
        assert m["hk-agreed"]["state"] == "completed", m["hk-agreed"]
        assert m["hk-refused"]["state"] == "rolled_back", m["hk-refused"]

        # the refused one: its hook said 500, it rolled back, and its source VM was never saved
        assert f"the pre_cutover hook {receiver.url('/pre-fail')} did not agree (HTTP 500)" in m["hk-refused"]["error"]
        assert [(c["hook"], c["ok"], c["status"]) for c in m["hk-refused"]["hook_calls"]] == \
            [("pre_cutover", False, 500)]
        events = load_events(lab.dir)
        refused = [e for e in events if e.get("vm_id") == ids["hk-refused"]]
        assert any(e["event"] == "checkpoint" for e in refused)  # it did start: the hook came after the copy
        assert not any(e["event"] == "save" for e in refused), "the source VM was saved: downtime began"
        assert {v["name"]: v["state"] for v in lab.emulator("hv1").state()["vms"]}["hk-refused"] == "Running"
        assert "hk-refused" not in {v["name"] for v in lab.emulator("hv2").state()["vms"]}

        # the agreed one: pre_cutover 204 before its Save-VM, post_cutover 500 after its start, completed
        calls = m["hk-agreed"]["hook_calls"]
        assert [(c["hook"], c["ok"], c["status"]) for c in calls] == \
            [("pre_cutover", True, 204), ("post_cutover", False, 500)]
        agreed = [e for e in events if e.get("vm_id") == ids["hk-agreed"]]
        saved = next(e["t"] for e in agreed if e["event"] == "save" and e["host"] == "hv1")
        started = next(e["t"] for e in agreed if e["event"] == "start" and e["host"] == "hv3")
        got = {(path, body["migration"]["vm"]): (t, body) for path, t, body in receiver.calls}
        pre_t, pre = got[("/pre", "hk-agreed")]
        post_t, post = got[("/post-fail", "hk-agreed")]
        assert pre_t < saved and post_t > started
        assert pre["hook"] == "pre_cutover" and pre["migration"]["id"] == m["hk-agreed"]["migration"]
        assert pre["migration"]["state"] == "copying" and post["migration"]["state"] == "finishing"
        assert ("/pre-fail", "hk-refused") in got and receiver.refused == []
        assert sorted(got) == sorted({("/pre", "hk-agreed"), ("/post-fail", "hk-agreed"), ("/pre-fail", "hk-refused")})

        text = lab.cli("plan", "status", st["id"])
        assert text.returncode == 0, text.stderr
        assert "    pre_cutover hook: failed (HTTP 500, " in text.stdout
        assert "    post_cutover hook: failed (HTTP 500, " in text.stdout
        assert "    pre_cutover hook: ok (HTTP 204, " in text.stdout
        # the secret is in no call's body, no Redis value, no log line
        assert all(secret not in json.dumps(body) for _, _, body in receiver.calls)
        assert secret not in redis_text(lab)
        assert not [p.name for p in (lab.dir / "logs").glob("*.log") if secret in p.read_text(errors="replace")]
    finally:
        receiver.stop()
        lab.cfg.credentials_file.write_text(creds)


def test_a_together_groups_member_whose_pre_cutover_hook_fails_rolls_the_group_back_before_any_downtime(
        lab, tmp_path):
    secret = secrets.token_hex(24)
    receiver = HookReceiver(secret.encode())
    creds = lab.cfg.credentials_file.read_text()
    lab.cfg.credentials_file.write_text(creds + f'\n[hooks.t-together]\nsecret = "{secret}"\n')
    ids = {name: lab.add_vm(name, host, write_rate_kbps=32)["id"]
           for name, host in (("hkt-1", "hv2"), ("hkt-2", "hv3"))}
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""\
name: hooks-together
concurrency: 2
on_failure: continue
defaults: {{max_rounds: 1}}
groups:
  - name: app
    switchover: together
    hooks:
      pre_cutover: {{url: "{receiver.url('/fail-for/hkt-2')}", secret: t-together}}
    vms:
      - {{vm: hkt-1, from: hv2, to: hv3}}
      - {{vm: hkt-2, from: hv3, to: hv2}}
""")
    try:
        res, st = lab.cli_json("plan", "apply", str(plan), "--wait", "--json", timeout=300)
    finally:
        receiver.stop()
        lab.cfg.credentials_file.write_text(creds)
    assert res.returncode == 1, res.stderr
    m = {x["vm"]: x for x in st["groups"][0]["members"]}
    assert {v: x["state"] for v, x in m.items()} == {"hkt-1": "rolled_back", "hkt-2": "rolled_back"}, m
    assert "did not agree (HTTP 500)" in m["hkt-2"]["error"]
    assert "group app rolled back: app/hkt-2" in m["hkt-1"]["error"], m["hkt-1"]
    # the hook agreed for hkt-1, yet neither source VM was ever saved: no downtime began
    assert [(c["hook"], c["ok"]) for c in m["hkt-1"]["hook_calls"]] in ([("pre_cutover", True)], [])
    events = load_events(lab.dir)
    for name, src in (("hkt-1", "hv2"), ("hkt-2", "hv3")):
        mine = [e for e in events if e.get("vm_id") == ids[name]]
        assert not any(e["event"] == "save" for e in mine), (name, "the source VM was saved: downtime began")
        check = lab.verify(name)
        assert check["running_on"] == [src] and check["integrity"] == "ok", (name, check)
