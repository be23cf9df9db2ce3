"""A real Prometheus scrapes the lab while migrations run: every PromQL expression of
the dashboard and the alert rules evaluates, and the main panels have data."""
import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import processes
from lab.ports import free_port

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "quickmig.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "quickmig.json"
# Grafana fills these in; any window that spans the test's migrations will do.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "10m", "$__interval": "15s"}
MAIN_PANELS = ("Migrations per hour by result", "Switchover (downtime) p50 / p95 / max", "Time per phase (mean)",
               "In progress by phase", "Queue depth per pool", "Copy throughput per host pair",
               "Task failures by reason")


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as e:  # 400 with a JSON body saying what is wrong
        return json.loads(e.read())


def wait_until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        out = fn()
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def prometheus(lab, tmp_path):
    exe = shutil.which("prometheus")
    assert exe, "prometheus not found: install the Debian package `prometheus` (dev.sh does)"
    endpoints = json.loads((lab.dir / "endpoints.json").read_text())
    conf = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "quickmig-fleet",
                            "static_configs": [{"targets": [e["target"] for e in endpoints["metrics"]]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(conf))  # JSON is YAML
    port = free_port()
    entry = processes.spawn([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log")
    base = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200
        except OSError:
            if not processes.alive(entry):
                raise RuntimeError((tmp_path / "prometheus.log").read_text()[-2000:]) from None
            return False
    try:
        wait_until(ready, 60, "prometheus ready")
        wait_until(lambda: query(base, 'up{job="quickmig-fleet"} == 1')["data"]["result"], 30, "first scrape")
        yield base
    finally:
        processes.stop(entry)


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        for t in p["targets"]:
            expr = t["expr"]
            for var, val in GRAFANA_VARS.items():
                expr = expr.replace(var, val)
            out.append((p["title"], expr))
    return out


def alert_names() -> list[str]:
    return re.findall(r"- alert: (\w+)", RULES.read_text())


def test_dashboard_and_rules_evaluate_on_a_real_prometheus_scraping_the_lab(lab, prometheus):
    for i in range(3):
        lab.add_vm(f"prom-{i}", "hv1")
    lab.add_vm("prom-rb", "hv1")
    lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(lab.cli_json, "migrate", f"prom-{i}", "--from", "hv1", "--to", "hv2",
                                "--wait", "--json", "--timeout", "240") for i in range(3)]
            runs.append(pool.submit(lab.cli_json, "migrate", "prom-rb", "--from", "hv1", "--to", "hv3",
                                    "--wait", "--json", "--timeout", "240"))
            recs = [f.result()[1] for f in runs]
    finally:
        lab.emulator("hv3").clear_faults()
    assert [r["state"] for r in recs] == ["completed"] * 3 + ["rolled_back"], [r["error"] for r in recs]

    # Prometheus saw them in progress, and has scraped the final counts
    seen = query(prometheus, "max_over_time(sum(quickmig_migrations_in_progress)[10m:1s])")
    assert float(seen["data"]["result"][0]["value"][1]) >= 1, seen
    wait_until(lambda: query(prometheus, 'quickmig_rollback_seconds_count > 0')["data"]["result"], 30,
               "the rollback to be scraped")

    failures = []
    empty = []
    for title, expr in dashboard_exprs():
        out = query(prometheus, expr)
        if out["status"] != "success":
            failures.append((title, expr, out.get("error")))
        elif title in MAIN_PANELS and not out["data"]["result"]:
            empty.append((title, expr))
    assert not failures, failures
    assert not empty, empty
    p50_expr = next(e for t, e in dashboard_exprs() if t.startswith("Switchover") and "0.5," in e)
    p50 = query(prometheus, p50_expr)
    assert 0 < float(p50["data"]["result"][0]["value"][1]) < 60

    # the server evaluated every rule (expressions included) without error
    names = alert_names()

    def rules_evaluated():
        groups = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10).read())
        rules = [r for g in groups["data"]["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("2") and
                            not r["lastEvaluation"].startswith("0001") for r in rules) else None
    rules = wait_until(rules_evaluated, 30, "rules evaluated")
    assert sorted(r["name"] for r in rules) == sorted(names)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    for r in rules:
        out = query(prometheus, r["query"])
        assert out["status"] == "success", (r["name"], out.get("error"))
    # a lab whose every pool runs a worker has no pool without one
    assert not [r for r in rules if r["name"] == "QuickmigPoolWithoutWorker" and r["state"] != "inactive"]
