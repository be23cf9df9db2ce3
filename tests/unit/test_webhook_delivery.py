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

from producer import cli, webhooks
from workers.model import keys, signed_post, states
from workers.model.record import Store, new_record
from workers.obs.fleet_metrics import webhook_gaps


@pytest.fixture
def receiver():
    """Answers 503 to an event whose (migration, seq) is in `refuse`, else 204; keeps each
    request's (migration, seq, status, signature ok) in arrival order ((type, body, 204, ok)
    for a notice that is not a state change)."""
    seen: list[tuple[str, int, int, bool]] = []
    refuse: set[tuple[str, int]] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            t, v1 = (p.split("=", 1)[1] for p in self.headers["Quickmig-Signature"].split(","))
            ok = hmac.compare_digest(v1, hmac.new(b"s" * 16, f"{t}.".encode() + body, hashlib.sha256).hexdigest())
            e = json.loads(body)
            if self.headers["Quickmig-Event-Type"] != "state":  # a notice: kept whole, with its type
                seen.append((self.headers["Quickmig-Event-Type"], e, 204, ok))
                self.send_response(204)
                self.end_headers()
                return
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
    assert signed_post.sign(b"k" * 16, 1700000000, body) == f"t=1700000000,v1={want}"
    assert [webhooks.backoff_s(n, 600) for n in (1, 2, 3, 11, 40)] == [1, 2, 4, 600, 600]


def drain(r, d, sub, seen, want: int) -> None:
    deadline = time.monotonic() + 10
    while len(seen) < want or webhooks.status(r, sub)["pending"]:
        assert time.monotonic() < deadline, seen
        d.take()
        d.deliver_due()
        time.sleep(0.02)


def test_events_trimmed_past_the_cursor_are_a_recorded_gap_and_a_signed_notice_not_a_silent_skip(r, receiver):
    gap_scenario(r, receiver)


def gap_scenario(r, receiver) -> tuple[str, str]:
    """Events read, then some written and trimmed while the deliverer is away: the gap is
    recorded once and a signed notice delivered; returns the gap's (after, before)."""
    url, seen, _ = receiver
    sub = webhooks.Subscription("t", url, None, b"s" * 16)
    d = webhooks.Deliverer(r, sub, max_backoff_s=0.1)
    store = Store(r)

    def migration(vm: str, *moves: str) -> str:
        rec = new_record(vm=vm, vm_id=f"id-{vm}", source="hv1", destination="hv2", fence=1)
        store.create(rec)
        at = states.QUEUED
        for new in moves:
            store.transition(rec["id"], {at}, new)
            at = new
        return rec["id"]

    migration("before")
    d.take()  # starts after the newest event
    a = migration("a", states.SNAPSHOTTING)
    drain(r, d, sub, seen, 2)
    assert [(m, q) for m, q, *_ in seen] == [(a, 1), (a, 2)]
    # retention trims only what was read: no gap
    r.xtrim(keys.EVENTS, maxlen=1, approximate=False)
    migration("between")
    drain(r, d, sub, seen, 3)
    assert webhooks.status(r, sub)["gaps"] == 0
    cursor = r.get(keys.webhook("t", "cursor"))
    # the deliverer is away while b's events are written and trimmed; c's is kept
    b = migration("b", states.SNAPSHOTTING)
    c = migration("c")
    oldest = r.xrange(keys.EVENTS)[-1][0]
    r.xtrim(keys.EVENTS, maxlen=1, approximate=False)
    drain(r, d, sub, seen, 5)
    notices = [(kind, body, ok) for kind, body, _, ok in seen if kind == "events.gap"]
    assert len(notices) == 1
    kind, body, ok = notices[0]
    assert ok  # signed as every delivery
    assert (body["type"], body["after"], body["before"], body["subscription"]) == ("events.gap", cursor, oldest, "t")
    assert body["lost_between"] == [int(cursor.split("-")[0]) / 1000, int(oldest.split("-")[0]) / 1000]
    assert (c, 1) in [(m, q) for m, q, *_ in seen] and b not in [m for m, *_ in seen]
    st = webhooks.status(r, sub)
    assert st["gaps"] == 1 and st["last_gap"]["after"] == cursor and st["last_gap"]["before"] == oldest
    gap_logs = [e for e in st["log"] if e["result"] == "gap"]
    assert len(gap_logs) == 1 and cursor in gap_logs[0]["outcome"]
    assert webhook_gaps(r) == {"t": 1}
    # said once: later reads and events find no new gap
    migration("after", states.SNAPSHOTTING)
    drain(r, d, sub, seen, 7)
    assert webhooks.status(r, sub)["gaps"] == 1 and len([s for s in seen if s[0] == "events.gap"]) == 1
    return cursor, oldest


def test_webhooks_status_says_events_were_lost(r, receiver, redis_url, tmp_path, capsys):
    cursor, oldest = gap_scenario(r, receiver)
    (tmp_path / "credentials.toml").write_text('[webhooks.t]\nsecret = "' + "s" * 16 + '"\n')
    (tmp_path / "credentials.toml").chmod(0o600)
    (tmp_path / "quickmig.toml").write_text(f'redis_url = "{redis_url}"\ncredentials_file = "credentials.toml"\n'
                                            f'[webhooks.t]\nurl = "{receiver[0]}"\n')
    assert cli.main(["webhooks", "status", "--config", str(tmp_path / "quickmig.toml")]) == 0
    out = capsys.readouterr().out
    assert f"EVENTS LOST: 1 time(s) the events stream was trimmed before this subscription read it; last: " \
           f"events after {cursor} and before {oldest}" in out
    assert (f"gap       - #0 events.gap (attempt 0: events after {cursor} and before {oldest} "
            "were trimmed unread)") in out


def test_stream_ids_compare_and_step_back_as_redis_orders_them():
    assert webhooks.id_after("1700000000001-0", "1700000000000-5")
    assert webhooks.id_after("5-2", "5-1") and not webhooks.id_after("5-1", "5-1")
    assert webhooks.id_before("5-2") == "5-1"
    assert webhooks.id_before("5-0") == f"4-{2 ** 64 - 1}"


def test_a_subscriptions_secret_is_not_in_its_repr():
    sub = webhooks.Subscription("t", "http://127.0.0.1:9/", None, b"k" * 24)
    assert "k" * 24 not in repr(sub) and "k" * 24 not in str(sub)
