"""Which worker pools have a live worker: each worker's main process beats into Redis.

The metrics exporter counts, per pool, the workers whose last beat is recent; the alert
"a pool with no live worker" reads that. A worker that stops cleanly leaves at once; one
that dies stops beating and drops out after WORKER_ALIVE_S.
"""
from __future__ import annotations

import logging
import threading
import time

from workers.model import keys

log = logging.getLogger("quickmig.liveness")

_stop = threading.Event()


def beat(r, node: str, pools: list[str], now: float | None = None) -> None:
    now = time.time() if now is None else now
    with r.pipeline() as p:
        for pool in pools:
            p.zadd(keys.workers(pool), {node: now})
            p.zremrangebyscore(keys.workers(pool), "-inf", now - 10 * keys.WORKER_ALIVE_S)
        p.execute()


def leave(r, node: str, pools: list[str]) -> None:
    with r.pipeline() as p:
        for pool in pools:
            p.zrem(keys.workers(pool), node)
        p.execute()


def alive(r, pool: str, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return r.zcount(keys.workers(pool), now - keys.WORKER_ALIVE_S, "+inf")


def start(redis_factory, node: str, pools: list[str]) -> threading.Thread:
    """Beat every WORKER_HEARTBEAT_EVERY_S from a daemon thread until stop()."""
    _stop.clear()

    def run():
        r = redis_factory()
        while True:
            try:
                beat(r, node, pools)
            except Exception as e:  # noqa: BLE001 - a Redis hiccup must not kill the worker
                log.warning("heartbeat to Redis failed: %s", e)
            if _stop.wait(keys.WORKER_HEARTBEAT_EVERY_S):
                break
        try:
            leave(r, node, pools)
        except Exception:  # noqa: BLE001 - dropping out after WORKER_ALIVE_S is the fallback
            pass

    t = threading.Thread(target=run, name="quickmig-liveness", daemon=True)
    t.start()
    return t


def stop(thread: threading.Thread | None, timeout_s: float = 5) -> None:
    _stop.set()
    if thread is not None:
        thread.join(timeout_s)
