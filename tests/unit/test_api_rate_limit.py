"""The per-token request limit (producer/api/ratelimit.py) on the session's real redis-server:
never more than N requests in any 60 s, a window boundary included."""
from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from producer.api.ratelimit import RateLimit


def run(redis_url, body):
    async def go():
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await r.flushdb()
            return await body(RateLimit(r))
        finally:
            await r.aclose()
    return asyncio.run(go())


def test_a_minute_boundary_does_not_let_twice_the_limit_through(redis_url):
    boundary = 1_700_000_040.0  # a minute starts: 3 requests just before it, 3 just after
    assert boundary % 60 == 0

    async def body(rl):
        before = [(await rl.admit("t", 3, boundary - 0.1 + i * 0.01)).admitted for i in range(3)]
        after = [await rl.admit("t", 3, boundary + 0.1 + i * 0.01) for i in range(3)]
        return before, after
    before, after = run(redis_url, body)
    assert before == [True, True, True]
    assert [v.admitted for v in after] == [False, False, False]
    assert 59 <= after[0].retry_after_s <= 60  # the first of the three leaves the window 59.8 s later


def test_a_request_is_admitted_once_the_oldest_ages_out_and_refusals_do_not_count(redis_url):
    async def body(rl):
        t0 = 1_700_000_000.0
        got = [(await rl.admit("t", 2, t)).admitted for t in (t0, t0 + 30)]
        got += [(await rl.admit("t", 2, t0 + 30 + k)).admitted for k in range(1, 20)]  # all refused
        got.append((await rl.admit("t", 2, t0 + 60.001)).admitted)  # the first is now out
        got.append((await rl.admit("t", 2, t0 + 60.5)).admitted)  # the second is not yet
        other = (await rl.admit("u", 2, t0 + 60.5)).admitted  # another token has its own count
        return got, other
    got, other = run(redis_url, body)
    assert got == [True, True] + [False] * 19 + [True, False]
    assert other


def test_no_60_second_span_ever_holds_more_than_the_limit(redis_url):
    rng = random.Random(14)
    times = sorted(1_700_000_000 + rng.uniform(0, 600) for _ in range(600))

    async def body(rl):
        return [t for t in times if (await rl.admit("t", 7, t)).admitted]
    admitted = run(redis_url, body)
    worst = max(sum(1 for u in admitted if t <= u < t + 60) for t in admitted)
    assert worst == 7  # reached (the requests are dense enough) and never passed
    assert len(admitted) >= 7 * 9  # and the limit is not stricter than it says


def test_concurrent_requests_take_exactly_the_places_there_are(redis_url):
    async def body(rl):
        got = await asyncio.gather(*(rl.admit("t", 10) for _ in range(50)))  # Redis's clock
        return [v.admitted for v in got]
    assert sum(run(redis_url, body)) == 10
