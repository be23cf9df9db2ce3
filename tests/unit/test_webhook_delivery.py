"""One subscription's deliveries (producer.webhooks.Deliverer) against a real redis-server and
a real HTTP server on loopback that refuses what the test says."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from producer import webhooks
from workers.model import states
from workers.model.record import Store, new_record


@pytest.fixture
def receiver():
    """Answers 503 to an event whose (migration, seq) is in `refuse`, else 204; keeps each
    request's (migration, seq, status, signature ok) in arrival order."""
    seen: list[tuple[str, int, int, bool]] = []
    refuse: set[tuple[str, int]] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            t, v1 = (p.split("=", 1)[1] for p in self.headers["Quickmig-Signature"].split(","))
            ok = hmac.compare_digest(v1, hmac.new(b"s" * 16, f"{t}.".encode() + body, hashlib.sha256).hexdigest())
            e = json.loads(body)
            status = 503 if (e["id"], e["seq"]) in refuse else 204
            seen.append((e["id"], e["seq"], status, ok))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", seen, refuse
    server.shutdown()
    server.server_close()


def test_a_refused_event_is_retried_then_given_up_without_holding_back_others(r, receiver):
    url, seen, refuse = receiver
    sub = webhooks.Subscription("t", url, None, b"s" * 16)
    d = webhooks.Deliverer(r, sub, retry_for_s=0.6, max_backoff_s=0.1)
    d.take()  # a new subscription starts after the newest event
    store = Store(r)
    a = new_record(vm="vm-a", vm_id="id-a", source="hv1", destination="hv2", fence=1)
    b = new_record(vm="vm-b", vm_id="id-b", source="hv1", destination="hv2", fence=1)
    store.create(a)
    store.create(b)
    store.transition(a["id"], {states.QUEUED}, states.SNAPSHOTTING)
    refuse.add((a["id"], 1))
    deadline = time.monotonic() + 10
    while webhooks.status(r, sub)["pending"] or not seen:
        assert time.monotonic() < deadline, seen
        d.take()
        d.deliver_due()
        time.sleep(0.02)
    assert all(ok for *_, ok in seen)
    mine = [(seq, status) for mid, seq, status, _ in seen if mid == a["id"]]
    # retried while refused, given up after retry_for_s, then the next event in its order
    assert mine[-1] == (2, 204) and len(mine) >= 3 and all(x == (1, 503) for x in mine[:-1])
    # b was delivered while a was still being retried, not after
    last_refused = max(i for i, x in enumerate(seen) if x[0] == a["id"] and x[2] == 503)
    assert seen.index((b["id"], 1, 204, True)) < last_refused
    st = webhooks.status(r, sub)
    assert (st["delivered"], st["dropped"], st["pending"]) == (2, 1, 0)
    assert st["failed_attempts"] == len(mine) - 2
    assert st["log"][0]["result"] == "delivered" and any(e["result"] == "dropped" for e in st["log"])


def test_the_signature_is_the_hmac_of_the_timestamp_and_the_body():
    body = b'{"id": "x"}'
    want = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign(b"k" * 16, 1700000000, body) == f"t=1700000000,v1={want}"
    assert [webhooks.backoff_s(n, 600) for n in (1, 2, 3, 11, 40)] == [1, 2, 4, 600, 600]
