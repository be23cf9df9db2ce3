"""The Prometheus config, alert rules and Grafana dashboard in deploy/ are valid, and
each alert fires on its condition (promtool's rule unit tests)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"


def promtool(*args) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install the Debian package `prometheus` (dev.sh does)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_prometheus_config():
    res = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_accepts_the_alert_rules():
    res = promtool("check", "rules", str(PROM / "rules" / "quickmig.rules.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "7 rules found" in res.stdout


def test_each_alert_fires_on_its_condition_and_not_before():
    res = promtool("test", "rules", str(PROM / "tests" / "quickmig.rules.test.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("alert", ["QuickmigSwitchoverOverTarget", "QuickmigMigrationStuck",
                                   "QuickmigFailureRateHigh", "QuickmigQueueBacklog",
                                   "QuickmigPoolWithoutWorker"])
def test_the_issue_s_alerts_exist(alert):
    assert f"alert: {alert}\n" in (PROM / "rules" / "quickmig.rules.yml").read_text()


def test_dashboard_panels_each_query_quickmig_metrics():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "quickmig.json").read_text())
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles))
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert "quickmig_" in t["expr"], p["title"]
