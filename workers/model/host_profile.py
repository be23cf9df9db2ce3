"""A host's calibrated costs: what `quickmig calibrate` measured there without touching a VM.

The downtime prediction (workers.steps.precopy) uses these figures for a host until its own
switchovers measured the costs they stand for (keys.cutover_costs); a record of the gate and
a dry run name which source each part of the prediction came from.
"""
from __future__ import annotations

import json
import time

import redis

from workers.model import keys

# Seconds, each the median of the calibration's samples, and rates in bytes per second.
FIELDS = ("shell_create_s", "process_start_s", "module_load_s", "cmdlet_s",
          "hash_bps", "smb_write_bps", "smb_read_bps")


def save(r: redis.Redis, host: str, figures: dict) -> dict:
    """Store `figures` (every FIELDS entry) as `host`'s calibration, with the time measured."""
    missing = [f for f in FIELDS if not isinstance(figures.get(f), (int, float))]
    if missing:
        raise ValueError(f"a calibration of {host} needs {', '.join(missing)}")
    doc = {**{f: float(figures[f]) for f in FIELDS}, "measured_at": float(figures.get("measured_at") or time.time())}
    r.set(keys.host_calibration(host), json.dumps(doc, separators=(",", ":")))
    return doc


def load(r: redis.Redis, host: str) -> dict | None:
    """`host`'s calibration, or None if it was never calibrated (or the entry is unreadable)."""
    raw = r.get(keys.host_calibration(host))
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(f), (int, float)) for f in FIELDS):
        return None
    return doc


def when(doc: dict) -> str:
    """The calibration's time, ISO 8601 UTC to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc["measured_at"]))
