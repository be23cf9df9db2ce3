"""The Celery app: one queue and one worker pool per kind of work (DESIGN section 6).

`celery -A workers worker -Q snapshot` (or copy, cutover) finds `app` here. The broker
URL comes from quickmig.toml (--config / $QUICKMIG_CONFIG / ./quickmig.toml); nothing
secret is ever put on a queue: messages carry the migration id only.
"""
from __future__ import annotations

import os

from celery import Celery, signals
from kombu import Queue

from workers import config as config_mod

QUEUES = ("snapshot", "copy", "cutover")

# Control steps (snapshot, prepare, finish) are short WinRM calls; copies may take hours
# and go alone on `copy`; whatever holds a VM down (cutover, rollback) has its own pool.
ROUTES = {
    "quickmig.snapshot": "snapshot",
    "quickmig.prepare": "snapshot",
    "quickmig.finish": "snapshot",
    "quickmig.copy": "copy",
    "quickmig.cutover": "cutover",
    "quickmig.rollback": "cutover",
    "quickmig.reconcile": "snapshot",
    "quickmig.reap_kept_sources": "snapshot",
}

# Above the longest single step (a copy of a large disk), or Redis redelivers it mid-run.
VISIBILITY_TIMEOUT_S = 12 * 3600

# How often beat asks for a reconciler pass (workers/reconciler.py); a pass that waits
# longer than a few periods in a backlog is stale, the next one will come.
RECONCILE_EVERY_S = 10

app = Celery("quickmig", include=["workers.snapshot", "workers.copy", "workers.cutover",
                                       "workers.reconciler", "workers.keep_source"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_queues=[Queue(q, routing_key=q) for q in QUEUES],
    task_default_queue="snapshot",
    task_routes={name: {"queue": q, "routing_key": q} for name, q in ROUTES.items()},
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    # run by `celery -A workers beat` (one beat per deployment)
    beat_schedule={
        "reconcile": {"task": "quickmig.reconcile", "schedule": RECONCILE_EVERY_S,
                      "options": {"expires": 3 * RECONCILE_EVERY_S}},
        # --keep-source: remove kept source VMs whose time is up
        "reap-kept-sources": {"task": "quickmig.reap_kept_sources", "schedule": 300.0},
    },
)


def configure(cfg: config_mod.Config) -> None:
    if app.conf.broker_url != cfg.redis_url and app._pool is not None:
        # a process that talks to a second deployment (tests with two labs) must not keep
        # publishing through the connections it made to the first
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.broker_url = cfg.redis_url


if os.environ.get(config_mod.CONFIG_ENV) or os.path.exists(config_mod.DEFAULT_CONFIG):
    try:
        configure(config_mod.load_config())
    except config_mod.ConfigError:
        pass  # the CLI reports config errors itself; a worker fails on first use


@signals.setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **_):
    # Connected, so Celery leaves logging to us: one handler whose lines carry mid and phase.
    from workers import logs
    logs.configure(loglevel or "INFO", logfile)


@signals.task_prerun.connect
def _bind_migration(task=None, args=None, **_):
    # Every line a quickmig task logs, its libraries' included, belongs to its migration.
    from workers import logs
    if task is not None and task.name.startswith("quickmig.") and args:
        logs.bind(str(args[0]), task.name.split(".")[-1])


@signals.task_postrun.connect
def _unbind_migration(**_):
    from workers import logs
    logs.clear()


@signals.worker_process_init.connect
def _after_fork(**_):
    # Connections made before the fork are not safe to share with the parent.
    from workers import context, metrics
    context.reset()
    metrics.init_labels()


@signals.worker_process_shutdown.connect
def _child_exit(pid=None, **_):
    from workers import metrics
    metrics.mark_dead(pid or os.getpid())


_liveness = None


@signals.worker_ready.connect
def _ready(sender=None, **_):
    # The main process beats for its pool; children come and go without touching it.
    global _liveness
    from workers import context, liveness
    if _liveness is not None and _liveness.is_alive():  # ready again after a broker reconnect
        return
    pools = [q.name for q in sender.task_consumer.queues]
    _liveness = liveness.start(context.new_redis, sender.hostname, pools)


@signals.worker_shutdown.connect
def _shutdown(**_):
    from workers import liveness
    if _liveness is not None:
        liveness.stop(_liveness)
