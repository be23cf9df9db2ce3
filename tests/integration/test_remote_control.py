"""Celery remote control against the lab's real workers: the read-only inspections answer,
the commands that act (shutdown, rate_limit, pool_restart ...) are refused and change
nothing, whoever publishes them to Redis."""
import subprocess
import sys

import pytest
from celery import Celery

pytestmark = pytest.mark.integration


def test_workers_answer_inspections_and_refuse_commands_that_act(lab):
    client = Celery("outsider", broker=lab.cfg.redis_url)  # anyone with write access to Redis
    before = sorted(node for r in client.control.ping(timeout=3) for node in r)
    assert len(before) >= 3, before  # the snapshot, copy and cutover pools
    for command, arguments in (("shutdown", {}), ("rate_limit", {"task_name": "quickmig.copy", "rate_limit": "1/h"}),
                               ("pool_shrink", {"n": 1}), ("conf", {}), ("cancel_consumer", {"queue": "copy"})):
        replies = client.control.broadcast(command, arguments=arguments, reply=True, timeout=3)
        assert replies and all("error" in r[node] for r in replies for node in r), (command, replies)
    assert sorted(node for r in client.control.ping(timeout=3) for node in r) == before  # all still there
    queues = client.control.inspect(timeout=3).active_queues()
    assert {q["name"] for qs in queues.values() for q in qs} >= {"snapshot", "copy", "cutover"}
    res = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.engine.app:app", "inspect", "ping",
                          "--timeout", "3"], env=lab.env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.count("pong") >= 3, res.stdout + res.stderr
