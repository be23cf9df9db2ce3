"""Webhooks: `quickmig webhooks run` POSTs every state change a subscription asks for to its
URL, signed; `quickmig webhooks status` shows each subscription's deliveries.

A subscription is `[webhooks.NAME]` in the config (`url`, optional `events`: the states
whose entering it wants) and a secret in the credentials file (`[webhooks.NAME] secret`).
Deliveries read the events stream (workers.model.keys.EVENTS), which the workers append to
in the same transaction as each state change: a delivery never delays a migration, and a
receiver that is down only makes its own queue longer.

Per subscription, the stream is read from where the last read stopped (its cursor), and
each wanted event is put on its migration's queue in the same transaction as the cursor
moves: an event is queued once, and never skipped. A migration's queue is delivered oldest
first, the next event only once the one before was accepted (a 2xx): in order per migration,
at least once (a receiver that accepted an event but whose answer was lost gets it again;
`event_id` tells). A failed attempt is retried after a backoff that doubles up to
`max_backoff_s`; an event still failing `retry_for_s` after its first failure (at least 24 h)
is given up, logged as `dropped`, and the migration's next event follows. Migrations are
independent: one whose receiver refuses an event does not hold back the others.

Each POST has the event as its JSON body and the headers `Quickmig-Signature: t=<unix
time>,v1=<hex HMAC-SHA256 of the secret over "<t>." followed by the body>`,
`Quickmig-Event-Id` (the stream entry id, the same on every attempt) and
`Quickmig-Subscription`. A receiver recomputes the HMAC, compares in constant time, and
refuses a timestamp far from its clock (a replay).

One process delivers a subscription at a time (a lease in Redis), so run one or more
`quickmig webhooks run` per fleet, as a service like the workers.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.model import config as config_mod
from workers.model import keys, signed_post
from workers.model.record import event_data

RETRY_FOR_S_DEFAULT = 72 * 3600  # an event is retried this long after its first failure
RETRY_FOR_S_MIN = 24 * 3600
MAX_BACKOFF_S_DEFAULT = 600.0
FIRST_BACKOFF_S = 1.0
TIMEOUT_S = 10.0  # per POST: a receiver that hangs costs its subscription this much per attempt
IDLE_S = 0.5  # how long a subscription with nothing to do waits for new events
DUE_BATCH = 50
STATE_EVENT = "state"  # Quickmig-Event-Type of a state change
GAP_EVENT = "events.gap"  # ... of the notice that events were trimmed before this subscription read them
GAP_QUEUE = "~gaps"  # the notices' own queue beside the migrations' (no migration id has a ~)
CREDENTIALS_TABLE = "webhooks"

log = logging.getLogger("quickmig.webhooks")


class WebhookError(config_mod.ConfigError):
    """A subscription cannot be served as configured; the message says what to fix."""


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    events: frozenset[str] | None
    secret: bytes = field(default=b"", repr=False)  # never in a log line or a traceback

    def wants(self, fields: dict[str, str]) -> bool:
        if fields.get("kind") == "plan":  # a plan's entries (workers.engine.plans): not a migration's state
            return False
        return self.events is None or fields.get("new") in self.events


def secrets_of(cfg: config_mod.Config) -> dict[str, bytes]:
    """NAME -> secret, from the credentials file's `[webhooks.NAME] secret` (or `secret_file`,
    or `secret_env`), read as every secret is (workers.model.config)."""
    try:
        return {name: secret.encode() for name, secret in cfg.webhook_secrets().items()}
    except config_mod.ConfigError as e:
        raise WebhookError(str(e)) from None


def subscriptions(cfg: config_mod.Config) -> list[Subscription]:
    """The configured subscriptions with their secrets; WebhookError if one has none."""
    found = secrets_of(cfg)
    out = []
    for name, w in sorted(cfg.webhooks.items()):
        if name not in found:
            raise WebhookError(f"webhook {name!r} has no secret: add [{CREDENTIALS_TABLE}.{name}] secret = \"...\" "
                               f"(or secret_file, or secret_env) to the credentials file {cfg.credentials_file}")
        out.append(Subscription(name, w.url, w.events, found[name]))
    return out


def id_parts(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_after(a: str, b: str) -> bool:
    """Whether stream entry id `a` comes after `b`."""
    return id_parts(a) > id_parts(b)


def id_before(entry_id: str) -> str:
    """The greatest stream entry id below `entry_id` (XREAD after it starts at `entry_id`)."""
    ms, seq = id_parts(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2 ** 64 - 1}"


def id_time(entry_id: str) -> float:
    """The Unix time a stream entry id was made at (its milliseconds part)."""
    return id_parts(entry_id)[0] / 1000


def backoff_s(attempts: int, max_backoff_s: float) -> float:
    """The wait after the `attempts`-th failure in a row: 1 s, 2 s, 4 s, ... up to the cap."""
    return min(max_backoff_s, FIRST_BACKOFF_S * 2 ** min(attempts - 1, 30))


class Deliverer:
    """One subscription's deliveries (see the module docstring)."""

    def __init__(self, r: redis.Redis, sub: Subscription, *, retry_for_s: float = RETRY_FOR_S_DEFAULT,
                 max_backoff_s: float = MAX_BACKOFF_S_DEFAULT, timeout_s: float = TIMEOUT_S):
        self.r, self.sub = r, sub
        self.retry_for_s, self.max_backoff_s, self.timeout_s = retry_for_s, max_backoff_s, timeout_s
        self.k = {part: keys.webhook(sub.name, part)
                  for part in ("cursor", "due", "attempts", "log", "stats", "lease")}
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # -- the lease: one deliverer per subscription ---------------------------------------
    def hold(self) -> bool:
        """Take or keep the subscription's lease; False while another process holds it."""
        lease = self.k["lease"]
        if self.r.set(lease, self.holder, nx=True, ex=keys.WEBHOOK_LEASE_TTL_S):
            return True
        if self.r.get(lease) == self.holder:
            self.r.expire(lease, keys.WEBHOOK_LEASE_TTL_S)
            return True
        return False

    def release(self) -> None:
        if self.r.get(self.k["lease"]) == self.holder:
            self.r.delete(self.k["lease"])

    # -- reading the stream ----------------------------------------------------------------
    def take(self, block_ms: int | None = None) -> int:
        """Queue the wanted events after the cursor (up to 500), moving the cursor in the same
        transaction. A subscription seen for the first time starts after the newest event."""
        cursor = self.r.get(self.k["cursor"])
        if cursor is None:
            newest = self.r.xrevrange(keys.EVENTS, count=1)
            cursor = newest[0][0] if newest else "0-0"
            if not newest and self.r.exists(keys.EVENTS):  # emptied by trimming: after its last id
                cursor = str(self.r.xinfo_stream(keys.EVENTS)["last-generated-id"])
            self.r.set(self.k["cursor"], cursor, nx=True)
            cursor = self.r.get(self.k["cursor"]) or cursor
        cursor = self._past_gap(cursor)
        got = self.r.xread({keys.EVENTS: cursor}, count=500, block=block_ms)
        if not got:
            return 0
        entries = got[0][1]
        now = time.time()
        queued = 0
        with self.r.pipeline(transaction=True) as p:
            for entry_id, fields in entries:
                if not self.sub.wants(fields):
                    continue
                body = {"event_id": entry_id, "subscription": self.sub.name, **event_data(fields)}
                p.rpush(keys.webhook_queue(self.sub.name, fields["id"]), json.dumps(body))
                p.zadd(self.k["due"], {fields["id"]: now}, nx=True)  # a migration in backoff keeps its time
                queued += 1
            p.set(self.k["cursor"], entries[-1][0])
            p.execute()
        return queued

    def _past_gap(self, cursor: str) -> str:
        """The cursor to read after: `cursor`, or, when the stream was trimmed past it (events
        this subscription never read are gone), the id just before the oldest event kept,
        the gap recorded (log, status, metric) and an `events.gap` notice queued for the
        subscriber, in one transaction with the move, so it is said once.

        Trimming removes the oldest entries first: while the cursor's own entry is kept,
        nothing after it was trimmed. So there is a gap when that entry is gone and the oldest
        entry kept is newer than it (a subscription that began before the stream existed, at
        0-0, when the stream lost any entry: XINFO's entries-added above its length). The one
        other deletion (the event of an enqueue that failed, workers.model.record) looks the
        same when it was the cursor's entry and also the oldest: a gap is said then too, the
        harsher reading. The read that follows moves the cursor onto a kept entry, so a gap is
        said once."""
        first = self.r.xrange(keys.EVENTS, count=1)
        if not first or not id_after(first[0][0], cursor) or self.r.xrange(keys.EVENTS, cursor, cursor, count=1):
            return cursor
        if cursor == "0-0":
            info = self.r.xinfo_stream(keys.EVENTS)
            if int(info["entries-added"]) <= int(info["length"]):
                return cursor  # every entry ever added is still there
        oldest = first[0][0]
        now = time.time()
        notice = {"type": GAP_EVENT, "event_id": f"gap:{cursor}:{oldest}", "subscription": self.sub.name,
                  "after": cursor, "before": oldest, "lost_between": [id_time(cursor), id_time(oldest)],
                  "at": now}
        log.warning("webhook %s: the events stream was trimmed past its cursor: events after %s and before %s "
                    "were lost before delivery ([events] max_entries, or `webhooks run` down too long)",
                    self.sub.name, cursor, oldest)
        with self.r.pipeline(transaction=True) as p:
            p.rpush(keys.webhook_queue(self.sub.name, GAP_QUEUE), json.dumps(notice))
            p.zadd(self.k["due"], {GAP_QUEUE: now}, nx=True)
            self._log(p, {"at": now, "result": "gap", "migration": "-", "new": GAP_EVENT, "seq": 0, "attempt": 0,
                          "event_id": notice["event_id"], "after": cursor, "before": oldest,
                          "outcome": f"events after {cursor} and before {oldest} were trimmed unread"})
            p.hincrby(self.k["stats"], "gaps", 1)
            p.hset(self.k["stats"], "last_gap", json.dumps({"at": now, "after": cursor, "before": oldest}))
            p.set(self.k["cursor"], id_before(oldest))
            p.execute()
        return id_before(oldest)

    # -- delivering ------------------------------------------------------------------------
    def post(self, body: bytes, event_id: str, event_type: str = STATE_EVENT) -> tuple[bool, str]:
        """One attempt: (accepted, what came of it)."""
        headers = {"User-Agent": "quickmig-webhooks", "Quickmig-Event-Id": event_id,
                   "Quickmig-Subscription": self.sub.name, "Quickmig-Event-Type": event_type}
        ok, _, outcome = signed_post.post(self.sub.url, body, self.sub.secret, headers, self.timeout_s)
        return ok, outcome

    def deliver_due(self) -> int:
        """Try the oldest event of every migration whose turn it is; returns how many were tried."""
        now = time.time()
        due = self.r.zrangebyscore(self.k["due"], "-inf", now, start=0, num=DUE_BATCH)
        for mid in due:
            if not self.hold():  # a receiver slow enough to outlast the lease: another took over
                break
            self._deliver_one(mid)
        return len(due)

    def _deliver_one(self, mid: str) -> None:
        qkey = keys.webhook_queue(self.sub.name, mid)
        raw = self.r.lindex(qkey, 0)
        if raw is None:
            self.r.zrem(self.k["due"], mid)
            return
        event = json.loads(raw)
        held = json.loads(self.r.hget(self.k["attempts"], mid) or '{"n": 0, "first": null}')
        kind = event.get("type", STATE_EVENT)
        ok, outcome = self.post(raw.encode(), event["event_id"], kind)
        now = time.time()
        entry = {"at": now, "event_id": event["event_id"], "migration": mid if kind == STATE_EVENT else "-",
                 "new": event.get("new", kind), "seq": event.get("seq", 0), "attempt": held["n"] + 1,
                 "outcome": outcome}
        if ok:
            self._pop(qkey, mid, dict(entry, result="delivered"), "delivered")
            return
        held = {"n": held["n"] + 1, "first": held["first"] or now}
        if now - held["first"] >= self.retry_for_s:
            log.warning("webhook %s: gave up on event %s of migration %s after %d attempts (%s)",
                        self.sub.name, event["event_id"], mid, held["n"], outcome)
            self._pop(qkey, mid, dict(entry, result="dropped"), "dropped")
            return
        wait = backoff_s(held["n"], self.max_backoff_s)
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.k["attempts"], mid, json.dumps(held))
            p.zadd(self.k["due"], {mid: now + wait})
            self._log(p, dict(entry, result="failed", retry_in_s=round(wait, 3)))
            p.hincrby(self.k["stats"], "failed_attempts", 1)
            p.hset(self.k["stats"], mapping={"last_error": outcome, "last_error_at": repr(now)})
            p.execute()

    def _pop(self, qkey: str, mid: str, entry: dict, counter: str) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.lpop(qkey)
            p.hdel(self.k["attempts"], mid)
            p.zadd(self.k["due"], {mid: time.time()})  # its next event, if any, now
            self._log(p, entry)
            p.hincrby(self.k["stats"], counter, 1)
            if counter == "delivered":
                p.hset(self.k["stats"], "last_delivered_at", repr(entry["at"]))
            p.execute()
        if not self.r.exists(qkey):
            self.r.zrem(self.k["due"], mid)

    def _log(self, p: redis.client.Pipeline, entry: dict) -> None:
        p.lpush(self.k["log"], json.dumps(entry))
        p.ltrim(self.k["log"], 0, keys.WEBHOOK_LOG_MAX - 1)

    # -- the loop ---------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.hold():
                    stop.wait(keys.WEBHOOK_LEASE_TTL_S / 3)
                    continue
                tried = self.deliver_due()
                self.take(block_ms=None if tried else int(IDLE_S * 1000))
            except redis.RedisError as e:
                log.warning("webhook %s: %s; retrying in 2 s", self.sub.name, e)
                stop.wait(2)
        try:
            self.release()
        except redis.RedisError:
            pass


