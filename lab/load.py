"""The load scenario: many small migrations across many lab hosts under a per-host limit.

Brings a lab up with `hosts` hosts whose max_migrations is `limit`, creates one tiny VM per
migration (spread over the hosts), enqueues every migration at once so that each host is
both a source and a destination, waits for all of them, then reads what happened from
three places that do not depend on each other's bookkeeping: the migration records, the
admission log in Redis, and the emulated hosts' own record (lab/history.py). Shared by the
load test (tests/integration/test_load.py) and `python bench/load.py`.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lab import history, orchestrator
from lab.verify import verify_vm
from producer.migrations import MigrationRequest, Producer
from workers.coord import admission
from workers.model import keys, states
from workers.model.config import load_config

# Small enough that a copy takes milliseconds, with a guest that still writes (so the
# integrity check has acknowledged writes to find) and no ISO to compare.
TINY_VM = {"memory_mb": 1, "disk_mb": 1, "write_rate_kbps": 4, "iso": False}


def routes(migrations: int, hosts: int) -> list[tuple[int, int]]:
    """(source, destination) host indexes: sources round-robin, each source's destinations
    rotating over every other host, so every host sends and receives."""
    return [(i % hosts, (i % hosts + 1 + (i // hosts) % (hosts - 1)) % hosts) for i in range(migrations)]


def _used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def run(lab_dir: Path, migrations: int = 200, hosts: int = 10, limit: int = 2, timeout_s: float = 900,
        say=print) -> dict:
    """Run the scenario in a fresh lab at `lab_dir` (brought down afterwards); the report."""
    lab_dir = Path(lab_dir)
    say(f"lab up: {hosts} hosts, max_migrations {limit}")
    orchestrator.up(lab_dir, hosts=hosts, vms_per_host=0, max_migrations=limit, say=lambda *_: None)
    try:
        return _run(lab_dir, migrations, hosts, limit, timeout_s, say)
    finally:
        orchestrator.down(lab_dir, say=lambda *_: None)


def _run(lab_dir: Path, migrations: int, hosts: int, limit: int, timeout_s: float, say) -> dict:

    cfg = load_config(lab_dir / "quickmig.toml")
    names = sorted(cfg.hosts, key=lambda h: int(h[2:]))
    plan = [(f"load{i}", names[s], names[d]) for i, (s, d) in enumerate(routes(migrations, hosts))]
    say(f"creating {migrations} VMs")
    for vm, src, _ in plan:  # names are unique by construction: no search of every host first
        orchestrator.emulator_client(cfg, src).create_vm(name=vm, **TINY_VM)
    p = Producer(cfg)
    r = p.store.r
    mem_before = _used_memory(r)
    say(f"enqueueing {migrations} migrations")
    t0 = time.time()
    ids = [p.enqueue(MigrationRequest(vm, src, dst))["id"] for vm, src, dst in plan]
    enqueued_s = time.time() - t0
    deadline = time.monotonic() + timeout_s
    ended: dict[str, dict] = {}
    last_say = 0.0
    while len(ended) < len(ids):
        left = [m for m in ids if m not in ended]
        for mid, raw in zip(left, r.mget([keys.migration(m) for m in left]), strict=True):
            rec = json.loads(raw)
            if rec["state"] in states.ENDS:
                ended[mid] = rec
        if time.monotonic() - last_say > 15:
            say(f"  {len(ended)}/{len(ids)} ended after {time.time() - t0:.0f}s")
            last_say = time.monotonic()
        if len(ended) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(ended)} of {len(ids)} migrations not ended "
                                   f"after {timeout_s:.0f}s")
            time.sleep(0.5)
    wall_s = max(rec["updated_at"] for rec in ended.values()) - t0
    mem_after = _used_memory(r)
    record_bytes = [int(r.memory_usage(keys.migration(m), samples=0)) for m in ids]
    record_json = [int(r.strlen(keys.migration(m))) for m in ids]
    events = history.load_events(lab_dir)
    checks = [verify_vm(lab_dir, vm) for vm, _, _ in plan]
    return {
        "migrations": migrations, "hosts": hosts, "limit": limit,
        "outcomes": dict(sorted(_count(rec["state"] for rec in ended.values()).items())),
        "wall_s": round(wall_s, 1), "enqueue_s": round(enqueued_s, 1),
        "per_min": round(migrations / wall_s * 60, 1),
        "downtime_median_s": round(statistics.median(rec["downtime_seconds"] or 0 for rec in ended.values()), 3),
        "max_per_host_emulator": history.max_concurrent_migrations(events),
        "max_per_host_admission": admission.max_concurrency(p.admission.log()),
        "spans": len(history.migration_spans(events)),
        "overlaps": history.overlaps(events),
        "integrity_problems": {c["vm"]: c["integrity"] for c in checks
                               if c["integrity"] != "ok" or len(c["running_on"]) != 1},
        "record_bytes_avg": round(statistics.mean(record_bytes)), "record_bytes_max": max(record_bytes),
        "record_json_avg": round(statistics.mean(record_json)),
        "redis_used_memory_delta_per_migration": round((mem_after - mem_before) / migrations),
        "errors": sorted({rec["error"] for rec in ended.values() if rec.get("error")}),
    }


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def format_report(rep: dict) -> str:
    def peak(d: dict) -> str:
        return f"max {max(d.values(), default=0)} (" + " ".join(f"{h}={n}" for h, n in
                                                             sorted(d.items(), key=lambda x: int(x[0][2:]))) + ")"
    return "\n".join([
        f"load: {rep['migrations']} migrations, {rep['hosts']} hosts, max_migrations {rep['limit']}",
        f"  outcomes                {rep['outcomes']}",
        f"  wall time               {rep['wall_s']:.1f} s (enqueue of all: {rep['enqueue_s']:.1f} s)",
        f"  throughput              {rep['per_min']:.1f} migrations/min",
        f"  median downtime         {rep['downtime_median_s']:.3f} s",
        f"  per host, emulator      {peak(rep['max_per_host_emulator'])} from {rep['spans']} spans",
        f"  per host, admission log {peak(rep['max_per_host_admission'])}",
        f"  overlaps                {len(rep['overlaps'])}",
        f"  integrity               {'ok' if not rep['integrity_problems'] else rep['integrity_problems']}",
        f"  Redis per record        MEMORY USAGE avg {rep['record_bytes_avg']} B, max {rep['record_bytes_max']} B "
        f"(JSON {rep['record_json_avg']} B)",
        f"  Redis used_memory       +{rep['redis_used_memory_delta_per_migration']} B per migration",
    ])


def violations(rep: dict) -> list[str]:
    """What the scenario must never show: an unfinished or failed migration, a host over
    its limit (by the emulators' record or the admission log), an overlap, lost writes."""
    out = []
    if rep["outcomes"] != {"completed": rep["migrations"]}:
        out.append(f"not all completed: {rep['outcomes']} {rep['errors']}")
    for source in ("emulator", "admission"):
        over = {h: n for h, n in rep[f"max_per_host_{source}"].items() if n > rep["limit"]}
        if over:
            out.append(f"over the limit of {rep['limit']} per the {source}: {over}")
    if rep["spans"] != rep["migrations"]:
        out.append(f"{rep['spans']} migration spans in the emulators' record, not {rep['migrations']}")
    if rep["overlaps"]:
        out.append(f"{len(rep['overlaps'])} overlaps: {rep['overlaps'][:3]}")
    if rep["integrity_problems"]:
        out.append(f"integrity: {rep['integrity_problems']}")
    return out
