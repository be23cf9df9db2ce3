"""Phase 2b: pre-copy rounds, and the gate that decides when the cutover may begin.

After the base copy the VM's leaf holds what the guest wrote since our checkpoint. While
copying that leaf would cost more downtime than a round costs, take another checkpoint
(same name, so finish and rollback merge them all) and copy the now-frozen leaf while the
VM runs. The prediction uses only what this run measured: the copy engine's throughput,
the guest's write rate (leaf growth since the checkpoint), and the fixed costs of save,
register and start measured by earlier cutovers on these hosts (until there are some, what
`quickmig calibrate` measured on them, else defaults; the record says which). The downtime
copy skips the bandwidth limits, so it is predicted at the rate the last switchover between
these hosts measured for its own copy, else at this migration's copy rate with its waits for
the limits taken out; the rounds run within the limits and are weighed at the limited rate.
"""
from __future__ import annotations

import time

from workers.engine import context
from workers.engine.step import HardFailure, Later, fence
from workers.model import host_profile, keys, options, states
from workers.model.file_plan import PathMap, checkpoint_files, downtime_files
from workers.model.preflight import room_for_checkpoint, saved_memory_bytes
from workers.model.record import StaleState
from workers.steps.checkpoint import snapshot_name
from workers.steps.transfer import file_size, transfer

MiB = 1024 * 1024
CHILD_HEADER_BYTES = 4096        # a fresh differencing disk before the guest writes to it
STATE_FILES_BYTES = 1 * MiB      # .vmcx and .vmgs beside the memory
ROUND_OVERHEAD_S = 0.5           # checkpoint + bookkeeping of one round
PAYS_MIN_BYTES = 1 * MiB         # below this a round saves less than it costs
WAIT_SYNC_BYTES = 8 * MiB        # while waiting for the window, sync a delta this big
WAIT_POLL_S = 30.0  # how often a migration waiting for its window looks at its delta
DEFAULT_COPY_BPS = 50e6          # until this run has measured its own
DEFAULT_SAVE_BPS = 300e6
DEFAULT_REGISTER_START_S = 0.5
REGISTER_START_SCRIPTS = 3      # import_vm, start_vm, wait_heartbeat on the destination


def _big_copies(rec: dict) -> list[dict]:
    return [f for f in rec.get("copied", []) if f.get("bytes", 0) >= MiB and f.get("seconds")]


def copy_bps(rec: dict) -> float:
    """The copy engine's throughput in this run, bandwidth limits included: files of at least
    1 MiB, per second of copying."""
    big = _big_copies(rec)
    secs = sum(f["seconds"] for f in big)
    return sum(f["bytes"] for f in big) / secs if secs > 0 else DEFAULT_COPY_BPS


def unlimited_copy_bps(rec: dict, like_bytes: int = 0) -> float:
    """The same copies' throughput without their waits for the bandwidth limits: the rate of
    the downtime copy, which skips the limits. A copy keeps at least a twentieth of its time
    (a wait counted for a stream that then sat idle must not promise an endless rate).
    `like_bytes`: count only the copies of files at least half that size when there are
    any: a small file's rate says little of a large one's (its per-file costs, or a cache
    that takes it whole: 64 MiB disks at 318-350 MB/s beside a 256 MiB memory file at 107
    in one lab migration, docs/benchmarks.md)."""
    big = _big_copies(rec)
    big = [f for f in big if f["bytes"] >= like_bytes / 2] or big
    secs = sum(max(f["seconds"] - f.get("throttled_s", 0.0), f["seconds"] / 20) for f in big)
    return sum(f["bytes"] for f in big) / secs if secs > 0 else DEFAULT_COPY_BPS


def fixed_costs(source: str, destination: str) -> dict:
    return remembered_costs(context.store().r, source, destination)


