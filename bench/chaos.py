"""Chaos: SIGKILL a random worker process of a random pool (or force a Redis failover) at a
random moment, while several migrations run, and check that nothing is lost and the VM
never runs twice.

    python bench/chaos.py [--trials 30] [--migrations 3] [--dir DIR] [--seed N] [--bound-s 240]
                          [--faults kill,failover,partition] [--redis single|sentinel]
                          [--nodes N] [--partition-s 30]

`--faults`: what each trial does, picked at random among those given: `kill` (below), or
`failover` (`SENTINEL FAILOVER`: the replica becomes the master while the old one keeps
answering until the sentinels demote it; needs `--redis sentinel`, a lab whose Redis is a
master and a replica under three sentinels), or `partition` (one worker node, chosen at
random, is cut off from Redis but not from the hosts for --partition-s seconds, then
healed; needs `--nodes 2` or more: every pool runs on each node, lab/nodes.py).

Brings a lab up (or uses the one in --dir if it is up), creates `--migrations` VMs once,
and in every trial migrates each of them from where it runs now to another host, all at
once; after a random delay (0 .. --max-delay-s) it SIGKILLs one process of a random pool:
the pool's main process or one of its children, chosen at random. The lab's supervisor
restarts a dead main process; Celery replaces a dead child; the step claim lapses; the
reconciler re-sends what was lost. After each trial, for every migration:
- it ended `completed` or `rolled_back` by itself within --bound-s of the kill;
- `lab verify` reports integrity ok (every acknowledged write, the memory counter, and
  the emulators' start/stop history shows no moment on two hosts);
- exactly one host has the VM, running; no checkpoint, no .avhdx, no .partial file, no
  file of the VM on a host that does not hold it, no VM lease or step claim left in Redis;
- after a partition: the cut-off node started no destructive host call between the moment
  its step claims could have passed to another node (the cut + the claim's TTL) and the heal.
Prints one line per trial and a table: trials, outcomes, longest recovery, violations.
Exit status 0 when there is no violation.
"""
from __future__ import annotations

import argparse
import json
import os.path
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from lab import orchestrator, processes
from lab.oplog import node_calls
from lab.verify import verify_vm
from producer.migrations import MigrationRequest, Producer, RequestError
from workers.hyperv.driver import DESTRUCTIVE_OPS
from workers.model import keys, states
from workers.model.config import load_config
from workers.model.record import RecordNotFound

POOLS = ("snapshot", "copy", "cutover")
VM_OPTIONS = {"memory_mb": 16, "disk_mb": 24, "write_rate_kbps": 64}


FAULTS = ("kill", "failover", "partition")
PARTITION_S = 30.0


@dataclass
class Trial:
    n: int
    fault: str = "kill"
    pool: str = ""
    victim: str = ""
    kill_at: float = 0.0
    partition_s: float = PARTITION_S
    heal_due: float = 0.0  # when a partition is to be healed (0: none to heal)
    healed_at: float = 0.0
    outcomes: dict = field(default_factory=dict)  # mid -> end state (or "stuck")
    recovery_s: float = 0.0
    violations: list = field(default_factory=list)
    set_back: int = 0  # ends a failover took back (read ended, then active again)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pick_victim(lab_dir: Path, rng: random.Random) -> tuple[str, str, int]:
    """(pool, 'main'|'child', pid) of a live worker process."""
    lab = orchestrator.read_lab(lab_dir)
    pool = rng.choice(POOLS)
    entry = lab["processes"][rng.choice(pool_processes(lab, pool))]
    kids = children(entry["pid"]) if processes.alive(entry) else []
    if kids and rng.random() < 0.5:
        return pool, "child", rng.choice(kids)
    return pool, "main", entry["pid"]


def pool_processes(lab: dict, pool: str) -> list[str]:
    """The names of a pool's main processes: one, or one per node (`worker-copy-n1`, ...)."""
    return [n for n in lab["processes"] if n == f"worker-{pool}" or n.startswith(f"worker-{pool}-")]


def sentinel(lab_dir: Path, i: int = 0) -> redis.Redis:
    return redis.Redis(port=orchestrator.read_lab(lab_dir)["ports"]["sentinels"][i], decode_responses=True,
                       socket_timeout=5)


