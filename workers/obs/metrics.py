"""Prometheus metrics, correct under prefork (docs/design.md section 7).

Two kinds, kept apart so that nothing is counted twice:
- Events (counters, histograms) happen in whichever worker child ran the step. They are
  written to $PROMETHEUS_MULTIPROC_DIR (set and wiped by whoever starts the node, before
  any worker starts) and the node's exporter merges every child's files.
- Fleet state (migrations in progress, queue depth, live workers) lives in Redis. The
  exporter started with `fleet=True` reads it at scrape time; run exactly one such
  exporter per fleet, or a sum over nodes would count each queue once per node.
Labels never name a VM or a migration.
"""
from __future__ import annotations

import os
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from workers.model import states
from workers.obs.fleet_metrics import FleetCollector

# 0.1 s to 30 min: a switchover of a tiny VM on loopback up to a large VM on a slow link.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)

MIGRATIONS = Counter("quickmig_migrations_total", "Migrations that reached an end state, by result",
                     ["result"])
SWITCHOVER = Histogram("quickmig_switchover_seconds",
                       "Downtime: from Save-VM to the destination VM verified running",
                       buckets=DURATION_BUCKETS)
# A histogram cannot say what the longest switchover was; the dashboard's "max" is
# max_over_time of this (exact unless two switchovers end within one scrape interval).
LAST_SWITCHOVER = Gauge("quickmig_switchover_last_seconds", "Downtime of the most recent switchover",
                        multiprocess_mode="mostrecent")
PREDICTED_SWITCHOVER = Histogram("quickmig_predicted_switchover_seconds",
                                 "Downtime predicted before Save-VM, for migrations that switched over",
                                 buckets=DURATION_BUCKETS)
GROUP_SWITCHOVER_SPAN = Histogram("quickmig_group_switchover_span_seconds",
                                  "A plan's together group that switched over: from its first Save-VM to its "
                                  "last start verified on the destination", buckets=DURATION_BUCKETS)
ORPHANS = Counter("quickmig_orphans_total",
                  "What the orphan sweep found a migration with no record had left on a host, and did",
                  ["kind", "action"])
ROLLBACK = Histogram("quickmig_rollback_seconds", "Time a rollback took, until the source VM ran again",
                     buckets=DURATION_BUCKETS)
PHASE_DURATION = Histogram("quickmig_phase_duration_seconds", "Time spent in each phase",
                           ["phase"], buckets=DURATION_BUCKETS)
COPIED_BYTES = Counter("quickmig_copied_bytes_total", "Bytes copied and verified, by host pair",
                       ["source", "destination"])
TASK_FAILURES = Counter("quickmig_task_failures_total",
                        "Failed task runs (retried or not), by task and exception type",
                        ["task", "reason"])


def init_labels() -> None:
    """Create every known label set at 0, so increase() sees a series' first event."""
    for result in states.ENDS:
        MIGRATIONS.labels(result=result)
    for phase in states.PHASE_OF.values():
        PHASE_DURATION.labels(phase=phase)


def observe_end(rec: dict) -> None:
    """Count a migration that just reached its end state `rec["state"]`."""
    MIGRATIONS.labels(result=rec["state"]).inc()
    for phase, span in rec.get("phases", {}).items():
        if "start" in span and "end" in span:
            PHASE_DURATION.labels(phase=phase).observe(span["end"] - span["start"])
    # Only a VM that reached the destination switched over; a rolled-back one was down
    # too, and that time is in its rollback_seconds and record, not in this histogram.
    switched = any(h.get("state") == "finishing" for h in rec.get("history", []))
    if switched and rec.get("downtime_seconds") is not None:
        SWITCHOVER.observe(rec["downtime_seconds"])
        LAST_SWITCHOVER.set(rec["downtime_seconds"])
        if rec.get("predicted_downtime_seconds") is not None:
            PREDICTED_SWITCHOVER.observe(rec["predicted_downtime_seconds"])
    if rec.get("rollback_seconds") is not None:
        ROLLBACK.observe(rec["rollback_seconds"])


def task_failed(task: str, exc: BaseException) -> None:
    # The exception's type, never its message: messages carry VM names and paths.
    TASK_FAILURES.labels(task=task, reason=type(exc).__name__).inc()


def mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def registry(*, fleet_redis=None) -> CollectorRegistry:
    """This node's merged worker metrics, plus the fleet's state when given its Redis."""
    reg = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(reg)
    if fleet_redis is not None:
        reg.register(FleetCollector(fleet_redis))
    return reg


def serve(port: int, addr: str = "127.0.0.1", *, fleet_redis=None) -> None:
    """Serve /metrics on addr:port; blocks."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and fleet_redis is None:
        raise ValueError("nothing to export: set PROMETHEUS_MULTIPROC_DIR or serve the fleet's state")
    start_http_server(port, addr=addr, registry=registry(fleet_redis=fleet_redis))
    while True:
        time.sleep(3600)
