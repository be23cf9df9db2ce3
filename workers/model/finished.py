"""What a migration record keeps once it has ended (completed, rolled back or failed).

An ended record stays in Redis for `keys.RECORD_TTL_S` (30 days) and a fleet ends thousands
of them, so it keeps what its readers need afterwards and sheds what only a running step or
a rollback read:

- `planned`, `downtime_paths` and `progress` feed the copy while it runs (bytes_total, the
  cutover's file list, `quickmig watch`); nothing reads them after the end.
- `created_files` and `created_folders` say what a rollback removes; the end has released
  the copy resume records and the destination's marker from them (workers.engine.step.end)
  before the record is read again. A `failed` record keeps both: what it left on the
  destination is for someone to clean by hand, and the orphan sweep leaves a failed
  migration's marker to them (workers.steps.orphans.ENDED).
- `copied` (one entry per file, with its digest) becomes `copied_by_kind`: per kind of file,
  how many, their bytes, the seconds they took, what was resumed, re-sent, held by the
  bandwidth limits and shared (`quickmig status` shows the throughput from it). A `failed`
  record keeps every entry: which source files were copied is what cleaning its source by
  hand needs. So does a completed one whose source VM is kept (--keep-source) until the
  reaper has removed it: `workers.steps.finish.source_files` deletes only files in
  `copied`, never an ISO image of `plan`.
- `plan` (the frozen files and their kinds) is read by the same removal only.
- `snapshot` keeps the checkpoint's id and name: its files were merged at the end.

Everything else stays: the history, phases, downtime and its prediction, the error.
"""
from __future__ import annotations

from typing import Any

from workers.model import states

# shed at every end: read only while a migration runs
RUNNING_ONLY = ("planned", "downtime_paths", "progress")
# read by a rollback, or by someone cleaning up a failed migration
ROLLBACK_ONLY = ("created_files", "created_folders")

DISK_SUFFIXES = (".vhdx", ".vhd", ".avhdx", ".avhd")
# summed per kind in `copied_by_kind`
SUMMED = ("bytes", "bytes_sent", "bytes_reused", "seconds", "throttled_s")


def source_kept(rec: dict) -> bool:
    """A completed migration whose source VM is kept and not yet removed by the reaper."""
    return bool(rec.get("source_kept_until")) and "source_removed_at" not in rec


def kind_of(path: str, plan_kinds: dict[str, str]) -> str:
    """The plan's kind of a base-copy file (disk, parent, checkpoint, iso); the downtime's
    files are not in the plan: its leaf disks are `disk`, its configuration and memory `state`."""
    found = plan_kinds.get(path.lower())
    if found:
        return found
    return "disk" if path.lower().endswith(DISK_SUFFIXES) else "state"


def copied_by_kind(rec: dict) -> dict[str, dict[str, Any]]:
    """Per kind: files (entries in `copied`), shared (of those, found on the destination and
    shared, nothing copied), and the sums of SUMMED."""
    plan_kinds = {f["path"].lower(): f["kind"] for f in (rec.get("plan") or {}).get("frozen", [])}
    out: dict[str, dict[str, Any]] = {}
    for c in rec.get("copied", []):
        k = out.setdefault(kind_of(c["path"], plan_kinds), {"files": 0, "shared": 0, **dict.fromkeys(SUMMED, 0)})
        k["files"] += 1
        k["shared"] += 1 if c.get("shared") else 0
        for f in SUMMED:
            k[f] += c.get(f) or 0
    for k in out.values():
        k["seconds"], k["throttled_s"] = round(k["seconds"], 3), round(k["throttled_s"], 3)
    return out


def compact(rec: dict) -> dict:
    """The record as it is stored once ended (`rec` itself is left as it is); an active one
    unchanged. Applying it again changes nothing."""
    if rec.get("state") not in states.ENDS:
        return rec
    out = {k: v for k, v in rec.items() if k not in RUNNING_ONLY}
    if rec["state"] == states.FAILED:
        return out
    for k in ROLLBACK_ONLY:
        out.pop(k, None)
    if source_kept(rec):
        return out
    if "copied" in out:
        out["copied_by_kind"] = copied_by_kind(out)
        del out["copied"]
    out.pop("plan", None)
    if isinstance(out.get("snapshot"), dict):
        out["snapshot"] = {k: v for k, v in out["snapshot"].items() if k in ("id", "name")}
    return out


def copy_seconds(rec: dict) -> float:
    """Seconds spent copying, from the per-file entries or, once ended, their summary."""
    if "copied" in rec:
        return sum(c.get("seconds") or 0 for c in rec["copied"])
    return sum(k.get("seconds") or 0 for k in (rec.get("copied_by_kind") or {}).values())
