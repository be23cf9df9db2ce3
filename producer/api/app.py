"""The routes of `quickmig api` (Litestar: chosen by bench/api_framework.py, docs/benchmarks.md).

Every route but /healthz, /readyz and /openapi.json needs a bearer token (producer.api.auth)
with the scope its handler's `opt` names. Handlers that talk to Redis or a host run in a
worker thread (`threaded`): the Producer is the CLI's, synchronous.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import msgspec
import redis.asyncio as aioredis
from litestar import Litestar, Request, Response, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter
from litestar.response import ServerSentEvent

from producer import plan_file, plans
from producer.api import auth, events, problems
from producer.api.problems import Problem, ProblemDetails, Refused
from producer.api.ratelimit import RateLimit
from producer.migrations import MigrationRequest, Producer, RequestError
from workers.coord.throttle import Throttle, parse_rate
from workers.model import config as config_mod
from workers.model import states
from workers.model.errors import QuickmigError
from workers.model.record import MigrationRecord

VERSION = "1"

# one line per change a token asked for (who, what, outcome), in the API's log
audit = logging.getLogger("quickmig.api.audit")
PAGE_MAX = 500
HEALTH_MAX_AGE_S = 30.0  # GET /v1/hosts?health=true: how old a host's cached answer may be
VMS_MAX_AGE_S = 30.0  # GET /v1/hosts/{host}/vms: how old a cached list may be unless the caller says
CURSOR_PATTERN = r"^[0-9]+(\.[0-9]+)?:[0-9a-f]*$"  # creation time and id (producer.migrations.Producer.page)
OPTIONS = ("max_downtime", "on_exceed", "max_rounds", "not_before", "window", "keep_source_hours",
           "destination_path", "storage_map", "switch_map", "start",
           "eject_unmovable_isos")  # MigrationIn's, the CLI's migrate options
PROBLEM_RESPONSES = "application/problem+json: type, title, status, detail (RFC 9457)"

Option = str | int | float | None
T = TypeVar("T")


@dataclass
class MigrationIn:
    """A migration to start: the CLI's `quickmig migrate` arguments and options (same names
    with underscores, same values: durations as 90s/15m/2h or seconds, times as ISO 8601)."""
    vm: str
    source: str
    destination: str
    max_downtime: Option = None
    on_exceed: str | None = None
    max_rounds: int | None = None
    not_before: Option = None
    window: Option = None
    keep_source_hours: Option = None
    destination_path: str | None = None  # every file under this folder of the destination
    storage_map: list[str] | None = None  # "SRC_PREFIX=DST_PREFIX", the longest prefix wins
    switch_map: list[str] | None = None  # "SRC=DST": adapters on switch SRC connect to DST
    start: bool | None = None  # an Off or Saved VM (a cold move): start it on the destination
    eject_unmovable_isos: bool | None = None  # empty a DVD drive whose ISO cannot go, on the destination's copy


@dataclass
class MigrationPage:
    items: list[MigrationRecord]
    next_cursor: str | None = None  # pass as ?cursor= for the next page; null: this is the last


class PairLimit(msgspec.Struct):
    source: str
    destination: str
    rate: str | int  # bytes/s, or with K/M/G (powers of 1000); 0 removes the limit


class ThrottleIn(msgspec.Struct):
    global_: str | int | None = msgspec.field(default=None, name="global")
    pairs: list[PairLimit] = msgspec.field(default_factory=list)


@dataclass
class Health:
    status: str


PROBLEMS = {
    400: "the request is malformed (a field, a parameter, a cursor)",
    401: "no valid bearer token",
    403: "the token lacks the scope",
    429: "the token is over its request rate (Retry-After says when to retry)",
    404: "no such migration (or host)",
    409: "a conflict: an Idempotency-Key reused, a cancel too late",
    422: "refused: the CLI's one-line reason is the detail",
    503: "Redis cannot be reached",
}


def problems_doc(*codes: int) -> dict[int, ResponseSpec]:
    """The problem responses a route may give, for the OpenAPI document."""
    return {c: ResponseSpec(data_container=ProblemDetails, media_type=problems.MEDIA_TYPE,
                            description=PROBLEMS[c], generate_examples=False)
            for c in (400, 401, 403, 429, 503, *codes)}


def threaded(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` run in a worker thread, as an async handler of the same signature. Litestar's own
    sync_to_thread wraps a handler twice when two methods share a path (a coroutine then comes
    back as the response), so the handlers that block are made async here once."""
    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    return run


