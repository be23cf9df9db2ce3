"""Human-readable views of a migration record (every string of it made safe for a terminal
first: producer.terminal)."""
from __future__ import annotations

import time

from producer import terminal
from workers.model import finished
from workers.model.states import ENDS

PHASE_ORDER = ("snapshot", "copy", "prepare", "cutover", "finish", "rollback")

# a retry is worth showing while it is pending or has just been made
RECENT_RETRY_S = 30


def _mb(n) -> str:
    return f"{(n or 0) / 2**20:.1f} MiB"


def _kind(kind: str, n: dict) -> str:
    shared = f", {n['shared']} shared" if n.get("shared") else ""
    return f"{kind} {n['files']} ({_mb(n['bytes'])}{shared})"


def phase_seconds(rec: dict) -> dict[str, float]:
    out = {}
    for name in PHASE_ORDER:
        span = rec.get("phases", {}).get(name)
        if span and "start" in span:
            out[name] = (span.get("end") or time.time()) - span["start"]
    return out


SOURCE_NAMES = {"save_bps": "save rate", "register_start_s": "register+start", "downtime_copy_bps": "copy rate"}


def sources(found: dict) -> str:
    """Where each part of a downtime prediction came from, in one line."""
    return ", ".join(f"{SOURCE_NAMES.get(k, k)} {v}" for k, v in found.items())


def _downtime_lines(rec: dict) -> list[str]:
    lines: list[str] = []
    if rec.get("downtime_seconds") is not None:
        lines.append(f"  downtime        {rec['downtime_seconds']:.2f} s")
    if rec.get("predicted_downtime_seconds") is not None:
        lines.append(f"  predicted       {rec['predicted_downtime_seconds']:.2f} s "
                     f"(after {len(rec.get('rounds', []))} pre-copy round(s))")
        if rec.get("prediction_sources"):
            lines.append(f"  predicted from  {sources(rec['prediction_sources'])}")
    if rec.get("downtime_bytes") is not None:
        lines.append(f"  moved while down {_mb(rec['downtime_bytes'])}")
    if rec.get("rollback_seconds") is not None:
        lines.append(f"  rollback        {rec['rollback_seconds']:.2f} s")
    return lines


def _progress_lines(rec: dict) -> list[str]:
    lines = []
    prog = rec.get("progress")
    if rec.get("bytes_total"):
        lines.append(f"  bytes planned   {_mb(rec['bytes_total'])}")
    if prog and rec["state"] in ("copying", "cutting_over"):
        rate = prog.get("rate_bps")
        eta = prog.get("eta_seconds")
        lines.append(f"  progress        {_mb(prog.get('bytes_done'))} of {_mb(prog.get('bytes_total'))}"
                     f", {rate / 1e6 if rate else 0:.1f} MB/s"
                     f", ETA {'?' if eta is None else f'{eta:.0f} s'}"
                     f" ({prog.get('file')})")
    return lines


def summary(rec: dict) -> str:
    rec = terminal.clean(rec)
    lines = [f"migration {rec['id']}: {rec['vm']!r} {rec['source']} -> {rec['destination']}: {rec['state']}"]
    if rec.get("waiting") and rec["state"] not in ENDS:  # a cancel may end it while it waits
        lines.append(f"  {rec['waiting']}")
    lines += _downtime_lines(rec)
    total = sum(phase_seconds(rec).values())
    copied = rec.get("bytes_copied") or 0
    lines.append(f"  bytes copied    {_mb(copied)}")
    copy_s = finished.copy_seconds(rec)
    if copy_s > 0:
        lines.append(f"  throughput      {copied / copy_s / 1e6:.1f} MB/s (while copying)")
    kinds = rec["copied_by_kind"] if "copied_by_kind" in rec else finished.copied_by_kind(rec)
    if kinds:
        lines.append("  files copied    " + ", ".join(_kind(k, v) for k, v in sorted(kinds.items())))
    for name, secs in phase_seconds(rec).items():
        lines.append(f"  {name:<15} {secs:.2f} s")
    if total:
        lines.append(f"  total           {total:.2f} s")
    lines += _progress_lines(rec)
    # --eject-unmovable-isos: emptied on the destination's copy only, once it is imported there
    label = "ejected ISO" if rec["state"] in ("finishing", "completed") else "ISO to eject"
    for e in rec.get("ejected_isos") or []:
        lines.append(f"  {label:<15} {e.get('path')} (DVD drive {e.get('drive') or '?'}, on {rec['destination']})")
    if rec.get("error"):
        lines.append(f"  error           {rec['error']}")
    retry = rec.get("retry")
    if retry and rec["state"] not in ENDS and retry["next_at"] > time.time() - RECENT_RETRY_S:
        wait = retry["next_at"] - time.time()
        lines.append(f"  retrying        {retry['step']}: attempt {retry['attempt']} after {retry['reason']}"
                     f", {f'next in {wait:.0f} s' if wait > 0 else 'running'}")
    return "\n".join(lines)


def one_line(rec: dict) -> str:
    rec = terminal.clean(rec)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["created_at"]))
    down = f"{rec['downtime_seconds']:.2f}s" if rec.get("downtime_seconds") is not None else "-"
    return f"{rec['id']}  {when}  {rec['state']:<13} {down:>8}  {rec['source']}->{rec['destination']}  {rec['vm']}"