def wait_failover_ready(lab_dir: Path, timeout_s: float = 60) -> None:
    """Until the sentinels agree on a master that has an online replica: what a failover needs
    (right after one, the old master is still resyncing as the new replica)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            masters = {tuple(sentinel(lab_dir, i).sentinel_get_master_addr_by_name(orchestrator.SENTINEL_SERVICE))
                       for i in range(3)}
            if len(masters) == 1:
                host, port = next(iter(masters))
                info = redis.Redis(host=host, port=int(port), socket_timeout=5).info("replication")
                if any(isinstance(v, dict) and v.get("state") == "online" for k, v in info.items()
                       if k.startswith("slave")):
                    return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Redis under Sentinel has no online replica to fail over to")
        time.sleep(0.3)


def force_failover(lab_dir: Path) -> str:
    sentinel(lab_dir).execute_command("SENTINEL FAILOVER", orchestrator.SENTINEL_SERVICE)
    return "master"


def wait_pools_alive(lab_dir: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lab = orchestrator.read_lab(lab_dir)
        entries = [lab["processes"][n] for p in POOLS for n in pool_processes(lab, p)]
        if all(processes.alive(e) and children(e["pid"]) for e in entries):
            return
        time.sleep(0.3)
    raise TimeoutError("worker pools did not come back")


def leftovers(lab_dir: Path, cfg, vm_id: str, home: str | None) -> list[str]:
    found = []
    for h in cfg.hosts:
        share = lab_dir / "hosts" / h / "share"
        for p in share.rglob("*"):
            if not p.is_file():
                continue
            rel = p.relative_to(share).as_posix()
            if p.name.endswith(".partial"):
                found.append(f"partial file {h}:{rel}")
            elif vm_id in rel.lower():
                if h != home:
                    found.append(f"file of the VM on {h}, which does not hold it: {rel}")
                elif p.suffix.lower() == ".avhdx":
                    found.append(f"differencing disk left on {h}: {rel}")
    return found


def check_after(lab_dir: Path, cfg, r, name: str, mid: str) -> list[str]:
    v = verify_vm(lab_dir, name)
    bad = []
    if v["integrity"] != "ok":
        bad.append(f"{name}: integrity: {v['integrity']}")
    if len(v["running_on"]) != 1 or len(v["state_by_host"]) != 1:
        bad.append(f"{name}: expected running on exactly one host, got {v['state_by_host']}")
    home = v["running_on"][0] if v["running_on"] else None
    if home:
        st = orchestrator.emulator_client(cfg, home).state()
        vm = next((x for x in st["vms"] if x["id"] == v["vm_id"]), None)
        if vm and vm.get("snapshots"):
            bad.append(f"{name}: checkpoints left on {home}: {[s['name'] for s in vm['snapshots']]}")
    bad += [f"{name}: {x}" for x in leftovers(lab_dir, cfg, v["vm_id"], home)]
    if r.get(keys.vm_lock(v["vm_id"])):
        bad.append(f"{name}: VM lease still held by {r.get(keys.vm_lock(v['vm_id']))}")
    if r.get(keys.step_claim(mid)):
        bad.append(f"{name}: step claim of {mid} left")
    return bad


def inject(lab_dir: Path, t: Trial, rng: random.Random) -> None:
    """The trial's fault, now: a failover, or a SIGKILL of a worker process."""
    t.kill_at = time.time()
    if t.fault == "failover":
        t.pool, t.victim = "redis", force_failover(lab_dir)
        return
    if t.fault == "partition":
        node = rng.choice(orchestrator.read_lab(lab_dir)["net"]["nodes"])["name"]
        orchestrator.partition(lab_dir, node, say=lambda *_: None)
        t.pool, t.victim, t.heal_due = "node", node, time.time() + t.partition_s
        return
    pool, kind, pid = pick_victim(lab_dir, rng)
    t.pool, t.victim = pool, kind
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        t.victim += " (already gone)"


def heal(lab_dir: Path, t: Trial) -> None:
    """Heal the trial's partition, if one is still in place."""
    if t.heal_due:
        orchestrator.partition(lab_dir, t.victim, heal=True, say=lambda *_: None)
        t.heal_due, t.healed_at = 0.0, time.time()


def partition_violations(lab_dir: Path, t: Trial) -> list[str]:
    """Destructive host calls the cut-off node started once its claims could have passed to
    another node (the cut + the claim's TTL) and before the heal."""
    could_pass = t.kill_at + keys.STEP_CLAIM_TTL_S
    return [f"node {t.victim} started {c.op} on {c.host} {c.started - t.kill_at:.1f}s after its cut "
            f"(its claims could pass at +{keys.STEP_CLAIM_TTL_S}s; healed at +{t.healed_at - t.kill_at:.1f}s)"
            for c in node_calls(lab_dir, t.victim)
            if c.op in DESTRUCTIVE_OPS and c.outcome == "ok" and could_pass < c.started < t.healed_at]


