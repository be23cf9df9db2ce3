"""The Celery app: one queue and one worker pool per kind of work (docs/design.md, "Celery and Redis").

`celery -A workers.engine.app:app worker -Q snapshot` (or copy, cutover) runs a pool;
`celery -A workers.engine.app:app beat` the schedule (one beat per deployment). The broker
URL comes from quickmig.toml (--config / $QUICKMIG_CONFIG / ./quickmig.toml); nothing
secret is ever put on a queue: messages carry the migration id only.
"""
from __future__ import annotations

import os
import ssl
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.worker.control import Panel
from kombu import Queue

from workers.model import config as config_mod
from workers.model import redis_endpoint, routing

# Above the longest single step (a copy of a large disk), or Redis redelivers it mid-run.
VISIBILITY_TIMEOUT_S = 12 * 3600

# How often beat asks for a reconciler pass (workers.engine.reconciler); a pass that waits
# longer than a few periods in a backlog is stale, the next one will come.
RECONCILE_EVERY_S = 10
# How often beat asks for the removal of kept source VMs whose time is up (--keep-source).
REAP_EVERY_S = 300.0

# The modules that define tasks, imported by each worker when it starts.
TASK_MODULES = [
    "workers.steps.snapshot",
    "workers.steps.copy",
    "workers.steps.prepare",
    "workers.steps.cutover",
    "workers.steps.rollback",
    "workers.steps.finish",
    "workers.steps.keep_source",
    "workers.steps.lookup",
    "workers.engine.reconciler",
    "workers.steps.orphans",
]

# The remote control commands a worker answers. Celery's mailbox is a Redis key anyone who
# can write to Redis can publish to, and its control commands act: `shutdown`,
# `pool_restart`, `revoke`/`terminate`, `rate_limit`, `time_limit`, `add_consumer`,
# `cancel_consumer`, `autoscale` and the pool sizes. quickmig itself sends none (it keeps
# its own liveness and cancels through the record), so the workers answer only the read-only
# inspections `celery inspect` uses (and `hello`, which workers exchange at start). `conf`
# and `report` are left out too: they return the settings, the broker URL among them.
# memdump, memsample and objgraph are costly diagnostics, left out as well.
REMOTE_CONTROL = ("ping", "stats", "active", "active_queues", "reserved", "scheduled", "registered",
                  "revoked", "query_task", "clock", "hello")


def _restrict_remote_control() -> None:
    for name in [n for n in Panel.data if n not in REMOTE_CONTROL]:
        del Panel.data[name]
        Panel.meta.pop(name, None)


_restrict_remote_control()

BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT_S}

app = Celery("quickmig", include=TASK_MODULES)
app.conf.update(
    # what each worker process does at its lifecycle points (logging, fork, liveness)
    imports=["workers.engine.signals"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_queues=[Queue(q, routing_key=q) for q in routing.QUEUES],
    task_default_queue=routing.QUEUE_SNAPSHOT,
    task_routes={name: {"queue": q, "routing_key": q} for name, q in routing.ROUTES.items()},
    broker_transport_options=BROKER_TRANSPORT_OPTIONS,
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    beat_schedule={
        "reconcile": {"task": routing.RECONCILE, "schedule": RECONCILE_EVERY_S,
                      "options": {"expires": 3 * RECONCILE_EVERY_S}},
        "reap-kept-sources": {"task": routing.REAP_KEPT_SOURCES, "schedule": REAP_EVERY_S},
    },
)


def _broker_tls(url: str) -> dict | None:
    """Celery's TLS settings for a rediss:// broker: the server's certificate always verified
    (kombu verifies only when the URL says so), against the CA the URL names if any, as
    the store's redis-py client does by default."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    tls: dict = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(key):
            tls[key] = query[key]
    return tls


def configure(cfg: config_mod.Config) -> None:
    url, sentinel_options, sentinel_tls = redis_endpoint.celery_broker(*cfg.redis_target())
    if app.conf.broker_url != url and app._pool is not None:
        # a process that talks to a second deployment (tests with two labs) must not keep
        # publishing through the connections it made to the first
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.broker_url = url
    app.conf.broker_use_ssl = sentinel_tls if sentinel_options else _broker_tls(url)
    app.conf.broker_transport_options = {**BROKER_TRANSPORT_OPTIONS, **sentinel_options}
    app.conf.beat_schedule = {**app.conf.beat_schedule, "sweep-orphans": {
        "task": routing.SWEEP_ORPHANS, "schedule": float(cfg.reconciler.orphan_sweep_every_s),
        "options": {"expires": float(cfg.reconciler.orphan_sweep_every_s)}}}


if os.environ.get(config_mod.CONFIG_ENV) or os.path.exists(config_mod.DEFAULT_CONFIG):
    try:
        configure(config_mod.load_config())
    except config_mod.ConfigError:
        pass  # the CLI reports config errors itself; a worker fails on first use
