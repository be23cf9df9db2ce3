"""Plans of many migrations: what `quickmig plan dry-run` predicts.

The dry run changes nothing anywhere: it runs every member's pre-flight (the same as
`migrate --dry-run`: the file plan, the pre-flight's problems, the predicted copy time
and downtime from the rates measured on its two hosts) and feeds the members that would
pass to producer.schedule, with the fleet's limits as they are now: each host's
`max_migrations` and `max_copies`, the bandwidth limits, and the time each pair of hosts
took for the phases around the copy the last time a migration between them completed.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from producer import schedule
from producer.migrations import MigrationRequest, Producer, RequestError
from producer.plan_file import Member, Plan
from workers.coord.throttle import Throttle
from workers.engine import plans as plan_engine
from workers.engine import together
from workers.model import states
from workers.model.record import RecordNotFound
from workers.steps.precopy import DEFAULT_COPY_BPS

# What a member takes around its copy and downtime until a migration between the same two
# hosts has measured it (a completed record's phases): the checkpoint; pre-copy rounds and
# prepare; the cutover after the guest runs again, and finish.
DEFAULT_SETUP_S = 2.0
DEFAULT_GATE_S = 3.0
DEFAULT_FINISH_S = 2.0
PREFLIGHT_THREADS = 4  # members looked at at once (each is a few WinRM calls and SMB reads)
PAGES_FOR_PHASES = 3   # pages of the source's migrations searched for a completed one of the pair


def _dur(rec: dict, phase: str) -> float | None:
    ph = (rec.get("phases") or {}).get(phase) or {}
    if "start" in ph and "end" in ph:
        return max(0.0, float(ph["end"]) - float(ph["start"]))
    return None


def phase_costs(p: Producer, source: str, destination: str) -> dict:
    """The fixed times around the copy and downtime, as the newest completed migration from
    `source` to `destination` took them; the defaults where there is none."""
    cursor = None
    for _ in range(PAGES_FOR_PHASES):
        recs, cursor = p.page(limit=100, cursor=cursor, host=source, state=states.COMPLETED)
        for r in recs:
            if r["destination"] != destination:
                continue
            snap, copy, prep, cut, fin = (_dur(r, ph) for ph in ("snapshot", "copy", "prepare", "cutover", "finish"))
            if None in (snap, copy, prep, cut, fin) or not r.get("copy_bps") or r.get("downtime_seconds") is None:
                continue
            assert snap is not None and copy is not None and prep is not None and cut is not None and fin is not None
            base = float(r.get("bytes_total") or 0) / float(r["copy_bps"])
            return {"setup_s": round(snap, 3), "gate_s": round(max(0.0, copy - base) + prep, 3),
                    "finish_s": round(fin + max(0.0, cut - float(r["downtime_seconds"])), 3),
                    "measured_by": r["id"]}
        if cursor is None:
            break
    return {"setup_s": DEFAULT_SETUP_S, "gate_s": DEFAULT_GATE_S, "finish_s": DEFAULT_FINISH_S, "measured_by": None}


def request(m: Member) -> MigrationRequest:
    return MigrationRequest(m.vm, m.source, m.destination, dict(m.options))


def _preflight(p: Producer, m: Member) -> dict:
    try:
        return p.dry_run(request(m))
    except RequestError as e:
        return {"refused": str(e)}


def dry_run(p: Producer, plan: Plan, now: float | None = None) -> dict:
    """Every member's pre-flight and the plan's predicted schedule; changes nothing."""
    now = time.time() if now is None else now
    members = plan.members()
    with ThreadPoolExecutor(max_workers=PREFLIGHT_THREADS) as pool:
        checks = list(pool.map(lambda m: _preflight(p, m), members))
    limits = Throttle(p.store.r).limits()
    pair_bps = {}
    for pair, rate in limits["pairs"].items():
        src, _, dst = pair.partition("->")
        if rate:
            pair_bps[(src, dst)] = float(rate)
    phases: dict[tuple[str, str], dict] = {}
    jobs, out_members = [], []
    for m, c in zip(members, checks, strict=True):
        row: dict = {"key": m.key, "group": m.group, "vm": m.vm, "source": m.source, "destination": m.destination}
        out_members.append(row)
        if "refused" in c or not c["preflight"]["ok"]:
            found = [c["refused"]] if "refused" in c else c["preflight"]["problems"]
            row["preflight"] = {"ok": False, "problems": found}
            continue
        pair = (m.source, m.destination)
        if pair not in phases:
            phases[pair] = phase_costs(p, *pair)
        ph = phases[pair]
        opts = c["options"]
        window_end = (opts["not_before"] + opts["window_s"]) if opts.get("window_s") is not None else None
        job = schedule.Job(key=m.key, group=m.group, source=m.source, destination=m.destination,
                           copy_bytes=float(c["copy_bytes"]), copy_bps=float(c["rates"]["copy_bps"]),
                           downtime_s=float(c["predicted_downtime_seconds"]), setup_s=ph["setup_s"],
                           gate_s=ph["gate_s"], finish_s=ph["finish_s"], not_before=opts.get("not_before"),
                           window_end=window_end)
        jobs.append(job)
        row.update(preflight={"ok": True, "problems": []}, vm_id=c["vm_id"], options=c["options"], cold=c.get("cold"),
                   copy_bytes=c["copy_bytes"], rates=c["rates"], phases=ph, job=job)
    hosts = {name: schedule.HostLimits(h.max_migrations, h.max_copies) for name, h in p.cfg.hosts.items()}
    groups = [schedule.GroupSpec(g.name, g.after, g.switchover == "together",
                                 together.prepared_wait_s(g.prepared_wait_s)) for g in plan.groups]
    res = schedule.simulate(jobs, groups, hosts, plan.concurrency, global_bps=limits["global"],
                            pair_bps=pair_bps, start=now)
    refused = [r for r in out_members if not r.get("preflight", {}).get("ok", True)]
    problems = [f"{r['key']}: pre-flight: {'; '.join(r['preflight']['problems'])}" for r in refused]
    if refused and plan.on_failure == "stop":
        problems.append(f"on_failure is stop: the plan would stop when {refused[0]['key']} is refused")
    problems += hook_problems(p, plan)
    for row in out_members:
        job = row.pop("job", None)
        if job is not None:
            row["predicted"] = _predicted(job, now)
    return {"plan": plan.name, "concurrency": plan.concurrency, "on_failure": plan.on_failure,
            "on_hook_failure": plan.on_hook_failure, "computed_at": now,
            "predicted_finish": res.finish,
            "predicted_seconds": None if res.finish is None else round(res.finish - now, 3),
            "members": out_members,
            "groups": [{**_group(g.name, g.switchover, g.after, res.groups[g.name], now), "hooks": g.hooks}
                       for g in plan.groups],
            "limits": {"global_bps": limits["global"], "pairs_bps": limits["pairs"],
                       "hosts": {n: {"max_migrations": h.max_migrations, "max_copies": h.max_copies}
                                 for n, h in sorted(hosts.items())}},
            "problems": problems + res.problems}


def hook_problems(p: Producer, plan: Plan) -> list[str]:
    """Each hook whose secret the credentials file lacks (a producer without one cannot tell:
    the worker that calls the hook finds out, and the VM rolls back before any downtime)."""
    if p.cfg.credentials_file is None:
        return []
    have = p.cfg.hook_secrets()
    return [f"group {g.name}: {kind} hook: no secret {h['secret']!r}: add [hooks.{h['secret']}] secret = \"...\" "
            f"(or secret_file, or secret_env) to the credentials file {p.cfg.credentials_file}"
            for g in plan.groups for kind, h in g.hooks.items() if h["secret"] not in have]


def hook_line(hooks: dict, on_hook_failure: str | None = None) -> str:
    """`pre_cutover POST URL (timeout 10 s, secret NAME); post_cutover ...`: what a group calls."""
    parts = []
    for kind, h in sorted(hooks.items(), key=lambda kv: kv[0] != "pre_cutover"):
        then = (", on failure: rollback before any downtime" if kind == "pre_cutover"
                else f", on failure: {on_hook_failure}" if on_hook_failure else "")
        parts.append(f"{kind} POST {h['url']} (timeout {h['timeout_s']:g} s, secret {h['secret']}{then})")
    return "; ".join(parts)


def _group(name: str, switchover: str, after: tuple[str, ...], sim: dict, now: float) -> dict:
    span = sim.get("switchover_span")
    return {"name": name, "switchover": switchover, "after": list(after),
            "start_s": None if sim["start"] is None else round(sim["start"] - now, 3),
            "finish_s": None if sim["finish"] is None else round(sim["finish"] - now, 3),
            "switchover_span_s": None if span is None else round(span, 3)}


def _predicted(j: schedule.Job, now: float) -> dict:
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - now, 3)
    copy_s = None if j.copy_start is None or j.copy_end is None else round(j.copy_end - j.copy_start, 3)
    return {"start_s": rel(j.start), "copy_start_s": rel(j.copy_start), "copy_seconds": copy_s,
            "cutover_start_s": rel(j.cutover_start), "downtime_seconds": round(j.downtime_s, 3),
            "finish_s": rel(j.finish), "problem": j.problem}


def _clock(seconds: float | None) -> str:
    """+H:MM:SS from the dry run's start ('-' for never)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"+{s // 3600}:{s % 3600 // 60:02}:{s % 60:02}"


