"""Fleet state read from Redis at scrape time: in progress by phase, queue depth, live
workers. Computed by one exporter from the source of truth, so no gauge is left behind
by a worker child that died, and no queue is counted once per node."""
from __future__ import annotations

import json
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from workers.model import keys, states
from workers.model.record import Store
from workers.model.routing import QUEUES
from workers.obs import liveness

# The states a plan can be in (workers.engine.plans), each exported even at 0; and how many
# of the newest plans a scrape reads.
PLAN_STATES = ("running", "completed", "failed", "stopped", "cancelled")
PLANS_SCRAPED = 1000

# Every active state maps to the phase label it is shown under; queued has no phase.
PHASES = ("queued",) + tuple(states.PHASE_OF[s] for s in states.ACTIVE if s in states.PHASE_OF)


def phase_of(rec: dict) -> str:
    return states.PHASE_OF.get(rec["state"], rec["state"])


def phase_age(rec: dict, now: float) -> float:
    """Seconds since the record entered its current state."""
    for h in reversed(rec.get("history", [])):
        if h.get("state") == rec["state"]:
            return max(0.0, now - h["at"])
    return max(0.0, now - rec.get("created_at", now))


class FleetCollector:
    def __init__(self, r):
        self.r = r

    def collect(self):
        up = GaugeMetricFamily("quickmig_fleet_redis_up", "1 if the exporter could read the fleet's state from Redis")
        in_progress = GaugeMetricFamily("quickmig_migrations_in_progress", "Migrations not yet ended, by phase",
                                        labels=["phase"])
        oldest = GaugeMetricFamily("quickmig_phase_oldest_age_seconds",
                                   "How long the longest-waiting active migration has been in each phase",
                                   labels=["phase"])
        depth = GaugeMetricFamily("quickmig_queue_depth", "Tasks waiting in each pool's queue", labels=["queue"])
        workers = GaugeMetricFamily("quickmig_workers_alive", "Workers with a recent heartbeat, by pool",
                                    labels=["pool"])
        plans = GaugeMetricFamily("quickmig_plans", f"Plans by state (running, or how they ended), of the newest "
                                  f"{PLANS_SCRAPED} still kept", labels=["state"])
        try:
            now = time.time()
            recs = Store(self.r).active()
            with self.r.pipeline(transaction=False) as p:
                for q in QUEUES:
                    p.llen(q)
                lengths = p.execute()
            alive = {q: liveness.alive(self.r, q, now) for q in QUEUES}
            gaps = webhook_gaps(self.r)
            plan_states = plans_by_state(self.r)
        except Exception:  # noqa: BLE001 - node metrics must still be served when Redis is away
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        counts = dict.fromkeys(PHASES, 0)
        ages = dict.fromkeys(PHASES, 0.0)
        for rec in recs:
            ph = phase_of(rec)
            counts[ph] = counts.get(ph, 0) + 1
            ages[ph] = max(ages.get(ph, 0.0), phase_age(rec, now))
        for ph in counts:
            in_progress.add_metric([ph], counts[ph])
            oldest.add_metric([ph], ages[ph])
        for q, n in zip(QUEUES, lengths, strict=True):
            depth.add_metric([q], n)
        for q, n in alive.items():
            workers.add_metric([q], n)
        lost = CounterMetricFamily("quickmig_webhook_event_gaps", "Times the events stream was trimmed past a "
                                   "webhook subscription's cursor (events it never delivered)",
                                   labels=["subscription"])
        for name, n in sorted(gaps.items()):
            lost.add_metric([name], n)
        for st, n in plan_states.items():
            plans.add_metric([st], n)
        yield from (up, in_progress, oldest, depth, workers, lost, plans)


def webhook_gaps(r) -> dict[str, int]:
    """Subscription -> the gaps its deliverer recorded (producer.webhooks, its stats hash)."""
    head, tail = keys.webhook("\0", "stats").split("\0")
    out = {}
    for k in r.scan_iter(match=keys.webhook("*", "stats"), count=500):
        n = r.hget(k, "gaps")
        if n is not None:
            out[k[len(head):-len(tail)]] = int(n)
    return out


def plans_by_state(r) -> dict[str, int]:
    ids = r.zrevrange(keys.PLANS_INDEX, 0, PLANS_SCRAPED - 1)
    counts = dict.fromkeys(PLAN_STATES, 0)
    for raw in (r.mget([keys.plan(i) for i in ids]) if ids else []):
        if raw is not None:
            st = json.loads(raw).get("state")
            counts[st] = counts.get(st, 0) + 1
    return counts
