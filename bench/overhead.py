"""Control plane overhead: quickmig's migrations per second against a bare Celery chain of the
same steps, and Redis memory per finished record.

    .venv/bin/python bench/overhead.py [--migrations 20] [--dir DIR]

One lab (`fast` host profile, two hosts, max_migrations high enough not to queue) and tiny
VMs (lab.load.TINY_VM). In turns, so that the machine's load falls on both alike:

- quickmig: `--migrations` VMs migrated hv1 -> hv2, all enqueued at once, through the whole
  control plane (records, admission, leases, step claims, events, audit, metrics);
- bare: as many VMs through a plain Celery chain of the same five steps (snapshot, copy,
  prepare, cutover, finish), each running the same host operations and SMB copies as
  quickmig's step (the same scripts through the same driver, the same verified copy engine,
  the processes of the switchover started ahead), over queues of the same names (snapshot,
  copy, cutover) served by worker pools of the same sizes, on the lab's redis-server (a
  database of its own, so that neither takes the other's messages). No record, no lease,
  no admission, no claim, no event, no retry: what quickmig adds is what the ratio shows.

Prints migrations per second of each and their ratio quickmig / bare (goal >= 0.5), and the
Redis memory of each finished record: `MEMORY USAGE` over every key the migration left
(its record; the step claim and copy resume records, when left) (goal <= 4 KiB).
The bare chain's tasks are this module's `bare` Celery app (`celery -A overhead:bare`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, chain

from workers.engine import context
from workers.hyperv.driver import WarmProcesses
from workers.model import keys, network_map, states
from workers.model.file_plan import PathMap, chain_paths, checkpoint_files, downtime_files, frozen_files
from workers.model.options import Options
from workers.model.routing import QUEUE_COPY, QUEUE_CUTOVER, QUEUE_SNAPSHOT
from workers.smb import file_copy

BARE_BROKER_ENV = "QUICKMIG_BARE_BROKER"
DONE = "bare:done"  # a list: the bare chain's last step pushes the job's number
POOLS = {QUEUE_SNAPSHOT: 2, QUEUE_COPY: 2, QUEUE_CUTOVER: 2}  # as the lab's (lab.orchestrator.POOLS)
GOAL_RATIO, GOAL_RECORD_BYTES = 0.5, 4096

bare = Celery("quickmig-bare", broker=os.environ.get(BARE_BROKER_ENV, "memory://"))
bare.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                 task_serializer="json", accept_content=["json"], task_ignore_result=True,
                 task_routes={"bare.snapshot": {"queue": QUEUE_SNAPSHOT}, "bare.copy": {"queue": QUEUE_COPY},
                              "bare.prepare": {"queue": QUEUE_SNAPSHOT}, "bare.cutover": {"queue": QUEUE_CUTOVER},
                              "bare.finish": {"queue": QUEUE_SNAPSHOT}})


# -- the bare chain: quickmig's steps' host work, nothing else ------------------------------

def _pm(job: dict, vm: dict | None = None) -> PathMap:
    return PathMap(context.config(), job["source"], job["destination"], Options(),
                   vm_folder=(vm or {}).get("path") or job.get("vm_folder"))


def _copy(job: dict, path: str, pm: PathMap) -> None:
    """One file, verified by the destination's hash of what landed, as quickmig copies it."""
    src, dst = pm.src_place(path), pm.dst_place(path)
    ask = context.driver(job["destination"]).chunk_digests
    file_copy.copy_file(context.smb_endpoint(job["source"]).on_share(src.share), src.rel,
                        context.smb_endpoint(job["destination"]).on_share(dst.share), dst.rel,
                        streams=context.config().copy.streams,
                        dest_digests=lambda first, count: ask(dst.path + file_copy.PARTIAL_SUFFIX, first, count))