def schedule_lines(out: dict) -> list[str]:
    """The dry run as text: the plan's predicted finish, then each group and its VMs."""
    n = len(out["members"])
    finish = out["predicted_finish"]
    head = (f"plan {out['plan']}: {n} VM{'s' * (n != 1)} in {len(out['groups'])} group"
            f"{'s' * (len(out['groups']) != 1)}, concurrency {out['concurrency']}, on_failure {out['on_failure']}; ")
    head += ("predicted finish " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finish))
             + f" ({_clock(out['predicted_seconds'])} from now)" if finish is not None
             else "no predicted finish (see the problems below)")
    lines = [head]
    for g in out["groups"]:
        after = f", after {', '.join(g['after'])}" if g["after"] else ""
        span = f", switchover span {g['switchover_span_s']:.1f} s" if g["switchover_span_s"] is not None \
            and g["switchover"] == "together" else ""
        lines.append(f"group {g['name']} ({g['switchover']}{after}): {_clock(g['start_s'])} to "
                     f"{_clock(g['finish_s'])}{span}")
        if g.get("hooks"):
            lines.append(f"  hooks: {hook_line(g['hooks'], out.get('on_hook_failure'))}")
        lines.append(f"  {'VM':24} {'FROM':10} {'TO':10} {'START':>9} {'COPY':>9} {'MiB':>8} {'DOWNTIME':>9} "
                     f"{'FINISH':>9}  PRE-FLIGHT")
        for m in out["members"]:
            if m["group"] != g["name"]:
                continue
            pr = m.get("predicted")
            if pr is None:
                lines.append(f"  {m['vm']:24} {m['source']:10} {m['destination']:10} {'-':>9} {'-':>9} {'-':>8} "
                             f"{'-':>9} {'-':>9}  refused: {'; '.join(m['preflight']['problems'])}")
                continue
            copy = "-" if pr["copy_seconds"] is None else f"{pr['copy_seconds']:.1f}s"
            lines.append(f"  {m['vm']:24} {m['source']:10} {m['destination']:10} {_clock(pr['start_s']):>9} "
                         f"{copy:>9} {m['copy_bytes'] / 2**20:8.0f} {pr['downtime_seconds']:8.1f}s "
                         f"{_clock(pr['finish_s']):>9}  ok")
    measured = sorted({m["rates"]["measured_by"] for m in out["members"] if m.get("rates", {}).get("measured_by")}
                      | {m["phases"]["measured_by"] for m in out["members"] if m.get("phases", {}).get("measured_by")})
    lines.append("rates: " + (f"measured by {', '.join(measured)}" if measured else "none measured yet")
                 + f"; defaults where not: copy {DEFAULT_COPY_BPS / 1e6:.0f} MB/s, checkpoint {DEFAULT_SETUP_S:.0f} s, "
                 f"pre-copy and prepare {DEFAULT_GATE_S:.0f} s, after the downtime {DEFAULT_FINISH_S:.0f} s")
    lines += [f"problem: {p}" for p in out["problems"]]
    return lines


