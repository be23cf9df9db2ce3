"""The fleet's gauges, read from a real Redis at collect time."""
import time

import pytest
import redis

from workers.model import keys
from workers.model.record import Store, new_record
from workers.obs import liveness
from workers.obs.fleet_metrics import FleetCollector

pytestmark = pytest.mark.integration


def collect(r) -> dict:
    out = {}
    for fam in FleetCollector(r).collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url[:-2] + "/3", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def test_queue_depth_is_the_length_of_each_pool_queue(r):
    r.lpush("copy", "a", "b", "c")
    r.lpush("cutover", "a")
    m = collect(r)
    assert m[("quickmig_queue_depth", (("queue", "copy"),))] == 3
    assert m[("quickmig_queue_depth", (("queue", "cutover"),))] == 1
    assert m[("quickmig_queue_depth", (("queue", "snapshot"),))] == 0


def test_in_progress_counts_active_records_by_phase_and_forgets_ended_ones(r):
    store = Store(r)
    recs = []
    for i in range(3):
        rec = new_record(vm=f"v{i}", vm_id=f"id-{i}", source="hv1", destination="hv2", fence=1)
        store.create(rec)
        recs.append(rec)
    store.transition(recs[0]["id"], {"queued"}, "snapshotting")
    store.transition(recs[0]["id"], {"snapshotting"}, "copying")
    store.update(recs[0]["id"], lambda x: x["history"][-1].update(at=time.time() - 500))
    store.transition(recs[1]["id"], {"queued"}, "snapshotting")
    m = collect(r)
    assert m[("quickmig_migrations_in_progress", (("phase", "copy"),))] == 1
    assert m[("quickmig_migrations_in_progress", (("phase", "snapshot"),))] == 1
    assert m[("quickmig_migrations_in_progress", (("phase", "queued"),))] == 1
    assert m[("quickmig_migrations_in_progress", (("phase", "cutover"),))] == 0
    assert m[("quickmig_phase_oldest_age_seconds", (("phase", "copy"),))] >= 500
    store.transition(recs[2]["id"], {"queued"}, "failed", error="x")
    m = collect(r)
    assert m[("quickmig_migrations_in_progress", (("phase", "queued"),))] == 0
    assert r.scard(keys.ACTIVE_SET) == 2


def test_a_pool_counts_only_workers_with_a_recent_heartbeat(r):
    now = time.time()
    liveness.beat(r, "copy@a", ["copy"], now=now)
    liveness.beat(r, "copy@b", ["copy"], now=now - keys.WORKER_ALIVE_S - 1)
    m = collect(r)
    assert m[("quickmig_workers_alive", (("pool", "copy"),))] == 1
    assert m[("quickmig_workers_alive", (("pool", "cutover"),))] == 0
    liveness.leave(r, "copy@a", ["copy"])
    assert collect(r)[("quickmig_workers_alive", (("pool", "copy"),))] == 0


def test_redis_away_is_reported_not_raised():
    m = collect(redis.Redis(port=1, socket_connect_timeout=0.5))
    assert m == {("quickmig_fleet_redis_up", ()): 0}
