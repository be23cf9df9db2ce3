"""Prometheus metrics, correct under prefork (DESIGN section 7).

Worker processes write to $PROMETHEUS_MULTIPROC_DIR (set and wiped by whoever starts
the node, before any worker starts); `serve` exposes the merged view on one endpoint
per node. Labels never name a VM or a migration.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess

# 0.1 s to 30 min: a switchover of a tiny VM on loopback up to a large VM on a slow link.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)

MIGRATIONS = Counter("quickmig_migrations_total", "Migrations that reached an end state, by result",
                     ["result"])
SWITCHOVER = Histogram("quickmig_switchover_seconds",
                       "Downtime: from Save-VM to the destination VM verified running",
                       buckets=DURATION_BUCKETS)
PHASE_DURATION = Histogram("quickmig_phase_duration_seconds", "Time spent in each phase",
                           ["phase"], buckets=DURATION_BUCKETS)
COPIED_BYTES = Counter("quickmig_copied_bytes_total", "Bytes copied and verified, by host pair",
                       ["source", "destination"])


def mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve the merged metrics of every worker process on this node; blocks."""
    import time
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=addr, registry=registry)
    while True:
        time.sleep(3600)
