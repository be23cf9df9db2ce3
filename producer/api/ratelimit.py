"""Per-token request limits: at most N requests in any 60 seconds, counted in Redis so that
every API process shares the count.

A sliding log (a sorted set per token of the times of its admitted requests), checked and
updated by one Lua script so that concurrent requests cannot both take the last place. A
fixed window per minute lets 2N through across a boundary (N in its last second, N in the
next's first); the log never admits more than N in any 60 s span. Refused requests are not
logged, so a caller that keeps retrying is admitted as soon as its oldest request ages out.
The clock is Redis's (TIME), one for every API process whatever their own clocks say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

from workers.model import keys

WINDOW_S = 60

# KEYS[1] the token's log; ARGV: limit, window (µs), now (µs, "" for the server's clock).
# Returns {1, 0} when admitted, else {0, µs until the oldest logged request leaves the window}.
_ADMIT = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, string.format('%.0f-%d', now, n))
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    retry_after_s: int  # whole seconds until a request would be admitted (0 when admitted)


class RateLimit:
    def __init__(self, r: aioredis.Redis, window_s: int = WINDOW_S):
        self.window_us = window_s * 1_000_000
        self._admit = r.register_script(_ADMIT)

    async def admit(self, token_name: str, limit: int, now_s: float | None = None) -> Verdict:
        """Take a place for one request of `token_name` if fewer than `limit` were admitted in
        the window before now (`now_s`: a given time, for tests; default Redis's clock)."""
        now = "" if now_s is None else str(round(now_s * 1_000_000))
        ok, wait_us = await self._admit(keys=[keys.api_rate(token_name)], args=[limit, self.window_us, now])
        return Verdict(bool(ok), 0 if ok else max(1, math.ceil(int(wait_us) / 1_000_000)))
