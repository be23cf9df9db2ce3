"""Webhooks as a receiver sees them: the lab's `quickmig webhooks run` (started by `lab up`)
delivers to a real HTTP server on loopback that checks every signature. The subscriptions
are added to the lab's config and credentials file while it runs (the process reads them
again) and removed at the end."""
from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab import orchestrator, processes
from lab.ports import free_port
from tests import signatures

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP server that accepts a POST only with a valid Quickmig-Signature (per path's
    secret) and keeps what it accepted, in arrival order; started and stopped at will, on the
    same port."""

    def __init__(self, port: int, secrets_by_path: dict[str, bytes]):
        self.port, self.secrets = port, secrets_by_path
        self.got: list[tuple[str, dict]] = []  # (path, body) accepted
        self.refused: list[str] = []
        self.server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                secret = outer.secrets.get(self.path, b"")
                if not signatures.valid(secret, self.headers.get("Quickmig-Signature", ""), body):
                    with outer.lock:
                        outer.refused.append(self.path)
                    self.send_response(401)
                    self.end_headers()
                    return
                event = json.loads(body)
                assert self.headers["Quickmig-Event-Id"] == event["event_id"]
                with outer.lock:
                    outer.got.append((self.path, event))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self, path: str) -> list[dict]:
        with self.lock:
            return [e for p, e in self.got if p == path]


def wait_until(what, timeout_s: float, why: str):
    deadline = time.monotonic() + timeout_s
    while not (got := what()):
        assert time.monotonic() < deadline, why
        time.sleep(0.3)
    return got


def test_webhooks_arrive_signed_in_order_after_the_receiver_returns(lab):
    port = free_port()
    every, done = secrets.token_bytes(24).hex(), secrets.token_bytes(24).hex()
    receiver = Receiver(port, {"/every": every.encode(), "/done": done.encode()})
    config, creds = lab.config_path.read_text(), lab.cfg.credentials_file.read_text()
    try:
        lab.config_path.write_text(config + f'\n[webhooks.t-every]\nurl = "http://127.0.0.1:{port}/every"\n\n'
                                   f'[webhooks.t-done]\nurl = "http://127.0.0.1:{port}/done"\n'
                                   'events = ["completed", "failed", "rolled_back"]\n')
        lab.cfg.credentials_file.write_text(creds + f'\n[webhooks.t-every]\nsecret = "{every}"\n\n'
                                            f'[webhooks.t-done]\nsecret = "{done}"\n')

        def status() -> dict:
            _, out = lab.cli_json("webhooks", "status", "--json")
            return {s["name"]: s for s in out}
        wait_until(lambda: all(s["delivering"] and s["cursor"] for s in status().values()) and len(status()) == 2,
                   30, "the lab's webhooks process did not take up the new subscriptions")
        # the receiver is down while two migrations run to their end
        mids = []
        for name in ("wh-1", "wh-2"):
            lab.add_vm(name, "hv3", write_rate_kbps=32)
            res = lab.cli("migrate", name, "--from", "hv3", "--to", "hv1", "--max-rounds", "1")
            assert res.returncode == 0, res.stderr
            mids.append(res.stdout.strip())
        recs = [wait_until(lambda m=m: (r := lab.cli_json("status", m, "--json")[1])["state"]
                           in ("completed", "failed", "rolled_back") and r, 240, f"{m} did not end") for m in mids]
        assert [r["state"] for r in recs] == ["completed", "completed"], [r.get("error") for r in recs]
        down = wait_until(lambda: (s := status())["t-every"]["failed_attempts"] >= 2 and s, 30,
                          "no failed attempt logged while the receiver was down")
        assert down["t-every"]["delivered"] == 0 and down["t-every"]["pending"] >= 2 * 5
        assert any(e["result"] == "failed" and "not delivered" in e["outcome"] for e in down["t-every"]["log"])
        # the delivering process is killed meanwhile; the lab's supervisor starts it again
        before = orchestrator.read_lab(lab.dir)["processes"]["webhooks"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_until(lambda: (now := orchestrator.read_lab(lab.dir)["processes"]["webhooks"])["pid"] != before["pid"]
                   and processes.alive(now), 60, "the webhooks process was not restarted")
        # the receiver comes back: every state change of both arrives, signed, in order per migration
        receiver.start()
        total = sum(len(r["history"]) for r in recs)
        wait_until(lambda: len({e["event_id"] for e in receiver.events("/every")}) >= total
                   and len(receiver.events("/done")) >= 2, 60,
                   f"not every event arrived: {len(receiver.events('/every'))} of {total}")
        assert receiver.refused == []
        for rec in recs:
            got = [e for e in receiver.events("/every") if e["id"] == rec["id"]]
            first_seen = list(dict.fromkeys(e["event_id"] for e in got))  # at least once: a repeat is allowed
            seqs = [next(e["seq"] for e in got if e["event_id"] == i) for i in first_seen]
            assert seqs == list(range(1, len(rec["history"]) + 1)), "lost or out of order"
            assert [next(e["new"] for e in got if e["event_id"] == i) for i in first_seen] == \
                [h["state"] for h in rec["history"]]
            assert all(e["vm"] == rec["vm"] and e["source"] == "hv3" and e["destination"] == "hv1" for e in got)
        # the filtered subscription got only the ends
        assert sorted((e["id"], e["new"]) for e in receiver.events("/done")) == sorted((m, "completed") for m in mids)
        after = wait_until(lambda: (s := status())["t-every"]["pending"] == 0 and s, 30, "still pending")
        assert after["t-every"]["delivered"] >= total and after["t-every"]["dropped"] == 0
        text = lab.cli("webhooks", "status", "t-every")
        assert text.returncode == 0 and f"{after['t-every']['delivered']} delivered, 0 pending" in text.stdout
        assert "delivered" in text.stdout.splitlines()[-1]
        assert every not in text.stdout and every not in (lab.dir / "logs" / "webhooks.log").read_text()
    finally:
        receiver.stop()
        lab.config_path.write_text(config)
        lab.cfg.credentials_file.write_text(creds)


def test_a_webhook_without_a_secret_is_one_line_and_exit_2(lab, tmp_path):
    cfg = tmp_path / "quickmig.toml"
    cfg.write_text(lab.config_path.read_text().replace('credentials_file = "',
                                                       f'credentials_file = "{lab.dir}/', 1)
                   + '\n[webhooks.nosecret]\nurl = "http://127.0.0.1:9/x"\n')
    res = lab.cli("webhooks", "status", "--config", str(cfg))
    assert res.returncode == 2
    assert res.stderr.startswith("quickmig: webhook 'nosecret' has no secret") and res.stderr.count("\n") == 1
    cfg.write_text(lab.config_path.read_text() + '\n[webhooks.bad]\nurl = "ftp://x"\n')
    res = lab.cli("webhooks", "status", "--config", str(cfg))
    assert res.returncode == 2 and "url must be an http:// or https:// URL" in res.stderr
