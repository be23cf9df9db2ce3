"""A Redis intake any language can use: `quickmig intake` consumes the stream
`quickmig:requests` (workers.model.keys.REQUESTS) and writes each request's outcome to
the hash `quickmig:request:<request_id>`.

A producer that can only talk to Redis adds an entry with fields `request_id`, `vm`,
`source`, `destination` and optionally `options` (a JSON object with the CLI's option
names: `max-downtime` or `max_downtime`, ...). Each entry is validated and enqueued
exactly as `quickmig migrate` does (producer.migrations.Producer), then its outcome
written: `state` = `accepted` with `migration_id`, or `refused` with `error` (the CLI's
one line). The same request_id again gives the same outcome, never a second migration:
the request_id is the idempotency key of the enqueue, and an outcome already written
ends the matter.

Delivery is at least once: consumers share the group `quickmig-intake`; an entry is
acknowledged (and deleted, so the stream holds only requests not yet decided) after its
outcome is written; an entry a consumer took and never acknowledged (it crashed) is
claimed by another after `claim_idle_s`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from typing import Any

import redis

from producer.migrations import IdempotencyConflict, MigrationRequest, Producer, RequestError
from workers.model import keys
from workers.model.errors import QuickmigError

GROUP = "quickmig-intake"
REQUESTER = "redis-intake"  # the requester recorded: an entry in Redis carries no identity to trust
OPTIONS = ("max_downtime", "on_exceed", "max_rounds", "not_before", "window", "keep_source_hours")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
# an entry's fields: request_id and these three are needed, options may be left out
REQUIRED = ("vm", "source", "destination")
FIELDS = ("request_id", *REQUIRED, "options")
# the outcome hash's fields: state is accepted (with migration_id) or refused (with error)
OUTCOME_FIELDS = ("state", "migration_id", "error", "at")
CLAIM_IDLE_S_DEFAULT = 60.0

log = logging.getLogger("quickmig.intake")


class Retry(QuickmigError):
    """Not decided now (the same request_id still being decided elsewhere): leave it pending."""


def options_of(raw: str | None) -> dict[str, Any]:
    """The `options` field (JSON object, the CLI's option names with - or _) as Producer options."""
    if raw is None or raw == "":
        return {}
    try:
        given = json.loads(raw)
    except ValueError:
        raise RequestError("options must be a JSON object, such as {\"max-downtime\": \"30s\"}") from None
    if not isinstance(given, dict):
        raise RequestError("options must be a JSON object, such as {\"max-downtime\": \"30s\"}")
    out = {}
    for name, value in given.items():
        key = str(name).removeprefix("--").replace("-", "_")
        key = "keep_source_hours" if key == "keep_source" else key
        if key not in OPTIONS:
            known = ", ".join(o.replace("_", "-") for o in OPTIONS[:-1]) + ", keep-source"
            raise RequestError(f"unknown option {name!r} (options: {known})")
        if value is not None:
            out[key] = value
    return out


class Intake:
    def __init__(self, producer: Producer, consumer: str | None = None,
                 claim_idle_s: float = CLAIM_IDLE_S_DEFAULT):
        self.p = producer
        self.r: redis.Redis = producer.store.r
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)

    def ensure_group(self) -> None:
        try:  # from the stream's start: requests added before any consumer ran are taken too
            self.r.xgroup_create(keys.REQUESTS, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def step(self, block_ms: int = 5000) -> int:
        """Decide what a crashed consumer left, then what is new; returns the entries decided."""
        done = 0
        _next, claimed, *_ = self.r.xautoclaim(keys.REQUESTS, GROUP, self.consumer, self.claim_idle_ms,
                                               start_id="0-0", count=20)
        for entry_id, fields in claimed:
            if fields:  # an entry deleted meanwhile comes back empty
                done += self.handle(entry_id, fields)
            else:
                self.r.xack(keys.REQUESTS, GROUP, entry_id)
        got = self.r.xreadgroup(GROUP, self.consumer, {keys.REQUESTS: ">"}, count=20,
                                block=0 if claimed else block_ms) or []
        for _stream, entries in got:
            for entry_id, fields in entries:
                done += self.handle(entry_id, fields)
        return done

    def handle(self, entry_id: str, fields: dict[str, str]) -> int:
        rid = fields.get("request_id", "")
        if not REQUEST_ID.match(rid):
            # nowhere to write an outcome: say it in the log, and drop it
            log.warning("intake entry %s dropped: request_id %r is not 1-200 of A-Z a-z 0-9 . _ : -",
                        entry_id, rid)
            self._done(entry_id)
            return 1
        outcome = keys.request(rid)
        if not self.r.exists(outcome):
            try:
                result = self.decide(rid, fields)
            except Retry as e:
                log.info("intake request %s left pending: %s", rid, e)
                return 0
            except (redis.RedisError, OSError, QuickmigError) as e:
                # unacknowledged: another pass (or consumer) takes it again after claim_idle_s
                log.warning("intake request %s not decided, to be retried: %s", rid, e)
                return 0
            with self.r.pipeline() as p:
                p.hset(outcome, mapping=result)
                p.expire(outcome, keys.REQUEST_TTL_S)
                p.execute()
            log.info("intake request %s: %s", rid, result)
        self._done(entry_id)
        return 1

    def decide(self, rid: str, fields: dict[str, str]) -> dict[str, str]:
        try:
            missing = [f for f in REQUIRED if not fields.get(f)]
            if missing:
                raise RequestError(f"the request has no {', '.join(missing)}")
            req = MigrationRequest(fields["vm"], fields["source"], fields["destination"],
                                   options_of(fields.get("options")))
            rec, _new = self.p.enqueue_once(req, rid, "intake", requester=REQUESTER)
        except IdempotencyConflict as e:
            if "still being decided" in str(e):
                raise Retry(str(e)) from None
            return {"state": "refused", "error": str(e), "at": repr(time.time())}
        except RequestError as e:
            return {"state": "refused", "error": str(e), "at": repr(time.time())}
        return {"state": "accepted", "migration_id": rec["id"], "at": repr(time.time())}

    def _done(self, entry_id: str) -> None:
        with self.r.pipeline() as p:
            p.xack(keys.REQUESTS, GROUP, entry_id)
            p.xdel(keys.REQUESTS, entry_id)
            p.execute()

    def serve(self, stop=lambda: False) -> None:
        need_group = True
        while not stop():
            try:
                if need_group:
                    self.ensure_group()
                    need_group = False
                self.step()
            except redis.RedisError as e:
                # Redis away, or restarted without its data (then the group is gone too)
                log.warning("intake: %s; retrying in 2 s", e)
                need_group = need_group or "NOGROUP" in str(e)
                time.sleep(2)