def remembered_costs(r, source: str, destination: str) -> dict:
    """Save rate of `source` and register+start time of `destination` as the last switchovers
    there measured them (remember_costs), else as `quickmig calibrate` measured the hosts, else
    the defaults; `measured` names those switchovers measured, `sources` says for each part
    where it came from ("measured", "calibrated <time>" or "default")."""
    save = r.hget(keys.cutover_costs(source), "save_bps")
    reg = r.hget(keys.cutover_costs(destination), "register_start_s")
    down = r.hget(keys.cutover_costs(source), f"downtime_copy_bps:{destination}")
    src_cal, dst_cal = host_profile.load(r, source), host_profile.load(r, destination)
    out = {"save_bps": float(save) if save else DEFAULT_SAVE_BPS,
           "register_start_s": float(reg) if reg else DEFAULT_REGISTER_START_S,
           "measured": [k for k, v in (("save_bps", save), ("register_start_s", reg),
                                       ("downtime_copy_bps", down)) if v]}
    # Save-VM needs a VM: a calibration cannot measure it, so save_bps is measured or the default.
    sources = {"save_bps": "measured" if save else "default",
               "register_start_s": "measured" if reg else "default",
               "downtime_copy_bps": "measured" if down else "this migration"}
    if not reg and dst_cal is not None:
        # import, start and the heartbeat wait each run one script in a process started ahead:
        # at least the calibrated read-only cmdlet's latency each (a floor: Import-VM does more)
        out["register_start_s"] = REGISTER_START_SCRIPTS * dst_cal["cmdlet_s"]
        sources["register_start_s"] = f"calibrated {host_profile.when(dst_cal)}"
    if down:  # the last switchover's own copy from source to destination, limits skipped as they are
        out["downtime_copy_bps"] = float(down)
    elif src_cal is not None and dst_cal is not None:
        # read from the source's share, written to the destination's: the slower of the two
        out["calibrated_copy_bps"] = min(src_cal["smb_read_bps"], dst_cal["smb_write_bps"])
        out["calibrated_at"] = max(src_cal["measured_at"], dst_cal["measured_at"])
    out["sources"] = sources
    return out


def downtime_copy_bps(rec: dict, costs: dict) -> float:
    """The rate the downtime copy will get: as the last switchover between these hosts measured
    it, else this migration's copies without their waits for the bandwidth limits, else (no
    copy of this migration measured yet) as the calibration of both hosts measured SMB."""
    return downtime_copy(rec, costs)[0]


def downtime_copy(rec: dict, costs: dict, memory_bytes: int = 0) -> tuple[float, str]:
    """downtime_copy_bps and where it came from ("measured", "this migration", "calibrated
    <time>" or "default"). `memory_bytes`: what the VM will save; this migration's copies of
    files like it count, when it copied some (unlimited_copy_bps)."""
    if costs.get("downtime_copy_bps"):
        return costs["downtime_copy_bps"], "measured"
    if _big_copies(rec) or not costs.get("calibrated_copy_bps"):
        rate = unlimited_copy_bps(rec, memory_bytes)
        return rate, "this migration" if _big_copies(rec) else "default"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(costs["calibrated_at"]))
    return costs["calibrated_copy_bps"], f"calibrated {when}"


def remember_costs(source: str, destination: str, memory_bytes: int, save_s: float, register_start_s: float,
                   copied_bytes: int = 0, copy_s: float = 0.0) -> None:
    """What a finished switchover measured, for the next prediction on these hosts."""
    r = context.store().r
    if save_s > 0 and memory_bytes > 0:
        r.hset(keys.cutover_costs(source), "save_bps", memory_bytes / save_s)
    if copy_s > 0 and copied_bytes >= MiB:
        r.hset(keys.cutover_costs(source), f"downtime_copy_bps:{destination}", copied_bytes / copy_s)
    r.hset(keys.cutover_costs(destination), "register_start_s", register_start_s)
    for h in (source, destination):
        r.expire(keys.cutover_costs(h), keys.CUTOVER_COSTS_TTL_S)


def predict_s(memory_bytes: int, delta_bytes: int, copy_rate: float, costs: dict) -> float:
    """Downtime if we cut over now: save, copy memory + leaf + state files, register and start."""
    save_s = memory_bytes / costs["save_bps"]
    return save_s + (memory_bytes + delta_bytes + STATE_FILES_BYTES) / copy_rate + costs["register_start_s"]


def pays(delta_bytes: int, write_bps: float, copy_rate: float, extra_bytes: int = 0) -> bool:
    """A round pays when the delta the guest writes during it is clearly smaller than the one it
    copies: by at least PAYS_MIN_BYTES and a fifth (slower shrinking would need many rounds).
    `extra_bytes`: what the round's checkpoint adds to the copy (a Standard checkpoint's memory)."""
    left = write_bps * ((delta_bytes + extra_bytes) / copy_rate + ROUND_OVERHEAD_S)
    return delta_bytes - left >= PAYS_MIN_BYTES and left < 0.8 * delta_bytes


def round_bytes(vm: dict) -> int:
    """What a round's checkpoint writes besides the frozen leaf, to be copied with it: a
    Standard checkpoint of a running VM keeps its memory (.vmrs)."""
    return saved_memory_bytes(vm) if vm.get("checkpoint_type") == "Standard" else 0


def _leaf_bytes(rec: dict, vm: dict) -> int:
    pm = PathMap.for_record(context.config(), rec)
    ep = context.smb_endpoint(rec["source"])
    return sum(file_size(ep, pm.src_place(d["chain"][0])) for d in vm["disks"] if d["chain"])