def status(r: redis.Redis, sub: Subscription, last: int = 20) -> dict[str, Any]:
    """What `quickmig webhooks status` shows of a subscription: counters, what waits, the log."""
    k = {part: keys.webhook(sub.name, part) for part in ("cursor", "due", "stats", "log", "lease")}
    waiting = r.zrange(k["due"], 0, -1, withscores=True)
    pending = sum(r.llen(keys.webhook_queue(sub.name, mid)) for mid, _ in waiting)
    stats = r.hgetall(k["stats"])
    return {"name": sub.name, "url": sub.url, "events": sorted(sub.events) if sub.events else None,
            "cursor": r.get(k["cursor"]), "delivering": r.exists(k["lease"]) == 1,
            "pending": pending, "migrations_waiting": len(waiting),
            "next_attempt_at": min((s for _, s in waiting), default=None),
            "delivered": int(stats.get("delivered", 0)), "dropped": int(stats.get("dropped", 0)),
            "failed_attempts": int(stats.get("failed_attempts", 0)),
            "gaps": int(stats.get("gaps", 0)),
            "last_gap": json.loads(stats["last_gap"]) if "last_gap" in stats else None,
            "last_delivered_at": float(stats["last_delivered_at"]) if "last_delivered_at" in stats else None,
            "last_error": stats.get("last_error"),
            "log": [json.loads(x) for x in r.lrange(k["log"], 0, last - 1)]}


