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

BLOCK_MS = 15_000  # a keep-alive comment this often when nothing happens (proxies drop idle streams)
STREAM_ID = re.compile(r"^(0|\d+-\d+)$")


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def as_event(fields: dict[str, str]) -> dict:
    """A stream entry's fields as the JSON an event carries."""
    out: dict = {k: fields.get(k) for k in ("id", "vm", "source", "destination", "new")}
    out["old"] = fields.get("old") or None
    out["at"] = float(fields["at"])
    out["seq"] = int(fields["seq"])
    out["by"] = fields.get("by")
    return out


async def start_after(r: aioredis.Redis, last_event_id: str | None) -> str:
    """The entry id to read after: the client's last one, else the newest now (only what comes next)."""
    if last_event_id is not None:
        return last_event_id
    newest = await r.xrevrange(keys.EVENTS, count=1)
    return newest[0][0] if newest else "0-0"


async def stream(r: aioredis.Redis, after: str, migration: str | None) -> AsyncIterator[ServerSentEventMessage]:
    yield ServerSentEventMessage(data=None, comment="quickmig events")
    if after not in ("0", "0-0"):
        try:
            info = await r.xinfo_stream(keys.EVENTS)
        except aioredis.ResponseError:  # no stream yet: nothing was ever trimmed
            info = {}
        trimmed_up_to = info.get("max-deleted-entry-id") or "0-0"
        if _key(after) < _key(trimmed_up_to):
            yield ServerSentEventMessage(event="gap", data=json.dumps({"after": after, "trimmed_up_to": trimmed_up_to}))
    while True:
        got = await r.xread({keys.EVENTS: after}, count=100, block=BLOCK_MS)
        if not got:
            yield ServerSentEventMessage(data=None, comment="keep-alive")
            continue
        for _name, entries in got:
            for entry_id, fields in entries:
                after = entry_id
                if migration is not None and fields.get("id") != migration:
                    continue
                yield ServerSentEventMessage(id=entry_id, event="state", data=json.dumps(as_event(fields)))