def _wait_ends(lab_dir: Path, producer, t: Trial, mids: dict, pending: set, deadline: float, say) -> None:
    """Until every migration of the trial ended (or the deadline), healing a partition when due."""
    while pending and time.time() < deadline:
        if t.heal_due and time.time() >= t.heal_due:
            heal(lab_dir, t)
        for mid in list(pending):
            try:
                rec = producer.get(mid)
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as e:  # a master replaced
                say(f"    (reading {mid}: {e})")
                break
            except RecordNotFound:  # a failover lost it: a violation, never a crash of the bench
                t.outcomes[mid] = "lost"
                t.violations.append(f"{mids[mid]}: migration {mid}'s record is gone (lost in the failover)")
                pending.discard(mid)
                continue
            if rec["state"] in states.ENDS:
                t.outcomes[mid] = rec["state"]
                t.recovery_s = max(t.recovery_s, rec["updated_at"] - t.kill_at)
                pending.discard(mid)
        time.sleep(0.3)


def _settle(lab_dir: Path, producer, t: Trial, mids: dict, deadline: float, say) -> None:
    """After a failover, what a client read may be gone: an end the old master acknowledged and
    never passed on comes back as the state before it. Once the new master has its replica,
    read every record again and wait for those set back to end again (the reconciler carries
    them on). Ending another way than first read is a violation: a client was told otherwise."""
    wait_failover_ready(lab_dir)
    deadline = max(deadline, time.time() + 120)
    first = dict(t.outcomes)
    again = set()
    for mid, out in first.items():
        if out == "lost":
            continue
        rec = producer.get(mid)
        if rec["state"] not in states.ENDS:
            t.set_back += 1
            again.add(mid)
    _wait_ends(lab_dir, producer, t, mids, again, deadline, say)
    for mid in again:
        t.outcomes[mid] = "stuck:" + producer.get(mid)["state"]
        t.violations.append(f"{mids[mid]}: migration {mid} not ended again after the failover set it back")
    for mid, out in t.outcomes.items():
        if first.get(mid) not in (None, "lost") and out != first[mid]:
            t.violations.append(f"{mids[mid]}: migration {mid} read {first[mid]}, then ended {out}")


def run_trial(lab_dir: Path, cfg, producer, vms: dict, t: Trial, rng: random.Random,
              max_delay_s: float, bound_s: float, say=print) -> Trial:
    wait_pools_alive(lab_dir)
    if "sentinels" in orchestrator.read_lab(lab_dir)["ports"]:
        # after a failover the old master rejoins as the replica; until it has, quickmig
        # (rightly) confirms nothing and takes no request
        wait_failover_ready(lab_dir)
    mids = {}
    for name in vms:
        src = vms[name]
        dst = rng.choice([h for h in cfg.hosts if h != src])
        try:
            mids[producer.enqueue(MigrationRequest(name, src, dst)).get("id")] = name
        except RequestError as e:  # what the last trial left behind: said, never a crash of the bench
            t.violations.append(f"{name}: not queued: {e}")
    time.sleep(rng.uniform(0, max_delay_s))
    inject(lab_dir, t, rng)
    deadline = t.kill_at + bound_s
    pending = set(mids)
    try:
        _wait_ends(lab_dir, producer, t, mids, pending, deadline, say)
        if t.fault == "failover":
            _settle(lab_dir, producer, t, mids, deadline, say)
    finally:
        heal(lab_dir, t)
    for mid in pending:
        t.outcomes[mid] = "stuck:" + producer.get(mid)["state"]
        t.violations.append(f"{mids[mid]}: migration {mid} not ended {bound_s:.0f}s after the kill")
    for mid, out in t.outcomes.items():
        if out == "lost":
            continue
        rec = producer.get(mid)
        if out == states.COMPLETED:
            vms[mids[mid]] = rec["destination"]
        elif out != states.ROLLED_BACK:
            t.violations.append(f"{mids[mid]}: migration {mid} ended {out}: {rec.get('error')}")
    time.sleep(0.5)  # let the guests write a little on their (new) host before verifying
    if t.fault == "partition":
        t.violations += partition_violations(lab_dir, t)
    r = producer.store.r
    for mid, name in mids.items():
        t.violations += check_after(lab_dir, cfg, r, name, mid)
    say(f"trial {t.n:3d}: {t.fault:8s} {t.pool:8s} {t.victim:6s} | "
        + " ".join(sorted(t.outcomes.values())) + f" | recovery {t.recovery_s:6.1f}s"
        + (f" | ends set back {t.set_back}" if t.set_back else "") + " | violations "
        + str(len(t.violations)) + "".join(f"\n    - {v}" for v in t.violations))
    return t