def _round(mid: str, lg) -> None:
    """Checkpoint again and copy the leaf that checkpoint froze, while the VM runs."""
    store = context.store()
    rec = store.get(mid)
    fence(rec)
    res = context.driver(rec["source"]).run("checkpoint_vm", {"vm_id": rec["vm_id"],
                                                              "snapshot_name": snapshot_name(mid)})
    t_cp = time.time()
    frozen = [{"path": d["chain"][1], "kind": "disk"} for d in res["vm"]["disks"] if len(d["chain"]) > 1]
    # every file of the new checkpoint: Import-VM -Register needs each checkpoint the VM lists
    frozen += [{"path": p, "kind": "checkpoint"} for p in checkpoint_files(res["snapshot"])]
    rec = store.set(mid, checkpoint_at=t_cp)
    moved = transfer(rec, frozen, lg)
    took = time.time() - t_cp

    def note(r):
        r.setdefault("rounds", []).append({"bytes": moved, "seconds": round(took, 3), "at": t_cp})
    store.update(mid, note)
    lg.info("pre-copy round %d: %.1f MiB in %.2fs", len(rec.get("rounds", [])) + 1, moved / MiB, took)


def gate(mid: str, lg) -> dict:
    """Run pre-copy rounds until the cutover may start; returns the record. Raises
    HardFailure when --max-downtime cannot be met and --on-exceed is abort, or the window closed."""
    store = context.store()
    rec = store.get(mid)
    o = options.of(rec)
    src = context.driver(rec["source"])
    paying = 0
    while True:
        rec = store.get(mid)
        if rec["state"] != states.COPYING:  # cancelled while it waited (for a window, say)
            raise StaleState(mid, {states.COPYING}, rec["state"])
        vm = src.run("describe_vm", {"vm_id": rec["vm_id"]})["vm"]
        now = time.time()
        delta = _leaf_bytes(rec, vm)
        since = max(now - (rec.get("checkpoint_at") or now), 1e-3)
        write_bps = max(delta - CHILD_HEADER_BYTES * len(vm["disks"]), 0) / since
        costs = fixed_costs(rec["source"], rec["destination"])
        memory = saved_memory_bytes(vm)
        rate, (down_rate, down_source) = copy_bps(rec), downtime_copy(rec, costs, memory)
        pred = predict_s(memory, delta, down_rate, costs)
        rec = store.set(mid, predicted_downtime_seconds=round(pred, 3), guest_write_bps=round(write_bps),
                        copy_bps=round(rate), downtime_copy_bps=round(down_rate), delta_bytes=delta,
                        prediction_sources={**costs["sources"], "downtime_copy_bps": down_source},
                        downtime_paths=[f["path"] for f in downtime_files(vm)])  # the cutover need not ask again
        end = o.window_end()
        if end is not None and now > end:
            raise HardFailure(f"the cutover window closed at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(end))} "
                              "before the cutover could start; ask for a later or longer --window")
        above = o.max_downtime_s is not None and pred > o.max_downtime_s
        total = len(rec.get("rounds", []))
        if (paying < o.max_rounds and total < options.MAX_ROUNDS_LIMIT and room_for_checkpoint(vm)
                and pays(delta, write_bps, rate, round_bytes(vm))
                and (o.max_downtime_s is None or above)):
            _round(mid, lg)
            paying += 1
            continue
        if o.not_before is not None and now < o.not_before:
            # keep the delta small until the window opens
            if delta >= WAIT_SYNC_BYTES and total < options.MAX_ROUNDS_LIMIT and room_for_checkpoint(vm):
                _round(mid, lg)
                continue
            # Not in a worker: a window hours away would hold a copy worker (and the VM's
            # step) all that time; the step ends and comes back to look again.
            opens = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(o.not_before))
            raise Later(min(WAIT_POLL_S, o.not_before - now), f"waiting for the cutover window (opens {opens})")
        if rec.get("waiting") or rec.get("resume_at"):
            rec = store.update(mid, lambda r: (r.pop("waiting", None), r.pop("resume_at", None)))
        if above:
            if o.on_exceed == "abort":
                raise HardFailure(f"predicted downtime {pred:.2f}s exceeds --max-downtime {o.max_downtime_s:g}s "
                                  f"after {total} pre-copy round(s) (guest writes {write_bps / 1e6:.1f} MB/s, "
                                  f"copy {rate / 1e6:.0f} MB/s, {down_rate / 1e6:.0f} MB/s without the bandwidth "
                                  "limits, as in the downtime); allow more downtime, more rounds, or "
                                  "--on-exceed proceed")
            lg.warning("predicted downtime %.2fs exceeds --max-downtime %gs; proceeding as asked",
                       pred, o.max_downtime_s)
        lg.info("cutover may start: predicted downtime %.2fs after %d round(s)", pred, total)
        return rec