def apply(p: Producer, plan: Plan, requester: str | None = None) -> dict:
    """Check every member (its pre-flight must pass: otherwise nothing changes and the first
    problem is the refusal), store the plan and release its first members."""
    missing = hook_problems(p, plan)
    if missing:
        raise RequestError(missing[0])
    dry = dry_run(p, plan)
    by_key = {m.key: m for m in plan.members()}
    for row in dry["members"]:
        if not row["preflight"]["ok"]:
            raise RequestError(f"{by_key[row['key']].where}: {row['vm']} would not pass its pre-flight: "
                               f"{row['preflight']['problems'][0]}")
    together_problems(plan, dry)
    rows = {r["key"]: r for r in dry["members"]}
    now = time.time()
    record = {"id": uuid.uuid4().hex[:16], "name": plan.name, "state": plan_engine.RUNNING, "created_at": now,
              "concurrency": plan.concurrency, "on_failure": plan.on_failure, "requested_by": requester,
              "on_hook_failure": plan.on_hook_failure,
              "predicted_finish": dry["predicted_finish"],
              "groups": [{"name": g.name, "after": list(g.after), "switchover": g.switchover, "hooks": g.hooks,
                          **({"prepared_wait_s": g.prepared_wait_s} if g.prepared_wait_s is not None else {}),
                          "members": [_member(rows[m.key]) for m in g.members]} for g in plan.groups]}
    r = p.store.r
    plan_engine.create(r, record, p.store.events_max_entries)
    plan_engine.advance(p.store, p.locks, p.admission, record["id"], wait_s=10)
    p.admit()
    return status(p, record["id"])


