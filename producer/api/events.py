"""`GET /v1/events`: the events stream (workers.model.keys.EVENTS) as Server-Sent Events.

Each event's id is its stream entry id, so a client that reconnects with Last-Event-ID gets
exactly the events after the last one it saw, as long as the stream still holds them
(`[events] max_entries`); when some were trimmed meanwhile, a `gap` event says so first,
and the client re-reads the migrations it follows.
"""
from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from litestar.response import ServerSentEventMessage

from workers.model import keys
from workers.model.record import event_data

BLOCK_MS = 15_000  # a keep-alive comment this often when nothing happens (proxies drop idle streams)
STREAM_ID = re.compile(r"^(0|\d+-\d+)$")


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def start_after(r: aioredis.Redis, last_event_id: str | None) -> str:
    """The entry id to read after: the client's last one, else the newest now (only what comes next)."""
    if last_event_id is not None:
        return last_event_id
    newest = await r.xrevrange(keys.EVENTS, count=1)
    return newest[0][0] if newest else "0-0"


async def _trimmed_after(r: aioredis.Redis, after: str) -> str | None:
    """If events after `after` may have been trimmed: the oldest id kept ("" if none is);
    else None. Trimmed entries are all older than the oldest kept one, so there is a gap
    when `after` is older than it and the stream ever dropped an entry (which may, at
    worst, have been `after` itself: then the gap is empty, and a re-read costs little)."""
    try:
        info = await r.xinfo_stream(keys.EVENTS)
    except aioredis.ResponseError:  # no stream yet: nothing was ever trimmed
        return None
    dropped = info.get("entries-added", info["length"] + 1) > info["length"]
    first = info.get("first-entry")
    oldest = first[0] if first else None
    newest = info.get("last-generated-id") or "0-0"
    if not dropped or (oldest is not None and _key(after) >= _key(oldest)) or _key(after) >= _key(newest):
        return None
    return oldest or ""


def plan_data(fields: dict[str, str]) -> dict:
    """A plan's entry as the JSON of an SSE `plan` event."""
    out: dict = {k: fields.get(k) for k in ("plan", "name", "event", "new", "member", "migration")}
    out["at"] = float(fields["at"])
    return out


async def stream(r: aioredis.Redis, after: str, migration: str | None) -> AsyncIterator[ServerSentEventMessage]:
    yield ServerSentEventMessage(data=None, comment="quickmig events")
    if after not in ("0", "0-0"):
        oldest = await _trimmed_after(r, after)
        if oldest is not None:
            yield ServerSentEventMessage(event="gap", data=json.dumps({"after": after, "oldest_kept": oldest}))
    while True:
        got = await r.xread({keys.EVENTS: after}, count=100, block=BLOCK_MS)
        if not got:
            yield ServerSentEventMessage(data=None, comment="keep-alive")
            continue
        for _name, entries in got:
            for entry_id, fields in entries:
                after = entry_id
                if fields.get("kind") == "plan":  # workers.engine.plans.event
                    if migration is None:
                        yield ServerSentEventMessage(id=entry_id, event="plan", data=json.dumps(plan_data(fields)))
                    continue
                if migration is not None and fields.get("id") != migration:
                    continue
                yield ServerSentEventMessage(id=entry_id, event="state", data=json.dumps(event_data(fields)))
