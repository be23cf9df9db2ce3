"""The copy pool: move frozen files from the source share to the destination's.

Every file the migration creates on the destination is recorded before its first byte
is written, so a rollback removes exactly what we made and nothing that was there.
"""
from __future__ import annotations

import time

from workers import context, metrics, states
from workers.locks import LeaseKeeper
from workers.pipeline import HardFailure, pipeline_task, resume, send, start_rollback
from workers.plan import PathMap

PROGRESS_EVERY_S = 1.0


def _note_created(mid: str, dst_path: str) -> None:
    def change(rec):
        if dst_path not in rec.setdefault("created_files", []):
            rec["created_files"].append(dst_path)
    context.store().update(mid, change)


def transfer(rec: dict, files: list[dict], lg) -> int:
    """Copy each file (skipping those already done), verified by hash; returns bytes."""
    from workers.smb import copy as smb

    mid = rec["id"]
    pm = PathMap(context.config(), rec["source"], rec["destination"])
    src_ep, dst_ep = context.smb_endpoint(rec["source"]), context.smb_endpoint(rec["destination"])
    store = context.store()
    done = {f["path"] for f in rec.get("copied", [])}
    moved = 0
    for f in files:
        src_path = f["path"]
        if src_path in done:
            continue
        rel = pm.rel(src_path)
        dst_path = pm.dest(src_path)
        if dst_path not in rec.get("created_files", []) and smb.exists(dst_ep, rel):
            if f["kind"] != "iso":
                raise HardFailure(f"{rec['destination']} already has {dst_path}; "
                                  "remove it there or choose another destination")
            if smb.digest_of(dst_ep, rel) != smb.digest_of(src_ep, rel):
                raise HardFailure(f"{rec['destination']} has a different {dst_path}; "
                                  "rename one of the ISO images")
            lg.info("ISO %s already on destination with the same content", dst_path)
            entry = {"path": src_path, "dest": dst_path, "bytes": 0, "digest": None, "shared": True}
        else:
            _note_created(mid, dst_path)
            base = rec.get("bytes_copied") or 0
            last = [0.0]

            def progress(done_b, total_b, base=base, last=last):
                now = time.monotonic()
                if now - last[0] >= PROGRESS_EVERY_S:
                    last[0] = now
                    store.update(mid, lambda r: r.update(progress={
                        "file": dst_path, "file_bytes_done": done_b, "file_bytes_total": total_b,
                        "bytes_done": base + done_b, "at": time.time()}))

            res = smb.copy_file(src_ep, rel, dst_ep, rel, progress=progress)
            lg.info("copied %s (%d bytes, %.1f MB/s)", rel, res.bytes,
                    res.bytes / max(res.seconds, 1e-6) / 1e6)
            metrics.COPIED_BYTES.labels(source=rec["source"], destination=rec["destination"]).inc(res.bytes)
            moved += res.bytes
            entry = {"path": src_path, "dest": dst_path, "bytes": res.bytes, "digest": res.digest,
                     "digest_scheme": res.scheme,
                     "seconds": round(res.seconds, 3)}

        def change(r, entry=entry):
            r.setdefault("copied", []).append(entry)
            r["bytes_copied"] = (r.get("bytes_copied") or 0) + entry["bytes"]
        rec = store.update(mid, change)
    return moved


@pipeline_task("quickmig.copy", on_hard_failure=start_rollback)
def copy(mid: str, lg) -> None:
    rec = resume(mid, states.COPYING)
    if rec is None:
        return
    with LeaseKeeper(context.locks(), rec["vm_id"], mid):
        transfer(rec, rec["plan"]["frozen"], lg)
    context.store().transition(mid, {states.COPYING}, states.PREPARING)
    send("quickmig.prepare", mid)