def table(trials: list[Trial]) -> str:
    outs: dict[str, int] = {}
    for t in trials:
        for o in t.outcomes.values():
            outs[o] = outs.get(o, 0) + 1
    kills: dict[str, int] = {}
    for t in trials:
        kills[f"{t.pool}/{t.victim}"] = kills.get(f"{t.pool}/{t.victim}", 0) + 1
    rows = [("trials", str(len(trials))),
            ("migrations", str(sum(len(t.outcomes) for t in trials))),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outs.items()))),
            ("faults (pool/process)", ", ".join(f"{k} {v}" for k, v in sorted(kills.items()))),
            ("longest recovery", f"{max((t.recovery_s for t in trials), default=0):.1f} s after the kill"),
            ("ends a failover set back", str(sum(t.set_back for t in trials))),
            ("violations", str(sum(len(t.violations) for t in trials)))]
    w = max(len(k) for k, _ in rows)
    vw = max(60, *(len(v) for _, v in rows))
    line = "+" + "-" * (w + 2) + "+" + "-" * (vw + 2) + "+"
    return "\n".join([line] + [f"| {k:<{w}} | {v:<{vw}} |" for k, v in rows] + [line])


def run(lab_dir: Path, trials: int, migrations: int, seed: int, max_delay_s: float, bound_s: float,
        say=print, faults: tuple[str, ...] = ("kill",), partition_s: float = PARTITION_S) -> list[Trial]:
    cfg = load_config(lab_dir / "quickmig.toml")
    producer = Producer(cfg)
    rng = random.Random(seed)
    hosts = list(cfg.hosts)
    vms = {}
    for i in range(migrations):
        name = f"chaos-{seed}-{i}"
        home = hosts[i % len(hosts)]
        orchestrator.add_vm(cfg, name, home, **VM_OPTIONS)
        vms[name] = home
    time.sleep(1)
    done = []
    for n in range(1, trials + 1):
        t = Trial(n, fault=rng.choice(faults), partition_s=partition_s)
        done.append(run_trial(lab_dir, cfg, producer, vms, t, rng, max_delay_s, bound_s, say))
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/chaos.py")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--migrations", type=int, default=3, help="migrations running at once per trial")
    ap.add_argument("--dir", type=Path, default=None, help="lab directory (default: a fresh temporary one)")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-delay-s", type=float, default=8.0, help="kill at a random moment in 0..N s")
    ap.add_argument("--bound-s", type=float, default=240.0,
                    help="every migration must end within this many seconds of the kill")
    ap.add_argument("--json", type=Path, default=None, help="also write the trials here")
    ap.add_argument("--faults", default="kill",
                    help="comma-separated, picked at random per trial: kill, failover, partition")
    ap.add_argument("--redis", default="single", choices=orchestrator.REDIS_MODES,
                    help="the lab's Redis (failover needs sentinel)")
    ap.add_argument("--nodes", type=int, default=0,
                    help="worker nodes (network namespaces, every pool on each; partition needs 2 or more)")
    ap.add_argument("--partition-s", type=float, default=PARTITION_S,
                    help="how long a partition lasts (longer than the step claim's TTL, so a claim can pass)")
    args = ap.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    if not faults or set(faults) - set(FAULTS):
        ap.error(f"--faults takes some of {', '.join(FAULTS)}, not {args.faults!r}")
    if "failover" in faults and args.redis != "sentinel":
        ap.error("--faults failover needs --redis sentinel")
    if "partition" in faults and args.nodes < 2:
        ap.error("--faults partition needs --nodes 2 or more")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    lab_dir = args.dir or Path(tempfile.mkdtemp(prefix="quickmig-chaos-"))
    started_here = not orchestrator.running(lab_dir)
    if started_here:
        orchestrator.up(lab_dir, hosts=args.hosts, vms_per_host=0, redis_mode=args.redis, node_count=args.nodes)
    t0 = time.time()
    try:
        print(f"chaos: seed {seed}, {args.trials} trials x {args.migrations} migrations, lab {lab_dir}")
        trials = run(lab_dir, args.trials, args.migrations, seed, args.max_delay_s, args.bound_s,
                     faults=faults, partition_s=args.partition_s)
    finally:
        if started_here:
            orchestrator.down(lab_dir, say=lambda *_: None)
    print(table(trials))
    print(f"wall time {time.time() - t0:.0f}s; bound {args.bound_s:.0f}s after each kill")
    if args.json:
        args.json.write_text(json.dumps([t.__dict__ for t in trials], indent=1))
    return 0 if not any(t.violations for t in trials) else 1


if __name__ == "__main__":
    raise SystemExit(main())