async def require_scope(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Who the caller is (401), whether its token has the route's scope (403), and whether it
    is within its request rate (429: producer.api.ratelimit, shared by every API process)."""
    needed = handler.opt.get("scope")
    if needed is None:
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    state = connection.app.state
    caller = state.tokens.caller(token.strip()) if scheme.lower() == "bearer" and token else None
    if caller is None:
        raise Problem(401, "unauthorized", "Unauthorized",
                      "a valid bearer token is needed (Authorization: Bearer <token>)",
                      {"WWW-Authenticate": 'Bearer realm="quickmig"'})
    if not caller.may(needed):
        raise Problem(403, "forbidden", "Forbidden", f"token {caller.name!r} has no {needed!r} scope")
    limit = caller.rate_per_minute or state.rate_per_minute
    verdict = await state.rate_limit.admit(caller.name, limit)
    if not verdict.admitted:
        wait = verdict.retry_after_s
        raise Problem(429, "too-many-requests", "Too many requests",
                      f"token {caller.name!r} is over its {limit} requests per minute; retry in {wait} s",
                      {"Retry-After": str(wait)})
    connection.state.caller = caller


def _producer(state: State) -> Producer:
    return state.producer


def _caller(request: Request) -> auth.Caller:
    return request.state.caller


@get("/healthz", sync_to_thread=False, opt={}, security=[{}])
def healthz() -> Health:
    """The process is up (no token needed; says nothing of Redis)."""
    return Health("ok")


@get("/readyz", security=[{}], responses={503: problems_doc()[503]})
@threaded
def readyz(state: State) -> Health:
    """Redis answers: the API can take requests (no token needed)."""
    _producer(state).store.r.ping()
    return Health("ready")


@post("/v1/migrations", opt={"scope": "migrate"}, status_code=201, responses={
    200: ResponseSpec(data_container=MigrationRecord, generate_examples=False,
                      description="the migration an earlier request with this Idempotency-Key and body made"),
    **problems_doc(409, 422)})
@threaded
def create_migration(request: Request, state: State, data: MigrationIn,
                     idempotency_key: Annotated[str | None, Parameter(
                         header="Idempotency-Key", default=None, min_length=1, max_length=255,
                         description="the same key and body return the same migration (200); "
                                     "the same key with another body is refused (409)")]
                     ) -> Response[MigrationRecord]:
    """Validate and enqueue a migration, as `quickmig migrate` does; a refusal is a 422 whose
    `detail` is the CLI's one-line reason."""
    req = _request_of(data)
    p, who = _producer(state), _caller(request).name
    try:
        if idempotency_key is None:
            rec, new = p.enqueue(req, requester=who), True
        else:
            rec, new = p.enqueue_once(req, idempotency_key, who, requester=who)
    except QuickmigError as e:
        audit.info("token=%s create vm=%s source=%s destination=%s refused: %s", who, data.vm, data.source,
                   data.destination, e)
        raise
    audit.info("token=%s create vm=%s source=%s destination=%s -> migration %s%s", who, data.vm, data.source,
               data.destination, rec["id"], "" if new else " (Idempotency-Key replay)")
    return Response(rec, status_code=201 if new else 200, headers={"Location": f"/v1/migrations/{rec['id']}"})


@post("/v1/migrations:dry-run", opt={"scope": "read"}, status_code=200, responses=problems_doc(422))
@threaded
def dry_run_migration(state: State, data: MigrationIn) -> dict[str, Any]:
    """What POST /v1/migrations with this body would do and cost, changing nothing (no
    checkpoint, no lease, no record): the file plan (each file, its bytes, where it lands), the
    switch map, the pre-flight's problems (`preflight.ok` false: the migration would be refused
    by them), the bytes to copy, and the copy time and downtime predicted from the rates
    measured on these hosts (`rates.measured` names those measured; the others are defaults).
    A request the CLI would refuse outright is a 422."""
    return _producer(state).dry_run(_request_of(data))


def _request_of(data: MigrationIn) -> MigrationRequest:
    raw = {k: getattr(data, k) for k in OPTIONS if getattr(data, k) is not None}
    return MigrationRequest(data.vm, data.source, data.destination, raw)


@get("/v1/migrations/{mid:str}", opt={"scope": "read"}, responses=problems_doc(404))
@threaded
def get_migration(state: State, mid: str) -> MigrationRecord:
    """One migration's record, as `quickmig status --json` prints it (with `waiting` while it waits)."""
    p = _producer(state)
    return p.note_waiting([p.get(mid)])[0]


@get("/v1/migrations", opt={"scope": "read"}, responses=problems_doc())
@threaded
def list_migrations(state: State,
                    state_: Annotated[str | None, Parameter(query="state", default=None,
                                                            description="only migrations in this state")],
                    vm: str | None = None,
                    host: Annotated[str | None, Parameter(default=None,
                                                          description="only those from or to this host")] = None,
                    limit: Annotated[int, Parameter(ge=1, le=PAGE_MAX, default=50)] = 50,
                    cursor: Annotated[str | None, Parameter(
                        default=None, pattern=CURSOR_PATTERN,
                        description="next_cursor of the page before")] = None) -> MigrationPage:
    """Migrations newest first, filtered; `next_cursor` continues the list."""
    if state_ is not None and state_ not in states.ACTIVE and state_ not in states.ENDS:
        known = ", ".join(states.ACTIVE + tuple(sorted(states.ENDS)))
        raise Refused(400, "bad-request", "Bad request", f"state {state_!r} is not a state (states: {known})")
    try:
        items, nxt = _producer(state).page(limit=limit, cursor=cursor, state=state_, vm=vm, host=host)
    except RequestError as e:
        raise Refused(400, "bad-request", "Bad request", str(e)) from None
    return MigrationPage(items, nxt)


@post("/v1/migrations/{mid:str}/cancel", opt={"scope": "migrate"}, status_code=200,
      responses=problems_doc(404, 409))
@threaded
def cancel_migration(request: Request, state: State, mid: str) -> MigrationRecord:
    """Roll a migration back before its downtime, as `quickmig cancel`; 409 once it is too late, saying why."""
    p = _producer(state)
    p.get(mid)  # an unknown id is a 404, not a refused cancel
    who = _caller(request).name
    try:
        rec = p.cancel(mid, requester=who)
    except RequestError as e:
        audit.info("token=%s cancel %s refused: %s", who, mid, e)
        raise Refused(409, "cancel-refused", "Cancel refused", str(e)) from None
    audit.info("token=%s cancel %s -> rolling back", who, mid)
    return rec


def _plan_of(state: State, data: dict[str, Any]) -> plan_file.Plan:
    return plan_file.from_data(data, source="the plan", hosts=_producer(state).cfg.hosts)


@post("/v1/plans:dry-run", opt={"scope": "read"}, status_code=200, responses=problems_doc(422))
@threaded
def dry_run_plan(state: State, data: dict[str, Any]) -> dict[str, Any]:
    """What `quickmig plan dry-run` prints with --json, for a plan given as JSON (the grammar of
    docs/plan.schema.json): every member's pre-flight and the predicted schedule, changing
    nothing. A plan the CLI would refuse is a 422 naming the bad field's path."""
    return plans.dry_run(_producer(state), _plan_of(state, data))


@post("/v1/plans", opt={"scope": "migrate"}, status_code=201, responses=problems_doc(422))
@threaded
def create_plan(request: Request, state: State, data: dict[str, Any]) -> Response[dict[str, Any]]:
    """Check every member and start the plan, as `quickmig plan apply`; its status, as GET
    /v1/plans/{id} gives it. A member whose pre-flight would fail refuses the plan (422)."""
    who = _caller(request).name
    try:
        st = plans.apply(_producer(state), _plan_of(state, data), requester=who)
    except QuickmigError as e:
        audit.info("token=%s plan refused: %s", who, e)
        raise
    audit.info("token=%s plan %s -> plan %s", who, st["name"], st["id"])
    return Response(st, status_code=201, headers={"Location": f"/v1/plans/{st['id']}"})


@get("/v1/plans/{pid:str}", opt={"scope": "read"}, responses=problems_doc(404))
@threaded
def get_plan(state: State, pid: str) -> dict[str, Any]:
    """A plan, each member's state and migration, and while it runs its live ETA (`eta`)."""
    return plans.status(_producer(state), pid)


@post("/v1/plans/{pid:str}/cancel", opt={"scope": "migrate"}, status_code=200, responses=problems_doc(404, 409))
@threaded
def cancel_plan(request: Request, state: State, pid: str) -> dict[str, Any]:
    """Release no more members and cancel those before their downtime, as `quickmig plan cancel`;
    409 once the plan has ended."""
    p, who = _producer(state), _caller(request).name
    plans.load(p, pid)  # an unknown id is a 404
    try:
        st = plans.cancel(p, pid, requester=who)
    except RequestError as e:
        audit.info("token=%s plan cancel %s refused: %s", who, pid, e)
        raise Refused(409, "cancel-refused", "Cancel refused", str(e)) from None
    audit.info("token=%s plan cancel %s -> %s", who, pid, st["state"])
    return st


@get("/v1/hosts", opt={"scope": "read"}, responses=problems_doc())
@threaded
def list_hosts(state: State,
               health: Annotated[bool, Parameter(default=False, description=(
                   "also ask each host (WinRM, one look-up per storage folder), cached for max_age"))] = False,
               max_age: Annotated[float, Parameter(ge=0, le=3600, default=HEALTH_MAX_AGE_S, description=(
                   "with health: seconds a cached answer may be old (0: ask now)"))] = HEALTH_MAX_AGE_S
               ) -> dict[str, Any]:
    """The inventory: per host, migrations now and its max_migrations, copies reading from and
    writing to it now and its max_copies (copy slots); with `health`, whether it answers over
    WinRM and the free space of each storage folder (`health.checked_at`, `health.age_seconds`)."""
    p = _producer(state)
    hosts = [{"name": name, **load} for name, load in p.host_load().items()]
    if health:
        cache: dict = state.host_health
        now = time.time()
        stale = [h["name"] for h in hosts if h["name"] not in cache or now - cache[h["name"]]["checked_at"] > max_age]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(stale) or 1)) as pool:
            for name, got in zip(stale, pool.map(p.host_health, stale), strict=True):
                cache[name] = got
        for h in hosts:
            got = cache[h["name"]]
            h["health"] = {**got, "age_seconds": round(max(0.0, time.time() - got["checked_at"]), 3)}
    return {"hosts": hosts}


