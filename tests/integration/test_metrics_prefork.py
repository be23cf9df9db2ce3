"""Counters stay exact when many prefork children (and their replacements) count.

A worker of its own with 4 children that are replaced every few tasks serves all three
queues from a Redis database of its own, against the lab's hosts; the node exporter
merges the children's files and the scrape must equal what the records say.
"""
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import processes
from lab.ports import free_port

pytestmark = pytest.mark.integration

N = 8


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def own_worker(lab, tmp_path):
    """Config on Redis db 1 (own queues and records), one 4-child worker, one exporter."""
    cfg_text = (lab.dir / "quickmig.toml").read_text()
    db0 = lab.cfg.redis_url
    assert db0.endswith("/0")
    cfg_text = cfg_text.replace(db0, db0[:-2] + "/1")
    cfg_text = cfg_text.replace('credentials_file = "credentials.toml"',
                                f'credentials_file = "{lab.dir / "credentials.toml"}"')
    conf = tmp_path / "quickmig.toml"
    conf.write_text(cfg_text)
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    env = dict(os.environ, QUICKMIG_CONFIG=str(conf), PROMETHEUS_MULTIPROC_DIR=str(mdir))
    port = free_port()
    worker = processes.spawn([sys.executable, "-m", "celery", "-A", "workers.engine.app:app", "worker",
                              "-Q", "snapshot,copy,cutover", "-n", f"prefork@test-{port}", "-c", "4",
                              "--max-tasks-per-child", "3", "--loglevel", "INFO"],
                             tmp_path / "worker.log", env=env, cwd=tmp_path)
    exporter = processes.spawn([sys.executable, "-m", "producer.cli", "metrics-exporter", "--port", str(port)],
                               tmp_path / "exporter.log", env=env)
    try:
        processes.wait_for_log(tmp_path / "worker.log", " ready.", 90, worker)
        yield {"config": conf, "env": env, "url": f"http://127.0.0.1:{port}/metrics", "dir": mdir}
    finally:
        processes.stop(worker)
        processes.stop(exporter)


def test_n_migrations_over_4_replaced_children_scrape_as_exactly_n(lab, own_worker):
    env = own_worker["env"]
    for i in range(N):
        lab.add_vm(f"prefork-{i}", "hv1")
    ids = []
    for i in range(N):
        res = subprocess.run([sys.executable, "-m", "producer.cli", "migrate", f"prefork-{i}",
                              "--from", "hv1", "--to", "hv3"], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        ids.append(res.stdout.strip())
    from workers.model.record import Store
    store = Store.from_url(lab.cfg.redis_url[:-2] + "/1")
    deadline = time.monotonic() + 240
    while True:
        recs = [store.get(i) for i in ids]
        if all(r["state"] in ("completed", "rolled_back", "failed") for r in recs):
            break
        assert time.monotonic() < deadline, [r["state"] for r in recs]
        time.sleep(0.5)
    assert [r["state"] for r in recs] == ["completed"] * N, [r["error"] for r in recs]

    # 5 tasks per migration, children replaced every 3: many processes counted
    pids = {f.split("_")[-1].split(".")[0] for f in os.listdir(own_worker["dir"])}
    assert len(pids) >= 4, pids

    m = scrape(own_worker["url"])
    assert m[("quickmig_migrations_total", (("result", "completed"),))] == N
    for phase in ("snapshot", "copy", "prepare", "cutover", "finish"):
        assert m[("quickmig_phase_duration_seconds_count", (("phase", phase),))] == N, phase
    assert m[("quickmig_switchover_seconds_count", ())] == N
    assert m[("quickmig_switchover_seconds_sum", ())] == pytest.approx(
        sum(r["downtime_seconds"] for r in recs), rel=0.01, abs=0.01)
    assert m[("quickmig_copied_bytes_total", (("destination", "hv3"), ("source", "hv1")))] == \
        sum(r["bytes_copied"] for r in recs)
    assert not any(name == "quickmig_task_failures_total" for name, _ in m), m
    # a node exporter without --fleet does not serve the fleet's gauges (one place only)
    assert not any(name == "quickmig_queue_depth" for name, _ in m)
