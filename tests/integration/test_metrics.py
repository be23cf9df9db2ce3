"""The lab's scrape endpoint merges the counters of every prefork child correctly."""
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def scrape(lab) -> dict:
    port = lab.cfg.metrics.port
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
    switched = [r for r in recs if r["state"] in ("completed", "rolled_back", "failed")
                and any(h["state"] == "finishing" for h in r["history"])]
    assert m[("quickmig_switchover_seconds_count", ())] == len(switched)
    assert m[("quickmig_switchover_seconds_bucket", (("le", "+Inf"),))] == len(switched)
    assert m[("quickmig_switchover_seconds_sum", ())] == pytest.approx(
        sum(r["downtime_seconds"] for r in switched), rel=0.05, abs=0.05)
    rolled = [r for r in recs if r.get("rollback_seconds") is not None]
    assert m.get(("quickmig_rollback_seconds_count", ()), 0) == len(rolled)


def test_the_fleet_gauges_come_from_redis_and_endpoints_are_written(lab):
    import json
    endpoints = json.loads((lab.dir / "endpoints.json").read_text())
    assert [e["url"] for e in endpoints["metrics"]] == [f"http://127.0.0.1:{lab.cfg.metrics.port}/metrics"]
    r = lab.redis()
    m = scrape(lab)
    for pool in ("snapshot", "copy", "cutover"):
        assert ("quickmig_queue_depth", (("queue", pool),)) in m
    assert m[("quickmig_fleet_redis_up", ())] == 1
    for pool in ("snapshot", "copy", "cutover"):
        assert m[("quickmig_workers_alive", (("pool", pool),))] == 1, pool
    for phase in ("queued", "snapshot", "copy", "prepare", "cutover", "finish", "rollback"):
        assert ("quickmig_migrations_in_progress", (("phase", phase),)) in m
    # an active record counts under its phase, by reading the record at scrape time
    from workers.model.record import Store, new_record
    store = Store(r)
    rec = new_record(vm="ghost", vm_id="00000000-0000-0000-0000-0000000000aa", source="hv1",
                     destination="hv2", fence=0)
    before = m[("quickmig_migrations_in_progress", (("phase", "queued"),))]
    store.create(rec)
    try:
        assert scrape(lab)[("quickmig_migrations_in_progress", (("phase", "queued"),))] == before + 1
    finally:
        store.delete(rec["id"])
    assert scrape(lab)[("quickmig_migrations_in_progress", (("phase", "queued"),))] == before
