"""Where Redis is: one server, or a master that Redis Sentinel watches, and the clients
quickmig makes for it.

One server: `redis://`, `rediss://` (TLS) or `unix://`, as redis-py reads them. A master
under Sentinel: `redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB][?OPTIONS]`, or
`rediss+sentinel://...` for TLS to the sentinels and the data nodes alike (one CA,
`?ssl_ca_certs=`, covers both). redis-py has no URL form for Sentinel; this is the
convention other Python tools (docket, prefect-redis) read, so one URL serves them all.
Sentinel members default to port 26379. Every client asks the sentinels for the master
at each (re)connection, so after a failover it follows the new master; the Celery broker
gets the same through kombu's `sentinel://` transport.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# URL options a Sentinel URL may carry: the TLS files (both hops use them)
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisUrlError(ValueError):
    """A redis_url quickmig cannot use; the message names what to fix."""


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    tls_options: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelTarget:
    """The sentinels, service and db a Sentinel URL names; RedisUrlError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SENTINEL_SCHEMES:
        raise RedisUrlError(f"not a Sentinel URL ({', '.join(s + '://' for s in SENTINEL_SCHEMES)})")
    auth, _, members = parts.netloc.rpartition("@")
    sentinels = []
    for member in members.split(","):
        host, sep, port = member.rpartition(":") if not member.endswith("]") else (member, "", "")
        if not sep:
            host, port = member, ""
        host = host.strip("[]")
        if not host:
            raise RedisUrlError(f"Sentinel member {member!r} has no host (HOST[:PORT], comma-separated)")
        try:
            sentinels.append((host, int(port) if port else SENTINEL_PORT))
        except ValueError:
            raise RedisUrlError(f"Sentinel member {member!r}: the port must be a number") from None
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisUrlError("a Sentinel URL names the master's service after the sentinels: "
                            "redis+sentinel://HOST:26379,HOST:26379/SERVICE[/DB]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise RedisUrlError(f"the database after the service must be a number, not {path[1]!r}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise RedisUrlError(f"a Sentinel URL takes only {', '.join(_TLS_OPTIONS)} as options, not {', '.join(unknown)}")
    tls = parts.scheme.lower() == "rediss+sentinel"
    if query and not tls:
        raise RedisUrlError("TLS files are named on a rediss+sentinel:// URL only")
    username, _, password = auth.partition(":")
    return SentinelTarget(tuple(sentinels), unquote(path[0]), db, tls, query,
                          unquote(username) or None, unquote(password) if _ else None)


def with_auth(url: str, username: str | None, password: str | None) -> str:
    """`url` with a user and password in its authority (what Redis's ACL asks for)."""
    auth = quote(username or "", safe="") + (":" + quote(password, safe="") if password is not None else "")
    parts = urlsplit(url)
    return parts._replace(netloc=f"{auth}@{parts.netloc.rpartition('@')[2]}").geturl()


def _tls_kwargs(t: SentinelTarget) -> dict[str, Any]:
    if not t.tls:
        return {}
    # the certificate is verified always, as for a rediss:// URL (config refuses to turn it off)
    return {"ssl": True, "ssl_cert_reqs": "required", **t.tls_options}


def _sentinel_kwargs(t: SentinelTarget, auth: tuple[str | None, str | None], kw: dict) -> dict[str, Any]:
    user, password = auth
    out = {k: v for k, v in kw.items() if k.startswith("socket_")}
    out.update(_tls_kwargs(t))
    if user is not None:
        out["username"] = user
    if password is not None:
        out["password"] = password
    return out


def _master_kwargs(t: SentinelTarget, kw: dict) -> dict[str, Any]:
    out = dict(kw, db=t.db, **_tls_kwargs(t))
    if t.username is not None:
        out["username"] = t.username
    if t.password is not None:
        out["password"] = t.password
    return out


def connect(url: str, sentinel_auth: tuple[str | None, str | None] = (None, None), **kw: Any) -> redis.Redis:
    """A client of the Redis `url` names (kw: redis-py's connection options); for a Sentinel
    URL, of the current master, found again through the sentinels whenever it reconnects."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kw)
    t = parse_sentinel(url)
    s = Sentinel(list(t.sentinels), sentinel_kwargs=_sentinel_kwargs(t, sentinel_auth, kw))
    return s.master_for(t.service, **_master_kwargs(t, kw))


def connect_async(url: str, sentinel_auth: tuple[str | None, str | None] = (None, None),
                  **kw: Any) -> aioredis.Redis:
    """As `connect`, for asyncio (the HTTP API)."""
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **kw)
    t = parse_sentinel(url)
    s = AsyncSentinel(list(t.sentinels), sentinel_kwargs=_sentinel_kwargs(t, sentinel_auth, kw))
    return s.master_for(t.service, **_master_kwargs(t, kw))


def celery_broker(url: str, sentinel_auth: tuple[str | None, str | None] = (None, None)
                  ) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(broker_url, extra broker_transport_options, broker_use_ssl) for Celery, whose kombu
    spells Sentinel `sentinel://[AUTH@]HOST:PORT;sentinel://HOST:PORT/DB` with the service
    as the `master_name` transport option. For a single server: the URL unchanged, no
    extra options, and no TLS settings (the caller makes those from the rediss:// URL)."""
    if not is_sentinel(url):
        return url, {}, None
    t = parse_sentinel(url)
    auth = ""
    if t.username is not None or t.password is not None:
        auth = quote(t.username or "", safe="") + (":" + quote(t.password, safe="") if t.password is not None else "")
        auth += "@"
    members = ";".join(f"sentinel://{auth}{h}:{p}/{t.db}" for h, p in t.sentinels)
    options: dict[str, Any] = {"master_name": t.service,
                               "sentinel_kwargs": _sentinel_kwargs(t, sentinel_auth, {})}
    tls = None
    if t.tls:
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED, **t.tls_options}
    return members, options, tls
