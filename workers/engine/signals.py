"""What a worker process does at each point of its life, through Celery's signals.

Imported by the worker and by beat when they load the app's modules (`imports` in
workers.engine.app), before either sets up logging; a process that only sends tasks
(the producer) never imports it, nor what it needs (drivers, SMB, metrics).

- setup_logging: one quickmig handler whose lines carry the migration id and phase;
- task_prerun / task_postrun: bind the running task's migration to its log lines;
- worker_process_init: a forked child drops the parent's connections (Redis, WinRM, SMB)
  and creates its metric label sets;
- worker_process_shutdown: the child's metric files are marked dead;
- worker_ready / worker_shutdown: the main process beats for its pools into Redis
  (workers.obs.liveness) and leaves when it stops.
"""
from __future__ import annotations

import logging
import os
import threading

from celery import signals as celery_signals

from workers.engine import context
from workers.model import routing
from workers.obs import liveness, logs, metrics

log = logging.getLogger(__name__)

_liveness: threading.Thread | None = None


@celery_signals.setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **_) -> None:
    # Connected, so Celery leaves logging to us.
    logs.configure(loglevel or "INFO", logfile)


@celery_signals.task_prerun.connect
def _bind_migration(task=None, args=None, **_) -> None:
    # Every line a quickmig task logs, its libraries' included, belongs to its migration.
    if task is not None and task.name.startswith(routing.PREFIX) and args:
        logs.bind(str(args[0]), routing.short(task.name))


@celery_signals.task_postrun.connect
def _unbind_migration(**_) -> None:
    logs.clear()


@celery_signals.worker_process_init.connect
def _after_fork(**_) -> None:
    # Connections made before the fork are not safe to share with the parent.
    context.reset()
    metrics.init_labels()


@celery_signals.worker_process_shutdown.connect
def _child_exit(pid=None, **_) -> None:
    metrics.mark_dead(pid or os.getpid())


@celery_signals.worker_ready.connect
def _ready(sender=None, **_) -> None:
    # The main process beats for its pool; children come and go without touching it.
    global _liveness
    if _liveness is not None and _liveness.is_alive():  # ready again after a broker reconnect
        return
    pools = [q.name for q in sender.task_consumer.queues]
    for warning in context.config().warnings():  # e.g. a host on CredSSP: said once per start
        log.warning("%s", warning)
    _liveness = liveness.start(context.new_redis, sender.hostname, pools)


@celery_signals.worker_shutdown.connect
def _shutdown(**_) -> None:
    if _liveness is not None:
        liveness.stop(_liveness)

