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


def _plan_file(tmp_path, text: str):
    f = tmp_path / "plan.yaml"
    f.write_text(text)
    return f


def _wait_plan(lab, pid: str, until, timeout_s: float = 240) -> dict:
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        res, st = lab.cli_json("plan", "status", pid, "--json")
        if until(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.3)


def test_plan_apply_runs_groups_in_after_order_within_its_concurrency_without_the_cli(lab, tmp_path):
    from lab.history import load_events, migration_spans
    from workers.coord import audit
    vms = {"pa-a1": "hv2", "pa-a2": "hv3", "pa-a3": "hv2", "pa-b1": "hv3", "pa-b2": "hv2"}
    ids = {name: lab.add_vm(name, "hv1", write_rate_kbps=32)["id"] for name in vms}
    plan = _plan_file(tmp_path, "name: two-groups\nconcurrency: 2\ngroups:\n"
                      "  - name: a\n    vms:\n"
                      + "".join(f"      - {{vm: {v}, from: hv1, to: {vms[v]}}}\n" for v in ("pa-a1", "pa-a2", "pa-a3"))
                      + "  - name: b\n    after: [a]\n    vms:\n"
                      + "".join(f"      - {{vm: {v}, from: hv1, to: {vms[v]}}}\n" for v in ("pa-b1", "pa-b2")))
    # the CLI applies the plan and exits: the workers carry it on
    res, st = lab.cli_json("plan", "apply", str(plan), "--json")
    assert res.returncode == 0, res.stderr
    assert st["state"] == "running" and st["eta"] is not None and st["eta"] > st["created_at"]
    assert sum(m["state"] != "pending" for g in st["groups"] for m in g["members"]) == 2  # concurrency 2
    pid = st["id"]
    st = _wait_plan(lab, pid, lambda s: s["state"] != "running")
    assert st["state"] == "completed", st
    assert st["counts"] == {"completed": 5} and st["eta"] is None
    # from the emulated hosts' own record: every b member began after every a member was over,
    # and never more than 2 of the plan's migrations were under way at once
    spans = {s["vm_id"]: s for s in migration_spans(load_events(lab.dir)) if s["vm_id"] in ids.values()}
    assert set(spans) == set(ids.values()) and not any(s["open"] for s in spans.values())
    a_end = max(spans[ids[v]]["end"] for v in ("pa-a1", "pa-a2", "pa-a3"))
    assert min(spans[ids[v]]["start"] for v in ("pa-b1", "pa-b2")) > a_end
    peak = audit.peak([(s["start"], "plan", v, True) for v, s in spans.items()]
                      + [(s["end"], "plan", v, False) for v, s in spans.items()])
    assert peak["plan"] == 2
    for name, dst in vms.items():
        check = lab.verify(name)
        assert check["running_on"] == [dst] and check["integrity"] == "ok", (name, check)
    res = lab.cli("plan", "status", "nope")
    assert res.returncode == 2 and res.stderr == "quickmig: no plan with id 'nope'\n"
    # the watch of an ended plan shows it once and says how it ended
    res = lab.cli("watch", "--plan", pid, "--interval", "0.2")
    assert res.returncode == 0, res.stderr
    assert f"plan {pid} (two-groups): completed; 5 completed" in res.stdout
    assert "group b after a:" in res.stdout
    res = lab.cli("watch", "--plan", "nope")
    assert res.returncode == 2 and res.stderr == "quickmig: no plan with id 'nope'\n"
    # the fleet exporter counts plans by state
    from workers.obs.fleet_metrics import FleetCollector
    fams = {f.name: f for f in FleetCollector(lab.redis()).collect()}
    by_state = {s.labels["state"]: s.value for s in fams["quickmig_plans"].samples}
    assert by_state["completed"] >= 1 and set(by_state) >= {"running", "failed", "stopped", "cancelled"}


