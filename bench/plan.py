"""A plan's predicted schedule: how long the event-driven simulation takes to compute.

    python bench/plan.py [--vms 1000] [--hosts 100] [--concurrency 50] [--runs 3]

(a) Builds a plan file of --vms VMs over --hosts hosts (seeded: the same plan each run):
ten groups, the later ones `after` an earlier one, one group switching over `together`;
copy sizes from 1 to 200 GiB, rates from 30 to 300 MB/s, a global bandwidth limit. Then it
times, in the same run, reading and checking that YAML file (producer.plan_file: the
reference, the least any dry run does) and computing the schedule from it
(producer.schedule.simulate, the members' pre-flights taken as done: here their sizes and
rates are given), and prints both, their ratio, and the predicted finish. The pre-flights
themselves are host look-ups (WinRM and SMB), as long as `migrate --dry-run` each.
(b) With --lab: a plan of --lab-vms VMs over --lab-hosts lab hosts (real Redis, Samba,
workers and emulated hosts), concurrency 6 and max_migrations 2, in two groups (the second
`after` the first). One migration per pair of hosts first measures the rates and phase
times the prediction uses (as an operator's earlier migrations would); then `plan dry-run`
predicts the plan's finish, `plan apply` runs it, and the benchmark prints predicted
against actual (apply's start to the plan's end) and the error in percent (goal: 20 %).

Exit 0 when every VM got a predicted finish (and with --lab, every member completed).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from producer import plan_file, schedule  # noqa: E402

GiB = 2**30


def build_plan(vms: int, hosts: int, concurrency: int, seed: int = 7) -> tuple[str, dict]:
    rnd = random.Random(seed)
    names = [f"hv{i:03}" for i in range(hosts)]
    groups = []
    facts = {}
    per_group = max(1, vms // 10)
    for g in range(10):
        members = []
        size = per_group if g < 9 else vms - 9 * per_group
        for i in range(size):
            src = rnd.randrange(hosts)
            dst = (src + 1 + rnd.randrange(hosts - 1)) % hosts
            vm = f"vm-{g}-{i}"
            members.append({"vm": vm, "from": names[src], "to": names[dst]})
            facts[f"g{g}/{vm}"] = (rnd.uniform(1, 200) * GiB, rnd.uniform(30e6, 300e6), rnd.uniform(2, 40))
        group = {"name": f"g{g}", "vms": members}
        if g >= 5:
            group["after"] = [f"g{g - 5}"]
        groups.append(group)
    # one small application whose tiers switch over together (within the host limits); the
    # rest of that group stays a group of its own
    k = min(4, concurrency)
    rest = {"name": "g3-rest", "vms": groups[3]["vms"][k:]}
    groups[3] = {"name": "g3", "switchover": "together", "vms": groups[3]["vms"][:k]}
    groups.insert(4, rest)
    for m in rest["vms"]:
        facts[f"g3-rest/{m['vm']}"] = facts.pop(f"g3/{m['vm']}")
    doc = {"name": "bench", "concurrency": concurrency, "on_failure": "continue",
           "defaults": {"max_downtime": "60s"}, "groups": groups}
    return yaml.safe_dump(doc, sort_keys=False), {"hosts": names, "facts": facts}


def compute(plan: plan_file.Plan, facts: dict, hosts: list[str]) -> schedule.Result:
    jobs = []
    for m in plan.members():
        size, bps, down = facts[m.key]
        jobs.append(schedule.Job(key=m.key, group=m.group, source=m.source, destination=m.destination,
                                 copy_bytes=size, copy_bps=bps, downtime_s=down, setup_s=2.0, gate_s=3.0,
                                 finish_s=2.0))
    groups = [schedule.GroupSpec(g.name, g.after, g.switchover == "together") for g in plan.groups]
    limits = {h: schedule.HostLimits(max_migrations=2, max_copies=2) for h in hosts}
    return schedule.simulate(jobs, groups, limits, plan.concurrency, global_bps=5e9, start=time.time())


def lab_run(n_vms: int, n_hosts: int, disk_mb: int, lab_dir: str | None) -> int:
    import tempfile

    from lab import orchestrator
    from producer import plans
    from producer.migrations import MigrationRequest, Producer
    from workers.model.config import load_config
    d = Path(lab_dir or tempfile.mkdtemp(prefix="bench-plan-"))
    orchestrator.up(d, hosts=n_hosts, vms_per_host=0, max_migrations=2, say=lambda *_: None)
    try:
        cfg = load_config(d / "quickmig.toml")
        p = Producer(cfg)
        hosts = sorted(cfg.hosts)
        opts = {"disk_mb": disk_mb, "memory_mb": 64, "write_rate_kbps": 64}
        # one migration per pair measures what the prediction uses
        warm = []
        for i, h in enumerate(hosts):
            orchestrator.add_vm(cfg, f"warm-{i}", h, **opts)
            warm.append(p.enqueue(MigrationRequest(f"warm-{i}", h, hosts[(i + 1) % len(hosts)], {}))["id"])
        for mid in warm:
            assert p.wait(mid, timeout_s=600)["state"] == "completed", mid
        members = []
        for i in range(n_vms):
            h = i % len(hosts)
            orchestrator.add_vm(cfg, f"bp-{i}", hosts[h], **opts)
            members.append(f"      - {{vm: bp-{i}, from: {hosts[h]}, to: {hosts[(h + 1) % len(hosts)]}}}\n")
        half = n_vms // 2
        text = ("name: bench-lab\nconcurrency: 6\non_failure: continue\ngroups:\n"
                "  - name: first\n    vms:\n" + "".join(members[:half])
                + "  - name: second\n    after: [first]\n    vms:\n" + "".join(members[half:]))
        plan = plan_file.parse(text, source="bench-lab.yaml", hosts=cfg.hosts)
        dry = plans.dry_run(p, plan)
        predicted = dry["predicted_seconds"]
        st = plans.apply(p, plan)
        st = plans.wait(p, st["id"], timeout_s=3600)
        actual = st["ended_at"] - st["created_at"]
        err = (predicted - actual) / actual * 100
        print(f"(b) plan of {n_vms} VMs over {n_hosts} lab hosts, concurrency 6, max_migrations 2, "
              f"disks of {disk_mb} MiB: {st['state']} ({st['counts']})")
        print(f"    predicted finish {predicted:.1f} s, actual {actual:.1f} s: error {err:+.1f} % (goal within 20 %)")
        return 0 if st["state"] == "completed" else 1
    finally:
        orchestrator.down(d, say=lambda *_: None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lab", action="store_true", help="also (b): predicted against actual in a lab")
    ap.add_argument("--lab-vms", type=int, default=24)
    ap.add_argument("--lab-hosts", type=int, default=6)
    ap.add_argument("--disk-mb", type=int, default=64)
    ap.add_argument("--dir", default=None, help="(b): the lab's folder (default: a new temporary one)")
    args = ap.parse_args()
    text, world = build_plan(args.vms, args.hosts, args.concurrency)
    parse_s, sim_s = [], []
    res = None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        plan = plan_file.parse(text, source="bench.yaml", hosts=world["hosts"])
        t1 = time.perf_counter()
        res = compute(plan, world["facts"], world["hosts"])
        t2 = time.perf_counter()
        parse_s.append(t1 - t0)
        sim_s.append(t2 - t1)
    assert res is not None
    p, s = min(parse_s), min(sim_s)
    n = len(res.jobs)
    print(f"(a) plan of {n} VMs over {args.hosts} hosts, concurrency {args.concurrency}, "
          f"best of {args.runs}:")
    print(f"    read and check the YAML plan (reference): {p:.3f} s")
    print(f"    compute the schedule:                     {s:.3f} s  ({s / p:.2f} x the reference)")
    if res.finish is not None:
        start = min(j.start for j in res.jobs if j.start is not None)
        print(f"    predicted finish: {(res.finish - start) / 3600:.1f} h after the start; "
              f"problems: {len(res.problems)}")
    for line in res.problems[:5]:
        print(f"    problem: {line}")
    rc = 0 if res.finish is not None and all(j.finish is not None for j in res.jobs) else 1
    if args.lab:
        rc = max(rc, lab_run(args.lab_vms, args.lab_hosts, args.disk_mb, args.dir))
    return rc


if __name__ == "__main__":
    sys.exit(main())