@get("/v1/hosts/{host:str}/vms", opt={"scope": "read"}, responses={
    **problems_doc(404), 502: ResponseSpec(data_container=ProblemDetails, media_type=problems.MEDIA_TYPE,
                                           description="the host did not answer", generate_examples=False)})
@threaded
def host_vms(state: State, host: str,
             max_age: Annotated[float, Parameter(ge=0, le=3600, default=VMS_MAX_AGE_S, description=(
                 "seconds a cached list may be old (0: ask the host now)"))] = VMS_MAX_AGE_S) -> dict[str, Any]:
    """The VMs on a host (id, name, state) from Hyper-V's Get-VM, cached: `fetched_at` and
    `age_seconds` say how old the list is."""
    p = _producer(state)
    if host not in p.cfg.hosts:
        raise Refused(404, "not-found", "No such host",
                      f"unknown host {host!r} (inventory has: {', '.join(sorted(p.cfg.hosts))})")
    cache: dict = state.vm_lists
    now = time.time()
    hit = cache.get(host)
    if hit is None or now - hit[0] > max_age:
        hit = (time.time(), p.host_vms(host))
        cache[host] = hit
    return {"host": host, "vms": hit[1], "fetched_at": hit[0], "age_seconds": round(max(0.0, now - hit[0]), 3)}