def test_a_plan_cancelled_in_the_middle_rolls_back_its_running_member_and_releases_no_more(lab, tmp_path):
    names = ["pc-1", "pc-2", "pc-3"]
    for n in names:
        lab.add_vm(n, "hv2", write_rate_kbps=32)
    plan = _plan_file(tmp_path, "name: cancel-me\nconcurrency: 1\ngroups:\n  - name: g\n    vms:\n"
                      + "".join(f"      - {{vm: {n}, from: hv2, to: hv3}}\n" for n in names))
    lab.emulator("hv2").inject_fault(op="checkpoint_vm", action="delay", seconds=4, times=1)
    try:
        res, st = lab.cli_json("plan", "apply", str(plan), "--json")
        assert res.returncode == 0, res.stderr
        pid = st["id"]
        res = lab.cli("plan", "cancel", pid)
        assert res.returncode == 0, res.stderr
    finally:
        lab.emulator("hv2").clear_faults()
    st = _wait_plan(lab, pid, lambda s: s["state"] != "running")
    assert st["state"] == "cancelled", st
    first, *rest = st["groups"][0]["members"]
    assert first["state"] == "rolled_back" and first["migration"]
    assert [(m["state"], m["migration"]) for m in rest] == [("pending", None), ("pending", None)]
    for n in names:
        check = lab.verify(n)
        assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", (n, check)
    res = lab.cli("plan", "cancel", pid)
    assert res.returncode == 2 and "already ended (cancelled)" in res.stderr


def test_on_failure_stop_releases_nothing_after_a_failed_member(lab, tmp_path):
    names = ["ps-1", "ps-2", "ps-3"]
    for n in names:
        lab.add_vm(n, "hv3", write_rate_kbps=32)
    plan = _plan_file(tmp_path, "name: stop-me\nconcurrency: 1\non_failure: stop\ngroups:\n"
                      "  - name: g\n    vms:\n"
                      + "".join(f"      - {{vm: {n}, from: hv3, to: hv1}}\n" for n in names))
    lab.emulator("hv1").inject_fault(op="import_vm", action="fail", message="injected: import broke", times=1)
    try:
        res, st = lab.cli_json("plan", "apply", str(plan), "--wait", "--json", timeout=300)
    finally:
        lab.emulator("hv1").clear_faults()
    assert res.returncode == 1, res.stderr
    assert st["state"] == "stopped" and st["stopped_because"].startswith("g/ps-1 ended rolled_back"), st
    first, *rest = st["groups"][0]["members"]
    assert first["state"] == "rolled_back" and first["error"].startswith("cutover:")
    assert [m["state"] for m in rest] == ["pending", "pending"]
    for n in names:
        check = lab.verify(n)
        assert check["running_on"] == ["hv3"] and check["integrity"] == "ok", (n, check)


def test_plans_over_the_http_api(lab):
    import time

    import httpx
    url = json.loads((lab.dir / "endpoints.json").read_text())["api"]
    token = (lab.dir / "api-token").read_text().strip()
    http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
    lab.add_vm("ph-1", "hv2", write_rate_kbps=32)
    plan = {"name": "over-http", "groups": [{"name": "g", "vms": [{"vm": "ph-1", "from": "hv2", "to": "hv1"}]}]}
    bad = {"name": "over-http", "groups": [{"name": "g", "vms": [{"vm": "ph-1", "from": "hv2", "to": "hv9"}]}]}
    from workers.model import keys
    rates = keys.api_rate("")  # the token's request window moves with every call

    def state():
        return {k: v for k, v in lab.redis_state().items() if not k.startswith(rates)}
    before = state()
    res = http.post("/v1/plans:dry-run", json=bad)
    assert res.status_code == 422 and res.headers["content-type"] == "application/problem+json"
    assert res.json()["detail"].startswith("the plan (groups[0].vms[0].to): unknown host 'hv9'")
    assert http.post("/v1/plans", json=bad).status_code == 422
    dry = http.post("/v1/plans:dry-run", json=plan)
    assert dry.status_code == 200, dry.text
    assert dry.json()["members"][0]["preflight"]["ok"] is True and dry.json()["predicted_seconds"] > 0
    assert state() == before
    res = http.post("/v1/plans", json=plan)
    assert res.status_code == 201, res.text
    pid = res.json()["id"]
    assert res.headers["location"] == f"/v1/plans/{pid}"
    deadline = time.monotonic() + 120
    while (st := http.get(f"/v1/plans/{pid}").json())["state"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.3)
    assert st["state"] == "completed" and st["groups"][0]["members"][0]["state"] == "completed", st
    assert st["requested_by"] == "lab-admin"
    res = http.post(f"/v1/plans/{pid}/cancel")
    assert res.status_code == 409 and "already ended (completed)" in res.json()["detail"]
    assert http.get("/v1/plans/nope").status_code == 404
    assert http.post("/v1/plans/nope/cancel").status_code == 404
    # the plan's own events on the SSE stream: started, its member released, ended
    seen, cur = [], {}
    with http.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}, timeout=httpx.Timeout(30, read=20)) as res:
        for line in res.iter_lines():
            if line and not line.startswith(":"):
                field, _, value = line.partition(":")
                cur[field] = value.removeprefix(" ")
                continue
            if cur.get("event") == "plan" and json.loads(cur["data"])["plan"] == pid:
                seen.append(json.loads(cur["data"]))
                if seen[-1]["event"] == "ended":
                    break
            cur = {}
    assert [(e["event"], e["new"]) for e in seen] == [("started", "running"), ("released", "running"),
                                                     ("ended", "completed")]
    assert seen[1]["member"] == "g/ph-1" and seen[1]["migration"] == st["groups"][0]["members"][0]["migration"]
    http.close()