@bare.task(name="bare.snapshot")
def b_snapshot(job: dict) -> dict:
    src, dst = context.driver(job["source"]), context.driver(job["destination"])
    vm = src.run("describe_vm", {"name": job["vm"], "preflight": True})["vm"]
    src.run("host_info", {})
    dst.run("host_info", {})
    dst.run("list_vms", {})
    res = src.run("checkpoint_vm", {"vm_id": vm["id"], "snapshot_name": job["snapshot_name"]})
    return {**job, "vm_id": vm["id"], "vm_folder": res["vm"]["path"], "frozen": frozen_files(res["vm"])}


@bare.task(name="bare.copy")
def b_copy(job: dict) -> dict:
    pm = _pm(job)
    for f in job["frozen"]:
        _copy(job, f["path"], pm)
    context.driver(job["source"]).run("describe_vm", {"vm_id": job["vm_id"]})  # the gate's look
    return job


@bare.task(name="bare.prepare")
def b_prepare(job: dict) -> dict:
    cfg = context.config()
    src, dst = context.driver(job["source"]), context.driver(job["destination"])
    dst.run("list_vms", {})
    vm = src.run("describe_vm", {"vm_id": job["vm_id"]})["vm"]
    pm = _pm(job, vm)
    _copy(job, vm["config_path"], pm)
    fixes = pm.frozen_parent_fixes(vm)
    if fixes:
        dst.run("reparent_disks", {"parent_fixes": fixes, "roots": cfg.host(job["destination"]).roots})
    switches = network_map.changes(network_map.switch_map(cfg, job["source"], job["destination"], Options(),
                                                          vm.get("switches", [])))
    report = dst.run("compare_vm", {"config_path": pm.dest(vm["config_path"]),
                                    "disk_paths": pm.validation_disk_paths(vm),
                                    "iso_paths": pm.mapping(vm.get("isos", [])),
                                    "vm_folder": pm.vm_folder(vm), "switch_map": switches})
    if report.get("incompatibilities") or report.get("left_behind"):
        raise RuntimeError(f"bare chain: {job['vm']} cannot run on {job['destination']}: {report}")
    return {**job, "parents_fixed": [f["path"] for f in fixes], "switches": switches}


@bare.task(name="bare.cutover")
def b_cutover(job: dict) -> dict:
    cfg = context.config()
    src, dst = context.driver(job["source"]), context.driver(job["destination"])
    warm = WarmProcesses({"save": (src, "save_vm"), "import": (dst, "import_vm"), "start": (dst, "start_vm"),
                          "heartbeat": (dst, "wait_heartbeat")})
    with warm:
        running = src.run("describe_vm", {"vm_id": job["vm_id"]})["vm"]
        pm = _pm(job, running)
        vm = src.run("save_vm", {"vm_id": job["vm_id"], "automatic_start_action": "Nothing"},
                     warm=warm.get("save"))["vm"]
        for f in downtime_files(vm):
            _copy(job, f["path"], pm)
        dst.run("import_vm", {
            "config_path": pm.dest(vm["config_path"]), "disk_paths": pm.mapping(chain_paths(vm)),
            "iso_paths": pm.mapping(vm.get("isos", [])),
            "parent_fixes": [f for f in pm.parent_fixes(vm) if f["path"] not in set(job["parents_fixed"])],
            "roots": cfg.host(job["destination"]).roots, "vm_folder": pm.vm_folder(vm),
            "switch_map": job["switches"]}, warm=warm.get("import"))
        dst.run("start_vm", {"vm_id": job["vm_id"], "automatic_start_action": running["automatic_start_action"]},
                warm=warm.get("start"))
        dst.run("wait_heartbeat", {"vm_id": job["vm_id"], "timeout_s": 60}, warm=warm.get("heartbeat"))
    return job


