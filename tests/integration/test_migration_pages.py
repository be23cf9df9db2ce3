"""Cursor pages of migrations (producer.migrations.Producer.page, `GET /v1/migrations`),
the events stream every state change is appended to, and idempotency claims, against a
real redis-server."""
from __future__ import annotations

import json
import time

import pytest
import redis

from producer.migrations import (
    IDEMPOTENCY_CLAIM_STALE_S,
    IdempotencyConflict,
    MigrationRequest,
    Producer,
    RequestError,
)
from workers.model import keys, states
from workers.model.config import Config, EventSettings
from workers.model.record import Store, new_record

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own on the session's Redis, emptied per test
    redis.Redis.from_url(url).flushdb()
    return Producer(Config(path=None, redis_url=url, hosts={}, credentials_file=None,
                           events=EventSettings(max_entries=100)))


def _add(store: Store, vm: str, source: str, destination: str, at: float, state: str = states.QUEUED) -> str:
    rec = new_record(vm=vm, vm_id=f"id-{vm}", source=source, destination=destination, fence=1)
    rec["created_at"] = at
    store.create(rec)
    if state != states.QUEUED:
        store.set(rec["id"], state=state)
    return rec["id"]


def _all_pages(p: Producer, limit: int, **filters) -> list[str]:
    out, cursor, pages = [], None, 0
    while True:
        items, cursor = p.page(limit=limit, cursor=cursor, **filters)
        out += [r["id"] for r in items]
        pages += 1
        assert pages < 100
        if cursor is None:
            return out


def test_pages_cover_every_migration_once_newest_first_even_with_equal_times(producer):
    store = producer.store
    # times with ties, so a page boundary falls inside a run of equal creation times
    times = [100.0, 101.0, 101.0, 101.0, 101.0, 102.0, 103.0, 103.0, 104.0, 105.0, 105.0]
    ids = [_add(store, f"vm{i}", "hv1", "hv2", t) for i, t in enumerate(times)]
    expected = [m for _, m in sorted(zip(times, ids, strict=True), key=lambda x: (x[0], x[1]), reverse=True)]
    for limit in (1, 2, 3, 4, 50):
        assert _all_pages(producer, limit) == expected, limit


def test_a_migration_created_between_pages_shifts_nothing(producer):
    store = producer.store
    ids = [_add(store, f"vm{i}", "hv1", "hv2", 200.0 + i) for i in range(6)]
    first, cursor = producer.page(limit=3)
    assert [r["id"] for r in first] == ids[::-1][:3]
    _add(store, "late", "hv1", "hv2", 300.0)
    second, cursor = producer.page(limit=3, cursor=cursor)
    assert [r["id"] for r in second] == ids[::-1][3:]
    assert producer.page(limit=3, cursor=cursor)[0] == [] or cursor is None


def test_filters_by_state_vm_and_either_host(producer):
    store = producer.store
    a = _add(store, "web", "hv1", "hv2", 10.0)
    b = _add(store, "db", "hv2", "hv3", 11.0, states.COMPLETED)
    c = _add(store, "web", "hv3", "hv1", 12.0, states.COMPLETED)
    assert _all_pages(producer, 1, vm="web") == [c, a]
    assert _all_pages(producer, 1, host="hv2") == [b, a]
    assert _all_pages(producer, 1, host="hv1", state=states.COMPLETED) == [c]
    assert _all_pages(producer, 2, state=states.FAILED) == []
    with pytest.raises(RequestError):
        producer.page(cursor="yesterday:abc")


def test_every_state_change_is_an_event_and_the_stream_is_bounded(producer):
    store = producer.store
    mid = _add(store, "ev", "hv1", "hv2", 1.0)
    store.transition(mid, {states.QUEUED}, states.SNAPSHOTTING)
    store.set(mid, bytes_copied=5)  # not a state change: no event
    store.transition(mid, {states.SNAPSHOTTING}, states.ROLLING_BACK, by="ops-bot")
    entries = store.r.xrange(keys.EVENTS)
    got = [(f["old"], f["new"], f["seq"], f.get("by")) for _, f in entries]
    assert got == [("", "queued", "1", None), ("queued", "snapshotting", "2", None),
                   ("snapshotting", "rolling_back", "3", "ops-bot")]
    assert all(f["id"] == mid and f["vm"] == "ev" and f["source"] == "hv1" and f["destination"] == "hv2"
               for _, f in entries)
    assert store.get(mid)["history"][-1]["by"] == "ops-bot"
    # bounded: far more changes than max_entries leave about max_entries (approximate trim)
    for i in range(600):
        _add(store, f"many{i}", "hv1", "hv2", 2.0 + i)
    assert 100 <= store.r.xlen(keys.EVENTS) < 300


def test_an_idempotency_claim_is_taken_over_only_when_stale(producer):
    req = MigrationRequest("vm", "hv1", "hv2")
    k = keys.idempotency("intake", "r-1")
    r = producer.store.r
    fresh = {"digest": req.digest(), "migration": None, "at": time.time()}
    r.set(k, json.dumps(fresh))
    with pytest.raises(IdempotencyConflict, match="still being decided"):
        producer.enqueue_once(req, "r-1", "intake")
    r.set(k, json.dumps(dict(fresh, at=fresh["at"] - IDEMPOTENCY_CLAIM_STALE_S - 1)))
    # taken over: this attempt decides it (here: refused, no such host), and frees the key
    with pytest.raises(RequestError, match="unknown source host"):
        producer.enqueue_once(req, "r-1", "intake")
    assert r.get(k) is None
    # another request under a key still claimed: refused whatever its age
    r.set(k, json.dumps(dict(fresh, at=0)))
    with pytest.raises(IdempotencyConflict, match="another request"):
        producer.enqueue_once(MigrationRequest("vm", "hv1", "hv3"), "r-1", "intake")


def test_a_resume_after_trimmed_events_begins_with_a_gap_event(producer):
    """GET /v1/events's stream (producer/api/events.py) from an id older than what the
    stream still keeps: a `gap` event first, then what is kept; from a kept id: no gap."""
    import asyncio

    import redis.asyncio as aioredis

    from producer.api import events
    store = producer.store
    first = store.r.xadd(keys.EVENTS, {"id": "m", "vm": "v", "source": "a", "destination": "b", "old": "",
                                       "new": "queued", "at": "1.0", "seq": "1"})
    for i in range(400):  # far past max_entries (100): the first entries are trimmed
        _add(store, f"trim{i}", "hv1", "hv2", 10.0 + i)
    assert store.r.xrange(keys.EVENTS, first, first) == []
    kept = store.r.xrange(keys.EVENTS, count=1)[0][0]

    async def head(after: str, n: int) -> list:
        r = aioredis.Redis.from_url(producer.cfg.redis_url,
                                    decode_responses=True)
        try:
            out = []
            async for msg in events.stream(r, after, None):
                out.append(msg)
                if len(out) == n:
                    return out
            return out
        finally:
            await r.aclose()

    gap = asyncio.run(head(first, 3))
    assert gap[0].comment and gap[1].event == "gap" and json.loads(gap[1].data)["after"] == first
    assert gap[2].event == "state" and gap[2].id == kept
    no_gap = asyncio.run(head(kept, 2))
    assert no_gap[1].event == "state" and no_gap[1].id > kept