def test_the_plan_commands_over_the_api_alone(lab, tmp_path):
    """A CLI whose config has only `[api] url`: no Redis, no hosts, no host credentials."""
    from tests.integration.test_cli_remote import Client
    c = Client(lab, tmp_path)
    lab.add_vm("pr-1", "hv3", write_rate_kbps=32)
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: remote\ngroups:\n  - name: g\n    vms:\n      - {vm: pr-1, from: hv3, to: hv2}\n")
    dry = c.json("plan", "dry-run", str(plan), "--json")
    assert dry["members"][0]["preflight"]["ok"] and dry["predicted_seconds"] > 0
    st = c.json("plan", "apply", str(plan), "--wait", "--json")
    assert st["state"] == "completed" and st["requested_by"] == c.name, st
    assert c.json("plan", "status", st["id"], "--json")["counts"] == {"completed": 1}
    assert lab.verify("pr-1")["running_on"] == ["hv2"]
    # the file's grammar is checked here, with its line; the hosts by the server, by path
    plan.write_text("name: remote\ngroups:\n  - name: g\n    switchover: maybe\n    vms: []\n")
    res = c.run("plan", "dry-run", str(plan))
    assert res.returncode == 2 and res.stderr.startswith(f"quickmig: {plan} line 4 (groups[0].switchover)")
    plan.write_text("name: remote\ngroups:\n  - name: g\n    vms:\n      - {vm: pr-1, from: hv2, to: hv9}\n")
    res = c.run("plan", "apply", str(plan))
    assert res.returncode == 2 and "(groups[0].vms[0].to): unknown host 'hv9'" in res.stderr
    res = c.run("plan", "cancel", st["id"])
    assert res.returncode == 2 and "already ended (completed)" in res.stderr


# three VMs on three hosts, each host source of one and destination of another: two
# migrations per host at once, what the lab's max_migrations allows
TOGETHER = (("hv1", "hv2"), ("hv2", "hv3"), ("hv3", "hv1"))


def _together_plan(lab, tmp_path, prefix: str) -> tuple[dict, dict]:
    rows = TOGETHER
    names = [f"{prefix}-{i}" for i in range(1, len(rows) + 1)]
    ids = {n: lab.add_vm(n, src, write_rate_kbps=32)["id"] for n, (src, _) in zip(names, rows, strict=True)}
    plan = _plan_file(tmp_path, f"name: {prefix}\nconcurrency: 3\non_failure: continue\n"
                      "defaults:\n  max_rounds: 1\ngroups:\n"
                      "  - name: app\n    switchover: together\n    prepared_wait: 2h\n    vms:\n"
                      + "".join(f"      - {{vm: {n}, from: {s}, to: {d}}}\n"
                                for n, (s, d) in zip(names, rows, strict=True)))
    return {n: r for n, r in zip(names, rows, strict=True)}, {"file": plan, "ids": ids}


def _records(lab, st: dict) -> dict:
    return {m["vm"]: lab.cli_json("status", m["migration"], "--json")[1] for m in st["groups"][0]["members"]}


