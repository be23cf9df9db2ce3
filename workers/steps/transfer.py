"""Copying while the VM runs: the helpers every copying step shares.

Every file the migration creates on the destination is recorded before its first byte
is written, so a rollback removes exactly what we made and nothing that was there.

Each file copy holds a read slot on the source host and a write slot on the destination
(`workers.coord.slots`, K = the host's max_copies), moves its chunks within the bandwidth
limits (`workers.coord.throttle`), records every chunk in its resume record in Redis
(`workers.coord.copy_resume`) so a redelivered task resumes where a killed one stopped,
and keeps rec["progress"] current (`workers.coord.progress`). The base copy
(`workers.steps.copy`) and each pre-copy round (`workers.steps.precopy`) go through
`transfer`; the switchover's files (`workers.steps.downtime_copy`) use `copy_verified`.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from workers.coord.copy_resume import RedisResumeRecord
from workers.coord.progress import CopyProgress
from workers.coord.shared_files import SharedFiles
from workers.coord.slots import CopySlots
from workers.coord.throttle import Throttle
from workers.engine import context, markers
from workers.engine.step import HardFailure
from workers.model.file_plan import SHARED_KINDS, PathMap, Place
from workers.obs import metrics
from workers.smb import file_copy
from workers.smb.endpoint import SmbEndpoint


def note_created(mid: str, dst_paths: list[str]) -> dict:
    """Record the files and their partial names (which an interrupted copy leaves behind) for
    rollback; returns the record."""

    def change(rec):
        for dst_path in dst_paths:
            for path in (dst_path, dst_path + file_copy.PARTIAL_SUFFIX):
                if path not in rec.setdefault("created_files", []):
                    rec["created_files"].append(path)
    rec = context.store().update(mid, change)
    markers.write(rec)  # the destination's own copy, should Redis lose the record
    return rec


def note_created_folders(mid: str, dst_ep: SmbEndpoint, place: Place) -> None:
    """Record the folders the copy of `place` will create on the destination (those missing
    now, from the file's own up), before it creates them, so that a rollback removes them
    again when they are left empty (`created_folders`, host paths)."""
    path, rel = place.path, place.rel
    share = dst_ep.on_share(place.share)
    missing = []
    while "\\" in rel:
        path, rel = path.rsplit("\\", 1)[0], rel.rsplit("\\", 1)[0]
        if file_copy.exists(share, rel):
            break
        missing.append(path)
    if not missing:
        return

    def change(rec):
        known = rec.setdefault("created_folders", [])
        known += [p for p in missing if p not in known]
    context.store().update(mid, change)


def refuse_existing(rec: dict, dst_path: str) -> None:
    """A file we did not create is in the way on the destination: never write over it."""
    raise HardFailure(f"{rec['destination']} already has {dst_path}; "
                      "remove it there or choose another destination")


def note_copied(mid: str, entries: list[dict]) -> dict:
    """Add copied files to the record, and to the planned bytes those not planned ahead
    (one update for them all); returns the record."""
    def change(r):
        for entry in entries:
            r.setdefault("copied", []).append(entry)
            r["bytes_copied"] = (r.get("bytes_copied") or 0) + entry["bytes"]
            r.setdefault("planned", {}).setdefault(entry["path"], entry["bytes"])
        r["bytes_total"] = sum(r["planned"].values())
    return context.store().update(mid, change)


class BandwidthWaits:
    """The bandwidth limits' wait for one file copy, counted per copy stream. The downtime
    copy skips the limits, so the gate predicts it from the copy's time without these waits.
    The streams wait side by side, so the file's own time is its time less the smallest
    total wait of a stream (an underestimate of the waits: the prediction errs long)."""

    def __init__(self, wait: Callable[[int], float]):
        self._wait = wait
        self._lock = threading.Lock()
        self._by_stream: dict[int, float] = {}

    def __call__(self, nbytes: int) -> None:
        waited = self._wait(nbytes)
        with self._lock:
            me = threading.get_ident()
            self._by_stream[me] = self._by_stream.get(me, 0.0) + waited

    def seconds(self) -> float:
        with self._lock:
            return min(self._by_stream.values(), default=0.0)


def copy_verified(rec: dict, src_path: str, lg, *, src_ep, dst_ep, progress=None,
                  throttle: BandwidthWaits | None = None, resume=None,
                  host_digests: Callable[[str, int, int], list[str]] | None = None) -> tuple[dict, int]:
    """Copy one file, verified by the destination host's hash of what landed; returns its
    record["copied"] entry and the bytes this call wrote. `host_digests(path, first, count)`:
    how to ask the destination for them (by default a call of its own per range)."""
    pm = PathMap.for_record(context.config(), rec)
    src, dst = pm.src_place(src_path), pm.dst_place(src_path)
    rel, dst_path = src.rel, dst.path
    ask = host_digests or context.driver(rec["destination"]).chunk_digests
    res = file_copy.copy_file(src_ep.on_share(src.share), src.rel, dst_ep.on_share(dst.share), dst.rel,
                              streams=context.config().copy.streams, progress=progress,
                              throttle=throttle, resume=resume,
                              dest_digests=lambda first, count: ask(dst_path + file_copy.PARTIAL_SUFFIX, first,
                                                                    count))
    lg.info("copied %s (%d bytes, %.1f MB/s, %d streams, %d bytes reused from an earlier attempt)",
            rel, res.bytes, res.mb_per_s, res.streams, res.bytes_reused)
    metrics.COPIED_BYTES.labels(source=rec["source"], destination=rec["destination"]).inc(res.bytes_written)
    return {"path": src_path, "dest": dst_path, "bytes": res.bytes, "digest": res.digest,
            "digest_scheme": res.scheme, "seconds": round(res.seconds, 3),
            "throttled_s": round(min(throttle.seconds(), res.seconds), 3) if throttle else 0.0,
            "bytes_reused": res.bytes_reused, "bytes_sent": res.bytes_sent_total}, res.bytes


class _SlotWait:
    """Says in the log and in the record (`waiting`, which `quickmig status` and `watch`
    show) that a copy waits for a copy slot, and takes it back once it has one."""

    def __init__(self, mid: str, lg, source: str, destination: str, k_read: int, k_write: int):
        self.mid, self.lg, self.waited = mid, lg, False
        self.why = (f"waiting for a copy slot: at most {k_read} copies read from {source} and {k_write} write to "
                    f"{destination} at once (max_copies)")

    def __call__(self) -> None:
        self.lg.info("%s", self.why)
        self.waited = True
        context.store().update(self.mid, lambda r: r.__setitem__("waiting", self.why))

    def over(self) -> None:
        if self.waited:
            context.store().update(self.mid, lambda r: r.pop("waiting", None))


def _plan_bytes(rec: dict, files: list[dict], pm: PathMap, src_ep) -> dict:
    """Add these files' sizes to the migration's planned bytes (rec["bytes_total"])."""
    sizes = {f["path"]: file_size(src_ep, pm.src_place(f["path"])) for f in files
             if f["path"] not in rec.get("planned", {})}
    if not sizes:
        return rec

    def change(r):
        r.setdefault("planned", {}).update(sizes)
        r["bytes_total"] = sum(r["planned"].values())
    return context.store().update(rec["id"], change)


def file_size(ep, place: Place) -> int:
    """The size of a file, over SMB from its share (`ep`: the host's endpoint)."""
    return file_copy.file_size(ep.on_share(place.share), place.rel)


def transfer(rec: dict, files: list[dict], lg) -> int:
    """Copy each file (skipping those already done) while the VM runs, one after another,
    paced by copy slots and bandwidth limits, each chunk recorded for resuming; returns bytes.
    (The downtime's files go by `workers.steps.downtime_copy`.)"""
    mid = rec["id"]
    cfg = context.config()
    source, destination = rec["source"], rec["destination"]
    pm = PathMap.for_record(cfg, rec)
    src_ep, dst_ep = context.smb_endpoint(source), context.smb_endpoint(destination)
    store = context.store()
    client = store.r
    throttle, slots, progress = Throttle(client), CopySlots(client), CopyProgress(store, mid, rec["state"])
    shared = SharedFiles(client)
    k_read, k_write = cfg.host(source).max_copies, cfg.host(destination).max_copies
    done = {f["path"] for f in rec.get("copied", [])}
    todo = [f for f in files if f["path"] not in done]
    rec = _plan_bytes(rec, todo, pm, src_ep)
    moved = 0
    for f in todo:
        src_path = f["path"]
        src_at, dst_at = pm.src_place(src_path), pm.dst_place(src_path)
        dst_path = dst_at.path
        src_share, dst_share = src_ep.on_share(src_at.share), dst_ep.on_share(dst_at.share)
        # one migration at a time decides on an ISO image or a golden parent several VMs
        # there may share
        sharable = f["kind"] in SHARED_KINDS
        deciding = (shared.deciding(destination, dst_path, mid, on_wait=lambda holder, p=dst_path: lg.info(
                        "waiting: migration %s is deciding on %s on %s", holder, p, destination))
                    if sharable else contextlib.nullcontext())
        with deciding:
            if dst_path not in rec.get("created_files", []) and file_copy.exists(dst_share, dst_at.rel):
                if not sharable:
                    refuse_existing(rec, dst_path)
                if file_copy.digest_of(dst_share, dst_at.rel) != file_copy.digest_of(src_share, src_at.rel):
                    raise HardFailure(f"{rec['destination']} has a different {dst_path}; "
                                      f"{SHARED_KINDS[f['kind']]}")
                lg.info("%s %s already on destination with the same content", f["kind"], dst_path)
                entry = {"path": src_path, "dest": dst_path, "bytes": 0, "digest": None, "shared": True,
                         "planned_bytes": rec["planned"][src_path]}
            else:
                if sharable:
                    shared.mark_ours(destination, dst_path)
                note_created_folders(mid, dst_ep, dst_at)
                note_created(mid, [dst_path])
                base = (rec.get("bytes_copied") or 0) + sum(
                    c.get("planned_bytes", 0) for c in rec.get("copied", []) if c.get("shared"))
                slot_wait = _SlotWait(mid, lg, source, destination, k_read, k_write)
                with slots.hold(f"{mid}:{dst_path}", source, destination, k_read, k_write, on_wait=slot_wait), \
                        progress.file_copy(dst_path, base) as on_bytes:
                    slot_wait.over()
                    entry, n = copy_verified(rec, src_path, lg, src_ep=src_ep, dst_ep=dst_ep, progress=on_bytes,
                                             throttle=BandwidthWaits(lambda n: throttle.wait(source, destination, n)),
                                             resume=RedisResumeRecord(client, mid, dst_path))
                moved += n
        rec = note_copied(mid, [entry])
    return moved
