"""Bandwidth limits and copy slots, with real Redis, real smbd and real copying processes."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import redis

from workers.coord.copy_resume import RedisResumeRecord
from workers.coord.slots import CopySlots, max_concurrency
from workers.coord.throttle import Throttle
from workers.model import chunks, keys
from workers.smb.file_copy import copy_file

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def put(share, rel: str, data: bytes) -> None:
    path = share.local(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for pattern in (keys.PREFIX + "throttle*", keys.PREFIX + "slots*", keys.PREFIX + "copy:*"):
        for k in client.scan_iter(match=pattern):
            client.delete(k)
    return client


def _copy_in_child(redis_url, src_ep, dst_ep, rel, dst_rel, holder, source, destination, k, out):
    """One copy worker: take the slots, copy within the limits, report (start, end, bytes) per chunk."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    throttle, slots = Throttle(client), CopySlots(client, poll_s=0.05)
    moved = []

    def limited(n):
        throttle.wait(source, destination, n)
        moved.append((time.time(), n))

    with slots.hold(holder, source, destination, k, k):
        copy_file(src_ep, rel, dst_ep, dst_rel, streams=2, throttle=limited,
                  resume=RedisResumeRecord(client, holder, dst_rel))
    out.put((holder, moved))


def _run_copies(redis_url, smb_servers, smb_dir, n, size, k, source="hv-a", destination="hv-b"):
    src, dst = smb_servers
    rel = rf"{smb_dir}\disk.vhdx"
    put(src, rel, os.urandom(size))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_copy_in_child,
                         args=(redis_url, src.endpoint, dst.endpoint, rel, rf"{smb_dir}\copy{i}.vhdx",
                               f"m{i}", source, destination, k, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    data = src.local(rel).read_bytes()
    for i in range(n):
        assert dst.local(rf"{smb_dir}\copy{i}.vhdx").read_bytes() == data
    return results


def test_more_copies_than_slots_never_exceed_k_per_host(redis_url, r, smb_servers, smb_dir):
    results = _run_copies(redis_url, smb_servers, smb_dir, n=5, size=3 * chunks.CHUNK_BYTES, k=2)

    log = CopySlots(r).log()
    assert len([e for e in log if e["event"] == "acquire"]) == 5
    assert len([e for e in log if e["event"] == "release"]) == 5
    peak = max_concurrency(log)
    assert peak[("read", "hv-a")] == 2, peak  # the limit was reached (copies did queue) ...
    assert peak[("write", "hv-b")] == 2, peak  # ... and never exceeded
    assert r.zcard(keys.copy_slots("read", "hv-a")) == 0  # every slot released
    assert len(results) == 5


def test_a_dead_holder_stops_counting_after_its_slot_expires(r):
    slots = CopySlots(r, ttl_s=1)
    assert slots.try_acquire("dead", "h1", "h2", 1, 1)
    assert not slots.try_acquire("other", "h1", "h3", 1, 1)  # h1's only read slot is taken
    assert slots.try_acquire("dead", "h1", "h2", 1, 1)  # a redelivered holder gets its own slot back
    deadline = time.time() + 10
    while not slots.try_acquire("other", "h1", "h3", 1, 1):
        assert time.time() < deadline, "the dead holder's slot never expired"
        time.sleep(0.1)


def test_the_global_limit_holds_within_10_percent_over_10_second_windows(redis_url, r, smb_servers, smb_dir):
    rate = 12_000_000
    Throttle(r).set(rate)
    t0 = time.time()
    results = _run_copies(redis_url, smb_servers, smb_dir, n=3, size=6 * chunks.CHUNK_BYTES, k=3)
    elapsed = time.time() - t0

    events = sorted(e for moved in results.values() for e in moved)
    total = sum(n for _, n in events)
    assert total == 3 * 6 * chunks.CHUNK_BYTES
    assert elapsed >= total / rate * 0.9  # it was held back at all
    # every 10 s window starting at a chunk's start: bytes started inside it
    for i, (start, _) in enumerate(events):
        window = sum(n for t, n in events[i:] if t < start + 10)
        assert window <= rate * 10 * 1.1, (window, rate * 10)


def test_a_limit_changed_while_copies_run_applies_to_them(r):
    t = Throttle(r)
    t.set(100_000_000)
    waits = [t.reserve("a", "b", 10_000_000) for _ in range(5)]  # 0.5 s of budget at 100 MB/s
    t.set(1_000_000, pair=("a", "b"))  # now 1 MB/s for this pair
    slow = t.reserve("a", "b", 1_000_000)
    after = t.reserve("a", "b", 1_000_000)
    assert waits[-1] < 1.0
    assert after - slow == pytest.approx(1.0, abs=0.2)  # each 1 MB now costs a second
    t.set(0)
    t.set(0, pair=("a", "b"))
    assert t.limits() == {"global": None, "pairs": {}}
    assert t.reserve("a", "b", 10**12) == 0.0  # unlimited again


def test_a_migration_waiting_for_a_copy_slot_says_so_until_it_has_one(lab):
    lab.add_vm("slot-wait", "hv1", memory_mb=16, disk_mb=16, write_rate_kbps=0)
    slots, k = CopySlots(lab.redis()), lab.cfg.host("hv1").max_copies
    blockers = [f"blocker-{i}" for i in range(k)]
    for b in blockers:  # every read slot of hv1 taken by other copies
        assert slots.try_acquire(b, "hv1", "hv2", k, k)
    try:
        res, queued = lab.cli_json("migrate", "slot-wait", "--from", "hv1", "--to", "hv2", "--json")
        assert res.returncode == 0, res.stderr
        mid = queued["id"]
        deadline = time.time() + 60
        while "copy slot" not in (lab.cli_json("status", mid, "--json")[1].get("waiting") or ""):
            assert time.time() < deadline, lab.cli_json("status", mid, "--json")[1]
            time.sleep(0.3)
        rec = lab.cli_json("status", mid, "--json")[1]
        assert rec["state"] == "copying" and not rec.get("copied"), rec
        shown = lab.cli("status", mid)
        assert f"waiting for a copy slot: at most {k} copies read from hv1" in shown.stdout, shown.stdout
    finally:
        for b in blockers:
            slots.release(b, "hv1", "hv2")
    deadline = time.time() + 120
    while (rec := lab.cli_json("status", mid, "--json")[1])["state"] not in ("completed", "rolled_back", "failed"):
        assert time.time() < deadline, rec
        time.sleep(0.5)
    assert rec["state"] == "completed", rec.get("error")
    assert "waiting" not in rec  # taken back once the copy had its slot