def test_a_together_group_rolls_back_whole_when_one_members_import_fails(lab, tmp_path):
    from lab.history import load_events
    members, plan = _together_plan(lab, tmp_path, "tgf")
    # the third member's destination refuses its import, the last step before the group's point
    # of no return; its Save-VM comes late, so the other two are imported and wait, down, by then
    lab.emulator("hv1").inject_fault(op="import_vm", action="fail", message="injected: import broke", times=1)
    lab.emulator("hv3").inject_fault(op="save_vm", action="delay", seconds=8, times=1)
    try:
        res, st = lab.cli_json("plan", "apply", str(plan["file"]), "--wait", "--json", timeout=300)
    finally:
        lab.emulator("hv1").clear_faults()
        lab.emulator("hv3").clear_faults()
    assert res.returncode == 1, res.stderr
    assert st["state"] == "failed", st
    got = {m["vm"]: (m["state"], m["error"]) for m in st["groups"][0]["members"]}
    assert {n: s for n, (s, _) in got.items()} == {n: "rolled_back" for n in members}, got
    assert "injected: import broke" in got["tgf-3"][1]
    for n in ("tgf-1", "tgf-2"):
        assert "group app rolled back: app/tgf-3" in got[n][1], got
    # no member was ever started on its destination; those imported there, ready to
    # start, were removed from it before their sources resumed; each runs on its source, whole
    events = load_events(lab.dir)
    imported_then_removed = 0
    for n, (src, dst) in members.items():
        vid = plan["ids"][n]
        mine = sorted((e for e in events if e.get("vm_id") == vid), key=lambda e: e["t"])
        assert not [e for e in mine if e["host"] == dst and e["event"] in ("start", "recover")]
        if n != "tgf-3":
            on_dst = [e["event"] for e in mine if e["host"] == dst and e["event"] in ("import", "remove")]
            assert on_dst in ([], ["import", "remove"]), (n, mine)
            imported_then_removed += on_dst == ["import", "remove"]
            if on_dst:
                removed = next(e["t"] for e in mine if e["host"] == dst and e["event"] == "remove")
                assert [e for e in mine if e["host"] == src and e["event"] in ("start", "recover")
                        and e["t"] > removed]
        check = lab.verify(n)
        assert check["running_on"] == [src] and check["integrity"] == "ok", (n, check)
    # (a loaded machine may slow the second member past the third's late Save-VM: then only one
    # of them was imported when the group rolled back)
    assert imported_then_removed >= 1
    assert st["groups"][0].get("switchover_span_s") is None


def test_a_together_group_switches_over_at_once_and_the_plan_records_its_span(lab, tmp_path):
    from lab.history import load_events
    from tests.integration.test_metrics import scrape
    members, plan = _together_plan(lab, tmp_path, "tgo")
    res, st = lab.cli_json("plan", "apply", str(plan["file"]), "--wait", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    assert st["state"] == "completed" and st["counts"] == {"completed": 3}, st
    g = st["groups"][0]
    recs = _records(lab, st)
    # each member waited at `prepared` with the group's own bound, from the plan file
    assert {r["member_of"].get("prepared_wait_s") for r in recs.values()} == {7200.0}
    # the span: the group's first Save-VM to its last start verified on the destination
    first_save = min(r["save_started_at"] for r in recs.values())
    last_start = max(r["verified_at"] for r in recs.values())
    assert g["switchover_span_s"] == pytest.approx(last_start - first_save, abs=1e-3) and g["switchover_span_s"] > 0
    # and the spread of the members' downtimes, within its bound
    from workers.engine.together import SPREAD_S
    spread = max(r["save_started_at"] for r in recs.values()) - first_save
    assert g["downtime_spread_s"] == pytest.approx(spread, abs=1e-3) and g["downtime_spread_s"] <= SPREAD_S
    # each member's downtime includes its wait for the others, named apart
    assert all(r["downtime_breakdown"]["group_wait"] >= 0 for r in recs.values())
    # from the emulated hosts' record: every member was imported before any started (the
    # group's point of no return), and every Save-VM came before any start
    events = [e for e in load_events(lab.dir) if e.get("vm_id") in plan["ids"].values()]
    dst_of = {plan["ids"][n]: d for n, (_, d) in members.items()}
    imports = [e["t"] for e in events if e["event"] == "import" and e["host"] == dst_of[e["vm_id"]]]
    starts = [e["t"] for e in events if e["event"] in ("start", "recover") and e["host"] == dst_of[e["vm_id"]]]
    saves = [e["t"] for e in events if e["event"] == "save" and e["host"] != dst_of[e["vm_id"]]]
    assert len(imports) == len(starts) == len(saves) == 3, events
    assert max(imports) < min(starts) and max(saves) < min(starts)
    for n, (_, dst) in members.items():
        check = lab.verify(n)
        assert check["running_on"] == [dst] and check["integrity"] == "ok", (n, check)
    text = lab.cli("plan", "status", st["id"])
    assert (f"group app (together, switchover span {g['switchover_span_s']:.1f} s, downtimes started within "
            f"{g['downtime_spread_s']:.1f} s):") in text.stdout
    m = scrape(lab)
    assert m[("quickmig_group_switchover_span_seconds_count", ())] >= 1
    assert m[("quickmig_group_switchover_span_seconds_sum", ())] >= g["switchover_span_s"] - 1e-3
