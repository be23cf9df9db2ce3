"""workers.steps.hooks' POST: signed as webhooks are, and bounded by the hook's timeout_s in all."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.model import signed_post
from workers.steps import hooks


@pytest.fixture
def server():
    got: list[tuple[dict, bytes]] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            if self.path == "/slow":
                release.wait(10)
            self.send_response(204 if self.path != "/no" else 403)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", got
    release.set()
    srv.shutdown()
    srv.server_close()


def test_a_hook_call_is_signed_over_the_timestamp_and_the_body(server):
    url, got = server
    ok, status, outcome = hooks._post(url + "/ok", b'{"hook": "pre_cutover"}', b"s" * 16,
                                      {"Quickmig-Hook": "pre_cutover"}, 5)
    assert (ok, status, outcome) == (True, 204, "HTTP 204")
    headers, body = got[0]
    t, v1 = (part.split("=", 1)[1] for part in headers["Quickmig-Signature"].split(","))
    assert v1 == hmac.new(b"s" * 16, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["Quickmig-Hook"] == "pre_cutover" and headers["Content-Type"] == "application/json"
    assert hooks._post(url + "/no", b"{}", b"s" * 16, {}, 5) == (False, 403, "HTTP 403")


def test_a_receiver_that_does_not_answer_within_timeout_s_is_a_failure(server):
    url, got = server
    t0 = time.monotonic()
    assert hooks._post(url + "/slow", b"{}", b"s" * 16, {}, 0.5) == (False, None, "no answer within 0.5 s")
    assert time.monotonic() - t0 < 5  # not the receiver's 10 s
    # the receiver got it: its handler notes the request in its own thread, which on a busy
    # machine may run after the caller has given up on the answer
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(got) == 1


def test_nothing_listening_is_a_failure_in_words():
    ok, status, outcome = signed_post.post("http://127.0.0.1:9/x", b"{}", b"s" * 16, {}, 2)
    assert (ok, status) == (False, None) and outcome.startswith("not delivered:")