@bare.task(name="bare.finish")
def b_finish(job: dict) -> None:
    src, dst = context.driver(job["source"]), context.driver(job["destination"])
    vm = dst.run("describe_vm", {"vm_id": job["vm_id"]})["vm"]
    snaps = [s["id"] for s in vm.get("snapshots", []) if s["name"] == job["snapshot_name"]]
    if snaps:
        dst.run("remove_snapshots", {"vm_id": job["vm_id"], "snapshot_ids": snaps})
    old = src.run("describe_vm", {"vm_id": job["vm_id"]})["vm"]
    own = chain_paths(old) + old.get("state_files", []) + [p for s in old.get("snapshots", [])
                                                           for p in checkpoint_files(s)]
    src.remove_vm(job["vm_id"], old["config_path"], turn_off=False, delete_paths=list(dict.fromkeys(own)))
    redis.Redis.from_url(os.environ[BARE_BROKER_ENV]).rpush(DONE, job["n"])


# -- the benchmark ----------------------------------------------------------------------------

def _bare_broker(cfg) -> str:
    url = urlsplit(cfg.broker_url())
    return urlunsplit(url._replace(path="/1"))


def _start_bare_workers(lab_dir: Path, broker: str) -> list[subprocess.Popen]:
    env = dict(os.environ, QUICKMIG_CONFIG=str(lab_dir / "quickmig.toml"), **{BARE_BROKER_ENV: broker},
               PYTHONPATH=os.pathsep.join(filter(None, (str(Path(__file__).parent), os.environ.get("PYTHONPATH")))))
    procs = []
    for pool, conc in POOLS.items():
        log = open(lab_dir / "logs" / f"bare-{pool}.log", "w")  # the worker writes it until stopped
        procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "overhead:bare", "worker", "-Q", pool,
                                       "-n", f"bare-{pool}@%h", "-c", str(conc), "--loglevel", "INFO"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=lab_dir))
    for pool in POOLS:
        deadline = time.monotonic() + 60
        while " ready." not in (lab_dir / "logs" / f"bare-{pool}.log").read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bare {pool} worker did not start (logs/bare-{pool}.log)")
            time.sleep(0.2)
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def _vms(cfg, prefix: str, n: int) -> list[str]:
    from lab import orchestrator
    from lab.load import TINY_VM
    names = [f"{prefix}{i}" for i in range(n)]
    client = orchestrator.emulator_client(cfg, "hv1")
    for name in names:
        client.create_vm(name=name, **TINY_VM)
    # a guest's heartbeat comes a moment after it starts (lab.emulator.lifecycle); pre-flight
    # refuses a VM without one, as bench/downtime.py waits for it too
    time.sleep(1.0)
    return names


def run_quickmig(cfg, names: list[str], timeout_s: float) -> tuple[float, list[str]]:
    from producer.migrations import MigrationRequest, Producer
    p = Producer(cfg)
    t0 = time.time()
    ids = [p.enqueue(MigrationRequest(vm, "hv1", "hv2"))["id"] for vm in names]
    deadline = time.monotonic() + timeout_s
    ended: dict[str, dict] = {}
    while len(ended) < len(ids):
        left = [m for m in ids if m not in ended]
        for mid, raw in zip(left, p.store.r.mget([keys.migration(m) for m in left]), strict=True):
            rec = json.loads(raw)
            if rec["state"] in states.ENDS:
                ended[mid] = rec
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(ended)} quickmig migrations not ended after {timeout_s:.0f}s")
        time.sleep(0.05)
    bad = {rec["state"] for rec in ended.values()} - {states.COMPLETED}
    if bad:
        raise RuntimeError(f"quickmig migrations ended {bad}: {[r.get('error') for r in ended.values()][:3]}")
    return max(rec["updated_at"] for rec in ended.values()) - t0, ids


def run_bare(broker: str, names: list[str], timeout_s: float) -> float:
    r = redis.Redis.from_url(broker)
    r.delete(DONE)
    bare.conf.broker_url = broker
    t0 = time.time()
    for i, vm in enumerate(names):
        job = {"n": i, "vm": vm, "source": "hv1", "destination": "hv2", "snapshot_name": f"bare-{uuid.uuid4().hex}"}
        chain(b_snapshot.s(job), b_copy.s(), b_prepare.s(), b_cutover.s(), b_finish.s()).apply_async()
    done = 0
    deadline = time.monotonic() + timeout_s
    while done < len(names):
        # short waits: the broker URL may carry a socket timeout shorter than the whole wait
        if r.blpop([DONE], timeout=1) is not None:
            done += 1
        elif time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - done} bare chains not ended after {timeout_s:.0f}s "
                               "(the bare workers' logs: logs/bare-*.log in the lab folder)")
    return time.time() - t0