@get("/v1/throttle", opt={"scope": "read"}, responses=problems_doc())
@threaded
def get_throttle(state: State) -> dict[str, Any]:
    """Copy bandwidth limits in bytes/s: {"global": n or null, "pairs": {"SRC->DST": n}}."""
    return Throttle(_producer(state).store.r).limits()


@put("/v1/throttle", opt={"scope": "admin"}, responses=problems_doc(422))
@threaded
def set_throttle(request: Request, state: State, data: ThrottleIn) -> dict[str, Any]:
    """Change copy bandwidth limits, as `quickmig throttle`; every value is checked before any changes."""
    p = _producer(state)
    t = Throttle(p.store.r)
    global_rate = parse_rate(str(data.global_)) if data.global_ is not None else None
    pairs = [((x.source, x.destination), parse_rate(str(x.rate))) for x in data.pairs]
    for (src, dst), _rate in pairs:
        p.cfg.host(src), p.cfg.host(dst)
    if global_rate is not None:
        t.set(global_rate)
    for pair, rate in pairs:
        t.set(rate, pair=pair)
    limits = t.limits()
    audit.info("token=%s throttle set -> %s", _caller(request).name, limits)
    return limits


@get("/v1/events", opt={"scope": "read"}, responses=problems_doc())
async def get_events(state: State,
                     last_event_id: Annotated[str | None, Parameter(
                         header="Last-Event-ID", default=None,
                         description="resume after this event (an SSE client sends it on reconnecting)")],
                     after: Annotated[str | None, Parameter(
                         default=None, description="as Last-Event-ID, for clients that cannot set it; 0: "
                                                   "every event still kept")] = None,
                     migration: Annotated[str | None, Parameter(
                         default=None, description="only this migration's events")] = None) -> ServerSentEvent:
    """Server-Sent Events, one `state` event per state change of any migration (data: JSON with
    id, vm, source, destination, old, new, at, seq, by), resumable with Last-Event-ID."""
    start = last_event_id if last_event_id is not None else after
    if start is not None and not events.STREAM_ID.match(start):
        raise Refused(400, "bad-request", "Bad request", f"{start!r} is not an event id (such as 1700000000000-0)")
    r: aioredis.Redis = state.aioredis
    return ServerSentEvent(events.stream(r, await events.start_after(r, start), migration))


