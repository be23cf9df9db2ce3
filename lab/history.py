"""Where each VM ran, and when: the emulated hosts' start/stop record, across hosts.

Every emulated host appends its VM events (create, start, recover, save, stop, remove,
import) with a timestamp to the lab's shared `events.jsonl`. Replaying them per VM id in
time order says which hosts were running it at every instant; two at once is an overlap,
the one thing a migration must never cause (DESIGN section 3.2).
"""
from __future__ import annotations

import json
from pathlib import Path

RUNS = {"start", "recover"}
STOPS = {"stop", "save", "remove"}


def load_events(lab_dir: Path) -> list[dict]:
    try:
        lines = (Path(lab_dir) / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a killed emulator
    return out


def overlaps(events: list[dict], vm_id: str | None = None) -> list[dict]:
    """Every moment a VM started on a host while another host was still running it."""
    running: dict[str, set[str]] = {}
    found = []
    for ev in sorted(events, key=lambda e: e["t"]):
        vid = ev.get("vm_id")
        if vm_id is not None and vid != vm_id:
            continue
        hosts = running.setdefault(vid, set())
        if ev["event"] in RUNS:
            others = hosts - {ev["host"]}
            if others:
                found.append({"vm_id": vid, "vm_name": ev.get("vm_name"), "t": ev["t"],
                              "started_on": ev["host"], "still_running_on": sorted(others)})
            hosts.add(ev["host"])
        elif ev["event"] in STOPS:
            hosts.discard(ev["host"])
    return found


def starts(events: list[dict], vm_id: str) -> list[tuple[float, str]]:
    return [(e["t"], e["host"]) for e in events if e.get("vm_id") == vm_id and e["event"] in RUNS]
