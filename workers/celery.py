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
    "quickmig.reap_kept_sources": "snapshot",
}

# Above the longest single step (a copy of a large disk), or Redis redelivers it mid-run.
VISIBILITY_TIMEOUT_S = 12 * 3600

app = Celery("quickmig", include=["workers.snapshot", "workers.copy", "workers.cutover", "workers.keep_source"])
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
)

# --keep-source: remove kept source VMs whose time is up (run by the lab's beat process).
app.conf.beat_schedule = dict(app.conf.beat_schedule or {}, **{
    "reap-kept-sources": {"task": "quickmig.reap_kept_sources", "schedule": 300.0},
})


def configure(cfg: config_mod.Config) -> None:
    app.conf.broker_url = cfg.redis_url


if os.environ.get(config_mod.CONFIG_ENV) or os.path.exists(config_mod.DEFAULT_CONFIG):
    try:
        configure(config_mod.load_config())
    except config_mod.ConfigError:
        pass  # the CLI reports config errors itself; a worker fails on first use


@signals.worker_process_init.connect
def _after_fork(**_):
    # Connections made before the fork are not safe to share with the parent.
    from workers import context
    context.reset()


@signals.worker_process_shutdown.connect
def _child_exit(pid=None, **_):
    from workers import metrics
    metrics.mark_dead(pid or os.getpid())