@get("/openapi.json", sync_to_thread=False, include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()


def create_app(cfg: config_mod.Config | None = None) -> Litestar:
    cfg = cfg or config_mod.load_config()
    tokens = auth.Tokens(cfg.credentials_file)
    producer = Producer(cfg)

    r = cfg.async_redis_client(decode_responses=True, socket_timeout=60, socket_connect_timeout=10)

    async def close_redis(app: Litestar) -> None:
        await app.state.aioredis.aclose()

    return Litestar(
        [healthz, readyz, create_migration, dry_run_migration, get_migration, list_migrations, cancel_migration,
         dry_run_plan, create_plan, get_plan, cancel_plan, list_hosts, host_vms, get_throttle, set_throttle,
         get_events, openapi],
        guards=[require_scope],
        exception_handlers=problems.HANDLERS,
        state=State({"producer": producer, "tokens": tokens, "rate_per_minute": cfg.api.rate_per_minute,
                     "vm_lists": {}, "host_health": {}, "aioredis": r, "rate_limit": RateLimit(r)}),
        on_shutdown=[close_redis],
        openapi_config=OpenAPIConfig(
            title="quickmig", version=VERSION, path="/schema",
            description="Quick Migration of running Hyper-V VMs between hosts. Errors are " + PROBLEM_RESPONSES,
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}]),
        debug=False,
    )