def together_problems(plan: Plan, dry: dict) -> None:
    """A together group must be able to have every member under way at once (its members wait
    for each other at its barriers), is predicted to have them ready within the time it waits
    for them (or it would roll back after all their copies), and moves running VMs only (a
    cold move has no downtime to line up): RequestError naming the first that cannot."""
    stuck = next((x for x in dry["problems"] if " switches over together but " in x), None)
    if stuck:
        raise RequestError(stuck)
    by_key = {m.key: m for m in plan.members()}
    together_groups = {g.name for g in plan.groups if g.switchover == "together"}
    for row in dry["members"]:
        cold = row.get("cold")
        if row["group"] in together_groups and cold:
            raise RequestError(f"{by_key[row['key']].where}: {row['vm']} is {cold}: a group that switches over "
                               "together moves running VMs only; move it in an independent group")


def _member(row: dict) -> dict:
    """What the plan record keeps of a member: what releasing it takes, and what the live ETA
    predicts its phases from."""
    pr = row["predicted"]
    return {"key": row["key"], "vm": row["vm"], "vm_id": row["vm_id"], "source": row["source"],
            "destination": row["destination"], "options": row["options"], "migration": None,
            "estimate": {"copy_bytes": row["copy_bytes"], "copy_bps": row["rates"]["copy_bps"],
                         "downtime_s": pr["downtime_seconds"], **{k: row["phases"][k]
                                                                   for k in ("setup_s", "gate_s", "finish_s")}}}


def load(p: Producer, pid: str) -> dict:
    plan = plan_engine.load(p.store.r, pid)
    if plan is None:
        raise RecordNotFound(f"no plan with id {pid!r}")
    return plan


def status(p: Producer, pid: str) -> dict:
    """The plan, each member's state and migration, and while it runs its live ETA: the
    schedule of what is left, simulated from now."""
    plan = load(p, pid)
    recs = plan_engine.migration_states(p.store.r, plan)
    counts: dict[str, int] = {}
    for g in plan["groups"]:
        for m in g["members"]:
            st = plan_engine.member_state(m, recs)
            m["state"] = st
            rec = recs.get(m["key"])
            m["error"] = m.get("refused") or m.get("skipped") or (rec or {}).get("error")
            m["hook_calls"] = (rec or {}).get("hook_calls", [])
            counts[st] = counts.get(st, 0) + 1
    plan["counts"] = counts
    plan["eta"] = _eta(p, plan, recs) if plan["state"] == plan_engine.RUNNING else None
    return plan


# how much of a member's run is left, by the state its migration is in
_LEFT = {states.QUEUED: ("setup", "copy", "gate", "down", "finish"),
         states.SNAPSHOTTING: ("setup", "copy", "gate", "down", "finish"),
         states.COPYING: ("copy", "gate", "down", "finish"),
         states.PREPARING: ("gate", "down", "finish"), states.CUTTING_OVER: ("down", "finish"),
         states.FINISHING: ("finish",), states.ROLLING_BACK: ("finish",)}


