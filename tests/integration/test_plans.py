"""Plans in the lab: `quickmig plan dry-run` runs every member's pre-flight against the
emulated hosts and predicts the schedule from the rates and phase times measured there."""
import json

import pytest

pytestmark = pytest.mark.integration

PLAN = """\
name: lab-plan
concurrency: 2
on_failure: continue
defaults:
  max_rounds: 1
groups:
  - name: db
    vms:
      - {vm: pl-db1, from: hv1, to: hv3}
      - {vm: pl-db2, from: hv1, to: hv2}
      - {vm: pl-ghost, from: hv2, to: hv3}
  - name: web
    after: [db]
    switchover: together
    vms:
      - {vm: pl-web1, from: hv1, to: hv3}
      - {vm: pl-web2, from: hv2, to: hv3}
"""


def hosts_vms(lab) -> dict:
    """Each emulated host's VMs, their states and checkpoints: what a dry run must leave as it is."""
    return {h: sorted((v["name"], v["state"], len(v["snapshots"])) for v in lab.emulator(h).state()["vms"])
            for h in lab.cfg.hosts}


def test_plan_dry_run_predicts_each_member_in_group_order_from_measured_rates_and_changes_nothing(lab, tmp_path):
    for name, host, mb in (("pl-db1", "hv1", 24), ("pl-db2", "hv1", 16), ("pl-web1", "hv1", 16),
                           ("pl-web2", "hv2", 16), ("pl-measure", "hv1", 16)):
        lab.add_vm(name, host, write_rate_kbps=0, disk_mb=mb)
    # one migration from hv1 to hv3 measures that pair's rates and phase times
    res, measured = lab.cli_json("migrate", "pl-measure", "--from", "hv1", "--to", "hv3", "--wait", "--json")
    assert measured["state"] == "completed", measured
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    before, vms_before = lab.redis_state(), hosts_vms(lab)

    res, out = lab.cli_json("plan", "dry-run", str(plan), "--json")
    assert res.returncode == 0, res.stderr
    assert lab.redis_state() == before and hosts_vms(lab) == vms_before
    m = {r["vm"]: r for r in out["members"]}
    # every member's pre-flight ran: the one that is not there is reported, not scheduled
    assert m["pl-ghost"]["preflight"]["ok"] is False and "predicted" not in m["pl-ghost"]
    assert "pl-ghost" in m["pl-ghost"]["preflight"]["problems"][0]
    assert any(p.startswith("db/pl-ghost: pre-flight:") for p in out["problems"])
    ok = [m[v] for v in ("pl-db1", "pl-db2", "pl-web1", "pl-web2")]
    assert all(r["preflight"] == {"ok": True, "problems": []} for r in ok)
    assert m["pl-db1"]["copy_bytes"] >= 24 * 2**20 and m["pl-db2"]["copy_bytes"] >= 16 * 2**20
    # hv1 -> hv3 predicts from what pl-measure measured; hv1 -> hv2 from the defaults unless measured
    assert m["pl-db1"]["rates"]["measured_by"] == measured["id"]
    assert m["pl-db1"]["phases"]["measured_by"] == measured["id"]
    assert m["pl-db1"]["phases"]["setup_s"] == pytest.approx(
        measured["phases"]["snapshot"]["end"] - measured["phases"]["snapshot"]["start"], abs=1e-3)
    pr = {v: m[v]["predicted"] for v in ("pl-db1", "pl-db2", "pl-web1", "pl-web2")}
    assert pr["pl-db1"]["copy_seconds"] == pytest.approx(
        m["pl-db1"]["copy_bytes"] / m["pl-db1"]["rates"]["copy_bps"], rel=0.01)
    # concurrency 2 and max_migrations 2 on hv1: both db members start at once; web only after db
    assert pr["pl-db1"]["start_s"] == pr["pl-db2"]["start_s"] == 0
    db_end = max(pr["pl-db1"]["finish_s"], pr["pl-db2"]["finish_s"])
    assert min(pr["pl-web1"]["start_s"], pr["pl-web2"]["start_s"]) == pytest.approx(db_end, abs=1e-3)
    # the together group cuts over at one moment
    assert pr["pl-web1"]["cutover_start_s"] == pr["pl-web2"]["cutover_start_s"]
    g = {x["name"]: x for x in out["groups"]}
    assert g["web"]["after"] == ["db"] and g["web"]["switchover_span_s"] > 0
    assert out["predicted_seconds"] == pytest.approx(g["web"]["finish_s"], abs=1e-3)
    assert out["predicted_seconds"] == pytest.approx(max(p["finish_s"] for p in pr.values()), abs=1e-3)

    text = lab.cli("plan", "dry-run", str(plan))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("plan lab-plan: 5 VMs in 2 groups, concurrency 2, on_failure continue; "
                                  "predicted finish ")
    assert "group web (together, after db)" in text.stdout and "refused:" in text.stdout
    assert lab.redis_state() == before


def test_a_bad_plan_file_is_one_line_naming_the_field_and_exit_2(lab, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"name": "p", "groups": [{"name": "g", "vms": [
        {"vm": "x", "from": "hv1", "to": "hv9"}]}]}, indent=2))
    before = lab.redis_state()
    res = lab.cli("plan", "dry-run", str(plan))
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (f"quickmig: {plan} line 10 (groups[0].vms[0].to): unknown host 'hv9' "
                          "(inventory has: hv1, hv2, hv3)\n")
    res = lab.cli("plan", "dry-run", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and res.stderr.startswith("quickmig: cannot read the plan file") \
        and "Traceback" not in res.stderr
    assert lab.redis_state() == before
