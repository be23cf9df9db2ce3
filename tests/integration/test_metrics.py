"""The lab's scrape endpoint merges the counters of every prefork child correctly."""
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def scrape(lab) -> dict:
    port = lab.cfg.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_match_the_records_after_migrations_on_several_children(lab):
    for i in range(3):
        lab.add_vm(f"metrics-{i}", "hv1")
    for i in range(3):
        res, rec = lab.cli_json("migrate", f"metrics-{i}", "--from", "hv1", "--to", "hv2", "--wait", "--json")
        assert rec["state"] == "completed", rec["error"]
    res, recs = lab.cli_json("list", "--json", "--limit", "1000")
    by_result = {}
    for r in recs:
        if r["state"] in ("completed", "rolled_back", "failed"):
            by_result[r["state"]] = by_result.get(r["state"], 0) + 1
    m = scrape(lab)
    for result, n in by_result.items():
        assert m.get(("quickmig_migrations_total", (("result", result),))) == n, (result, m)
    switched = sum(1 for r in recs if r["state"] == "completed")
    assert m[("quickmig_switchover_seconds_count", ())] == switched
    assert m[("quickmig_switchover_seconds_bucket", (("le", "+Inf"),))] == switched
    assert m[("quickmig_switchover_seconds_sum", ())] == pytest.approx(
        sum(r["downtime_seconds"] for r in recs if r["state"] == "completed"), rel=0.05, abs=0.05)