def _eta(p: Producer, plan: dict, recs: dict[str, dict]) -> float | None:
    now = time.time()
    if plan.get("cancelled") or plan.get("stopped_because"):
        return None
    jobs, groups = [], []
    for g in plan["groups"]:
        left = [m for m in g["members"] if m["state"] not in states.ENDS and m["state"] not in ("skipped", "refused")]
        if not left:
            continue
        groups.append(schedule.GroupSpec(g["name"], (), g["switchover"] == "together"))
        for m in left:
            e, rec = m["estimate"], recs.get(m["key"])
            phases = _LEFT["queued"] if rec is None else _LEFT.get(rec["state"], ())
            copied = float((rec or {}).get("bytes_copied") or 0)
            jobs.append(schedule.Job(
                key=m["key"], group=g["name"], source=m["source"], destination=m["destination"],
                copy_bytes=max(0.0, float(e["copy_bytes"]) - copied) if "copy" in phases else 0.0,
                copy_bps=float(e["copy_bps"]), downtime_s=float(e["downtime_s"]) if "down" in phases else 0.0,
                setup_s=float(e["setup_s"]) if "setup" in phases else 0.0,
                gate_s=float(e["gate_s"]) if "gate" in phases else 0.0,
                finish_s=float(e["finish_s"]) if "finish" in phases else 0.0,
                held=rec is not None and bool(rec.get("admitted_at"))))
    if not jobs:
        return now
    # a group waits for those it comes after that are not over yet
    names = {g.name for g in groups}
    specs = [schedule.GroupSpec(g.name, tuple(a for a in next(x["after"] for x in plan["groups"]
                                                              if x["name"] == g.name) if a in names), g.together)
             for g in groups]
    hosts = {n: schedule.HostLimits(h.max_migrations, h.max_copies) for n, h in p.cfg.hosts.items()}
    limits = Throttle(p.store.r).limits()
    pair_bps = {(k.partition("->")[0], k.partition("->")[2]): float(v) for k, v in limits["pairs"].items() if v}
    res = schedule.simulate(jobs, specs, hosts, plan["concurrency"], global_bps=limits["global"],
                            pair_bps=pair_bps, start=now)
    return res.finish


def cancel(p: Producer, pid: str, requester: str | None = None) -> dict:
    """Release no more members and cancel those before their downtime; one in its downtime
    ends by itself (started on the destination or rolled back)."""
    load(p, pid)

    def mark(plan: dict) -> None:
        if plan["state"] == plan_engine.RUNNING:
            plan["cancelled"] = True
            plan["cancelled_at"] = time.time()
    plan = plan_engine.locked(p.store.r, pid, mark, wait_s=10)
    if plan is None:
        raise RequestError(f"plan {pid} is busy; try again")
    if plan["state"] != plan_engine.RUNNING:
        raise RequestError(f"cannot cancel plan {pid}: it has already ended ({plan['state']})")
    recs = plan_engine.migration_states(p.store.r, plan)
    for m in plan_engine.members(plan):
        rec = recs.get(m["key"])
        if rec is not None and rec["state"] not in states.ENDS:
            try:
                p.cancel(rec["id"], requester)
            except RequestError:
                pass  # in its downtime or past it: it ends by itself
    plan_engine.advance(p.store, p.locks, p.admission, pid, wait_s=10)
    return status(p, pid)


def wait(p: Producer, pid: str, timeout_s: float | None = None, poll_s: float = 0.5,
         on_change=None) -> dict:
    """Follow a plan until it ends; TimeoutError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        st = status(p, pid)
        seen = (st["state"], tuple(sorted(st["counts"].items())))
        if on_change and seen != last:
            on_change(st)
        last = seen
        if st["state"] != plan_engine.RUNNING:
            return st
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"plan {pid} still running after {timeout_s}s")
        time.sleep(poll_s)


def status_lines(st: dict) -> list[str]:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(st["counts"].items()))
    head = f"plan {st['id']} ({st['name']}): {st['state']}; {counts}"
    if st.get("eta") is not None:
        head += "; ETA " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st["eta"]))
    if st.get("stopped_because"):
        head += f"; stopped: {st['stopped_because']}"
    lines = [head]
    for g in st["groups"]:
        after = f" after {', '.join(g['after'])}" if g["after"] else ""
        span = (f" (together, switchover span {g['switchover_span_s']:.1f} s, downtimes started within "
                f"{g['downtime_spread_s']:.1f} s)" if g.get("switchover_span_s") is not None
                else " (together)" if g.get("switchover") == "together" else "")
        lines.append(f"group {g['name']}{after}{span}:")
        if g.get("hooks"):
            lines.append(f"  hooks: {hook_line(g['hooks'], st.get('on_hook_failure'))}")
        for m in g["members"]:
            lines.append(f"  {m['vm']:24} {m['source']:>8} -> {m['destination']:8} {m['state']:13} "
                         f"{m.get('migration') or '-':16} {m.get('error') or ''}".rstrip())
            lines += [f"    {c['hook']} hook: {'ok' if c['ok'] else 'failed'} ({c['outcome']}, {c['seconds']:.2f} s)"
                      for c in m.get("hook_calls", [])]
    return lines