def moved_only(cfg, names: list[str]) -> None:
    """The bare chain did migrate: each VM runs on hv2 and is gone from hv1, with no checkpoint."""
    from lab import orchestrator
    where = {h: {v["name"]: v for v in orchestrator.emulator_client(cfg, h).state()["vms"]} for h in ("hv1", "hv2")}
    wrong = [n for n in names if n in where["hv1"] or (where["hv2"].get(n) or {}).get("state") != "Running"
             or where["hv2"][n].get("snapshots")]
    if wrong:
        raise RuntimeError(f"the bare chain did not move {wrong} cleanly to hv2")


def record_bytes(r, ids: list[str]) -> list[int]:
    """MEMORY USAGE over every key each finished migration left."""
    out = []
    for mid in ids:
        found = [keys.migration(mid), keys.step_claim(mid)] + list(r.scan_iter(keys.copy_resume_match(mid)))
        out.append(sum(int(r.memory_usage(k, samples=0) or 0) for k in found))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--migrations", type=int, default=20, help="VMs migrated by each, per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each runs quickmig then the bare chain")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--dir", help="lab folder (default: a temporary one, removed afterwards)")
    a = ap.parse_args(argv)
    from lab import orchestrator
    from workers.model.config import load_config
    lab_dir = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="quickmig-overhead-"))
    orchestrator.up(lab_dir, hosts=2, vms_per_host=0, max_migrations=max(2, a.migrations), say=lambda *_: None)
    procs: list[subprocess.Popen] = []
    try:
        cfg = load_config(lab_dir / "quickmig.toml")
        os.environ["QUICKMIG_CONFIG"] = str(lab_dir / "quickmig.toml")
        broker = _bare_broker(cfg)
        procs = _start_bare_workers(lab_dir, broker)
        ours, theirs, ids = [], [], []
        for rnd in range(a.rounds):
            took, got = run_quickmig(cfg, _vms(cfg, f"q{rnd}-", a.migrations), a.timeout_s)
            ours.append(a.migrations / took)
            ids += got
            names = _vms(cfg, f"b{rnd}-", a.migrations)
            theirs.append(a.migrations / run_bare(broker, names, a.timeout_s))
            moved_only(cfg, names)
            print(f"round {rnd + 1}: quickmig {ours[-1]:.2f} migrations/s, bare chain {theirs[-1]:.2f}/s, "
                  f"ratio {ours[-1] / theirs[-1]:.2f}", flush=True)
        from producer.migrations import Producer
        sizes = record_bytes(Producer(cfg).store.r, ids)
    finally:
        _stop(procs)
        orchestrator.down(lab_dir, say=lambda *_: None)
        if not a.dir:
            shutil.rmtree(lab_dir, ignore_errors=True)
    q, b = statistics.median(ours), statistics.median(theirs)
    avg = statistics.mean(sizes)
    print(f"control plane: quickmig {q:.2f} migrations/s, bare Celery chain {b:.2f}/s "
          f"(medians of {a.rounds} rounds of {a.migrations}), ratio {q / b:.2f} "
          f"(goal >= {GOAL_RATIO}: {'met' if q / b >= GOAL_RATIO else 'NOT met'})")
    print(f"Redis per finished record: MEMORY USAGE avg {avg:.0f} B, max {max(sizes)} B over {len(sizes)} records "
          f"(goal <= {GOAL_RECORD_BYTES} B: {'met' if max(sizes) <= GOAL_RECORD_BYTES else 'NOT met'})")
    print("provisional: measured on a shared machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
