"""Errors as RFC 9457 problem details (application/problem+json): `type` names the kind of
problem, `title` says it in general, `detail` is the one line the CLI would print."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from producer.migrations import HostUnreachable, IdempotencyConflict, RequestError
from producer.plan_file import PlanError
from workers.coord.throttle import ThrottleError
from workers.model.config import ConfigError
from workers.model.record import RecordNotFound

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:quickmig:problem:"

log = logging.getLogger("quickmig.api")


@dataclass
class ProblemDetails:
    """RFC 9457 problem details."""
    type: str
    title: str
    status: int
    detail: str


@dataclass
class Problem(Exception):
    status: int
    kind: str
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Problem):
    """A request refused in a way the API itself decides (a cancel too late, a bad cursor)."""


def response(status: int, kind: str, title: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": TYPE_BASE + kind, "title": title, "status": status, "detail": detail}
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers or {})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def on_problem(_: Request, e: Problem) -> Response:
    return response(e.status, e.kind, e.title, _one_line(e.detail), e.headers)


def on_refused(_: Request, e: Exception) -> Response:
    return response(422, "request-refused", "Request refused", _one_line(str(e)))


def on_not_found(_: Request, e: Exception) -> Response:
    return response(404, "not-found", "No such migration", _one_line(str(e)))


def on_idempotency(_: Request, e: Exception) -> Response:
    return response(409, "idempotency-key-conflict", "Idempotency-Key conflict", _one_line(str(e)))


def on_host_unreachable(_: Request, e: Exception) -> Response:
    return response(502, "host-unreachable", "Host unreachable", _one_line(str(e)))


def on_redis_down(_: Request, e: Exception) -> Response:
    return response(503, "redis-unreachable", "Redis unreachable", f"cannot reach Redis: {_one_line(str(e))}")


def on_http(_: Request, e: HTTPException) -> Response:
    detail = e.detail
    if isinstance(e, ValidationException) and isinstance(e.extra, list) and e.extra:
        detail = "; ".join(f"{x.get('key', 'body')}: {x.get('message')}" if isinstance(x, dict) else str(x)
                           for x in e.extra)
    kind = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
            405: "method-not-allowed", 429: "too-many-requests"}.get(e.status_code, "http-error")
    return response(e.status_code, kind, kind.replace("-", " ").capitalize(), _one_line(detail),
                    dict(e.headers or {}))


def on_crash(request: Request, e: Exception) -> Response:
    # the cause goes to the log, never to the caller (it may name a host or a path)
    log.exception("%s %s failed", request.method, request.url.path)
    return response(500, "internal-error", "Internal error",
                    "the API failed on this request; the server's log has the cause")


HANDLERS: dict[type[Exception] | int, Any] = {
    Problem: on_problem,
    RequestError: on_refused,
    PlanError: on_refused,
    ThrottleError: on_refused,
    ConfigError: on_refused,
    RecordNotFound: on_not_found,
    IdempotencyConflict: on_idempotency,
    HostUnreachable: on_host_unreachable,
    redis.ConnectionError: on_redis_down,
    redis.TimeoutError: on_redis_down,
    HTTPException: on_http,
    Exception: on_crash,
}