def _stamp(cfg: config_mod.Config) -> tuple:
    """What says the config or the credentials file changed (their modification times and sizes)."""
    out = []
    for f in (cfg.path, cfg.credentials_file):
        try:
            st = os.stat(f) if f is not None else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st is not None else None)
    return tuple(out)


def run(cfg: config_mod.Config, *, retry_for_s: float = RETRY_FOR_S_DEFAULT,
        max_backoff_s: float = MAX_BACKOFF_S_DEFAULT, stop: threading.Event | None = None) -> None:
    """Deliver every subscription (a thread each, so a slow receiver delays only its own) until
    `stop` is set. The subscriptions are read again when the config or the credentials file
    changes, so adding or removing one needs no restart (a config that no longer loads keeps
    the old ones, with a warning). With none it idles, so a service can always run."""
    stop = stop or threading.Event()
    r = cfg.redis_client(decode_responses=True, socket_timeout=30, socket_connect_timeout=10)
    subs = subscriptions(cfg)
    while True:
        generation = threading.Event()
        threads = [threading.Thread(target=Deliverer(r, s, retry_for_s=retry_for_s,
                                                     max_backoff_s=max_backoff_s).serve,
                                    args=(generation,), name=f"webhook-{s.name}", daemon=True) for s in subs]
        for t in threads:
            t.start()
        log.info("webhooks: delivering %s",
                 ", ".join(f"{s.name} -> {s.url}" for s in subs) or "nothing (none configured)")
        stamp = _stamp(cfg)
        while not stop.wait(1):
            if _stamp(cfg) == stamp:
                continue
            stamp = _stamp(cfg)
            try:
                new_cfg = config_mod.load_config(cfg.path)
                new_subs = subscriptions(new_cfg)
            except config_mod.ConfigError as e:
                log.warning("webhooks: the changed config is not used: %s", e)
                continue
            if new_subs != subs:
                cfg, subs = new_cfg, new_subs
                break
        generation.set()
        for t in threads:
            t.join(TIMEOUT_S + 5)
        if stop.is_set():
            return
