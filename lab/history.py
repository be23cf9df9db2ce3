"""Where each VM ran, and when: the emulated hosts' record of VM events, across hosts.

Every emulated host appends its VM events (create, start, recover, save, stop, remove,
import, checkpoint, merge) and the file operations in a VM's folder (file_hash, delete)
with a timestamp to the lab's shared `events.jsonl`. Replaying them per VM id in time
order says which hosts were running it at every instant; two at once is an overlap, the
one thing a migration must never cause (docs/design.md section 3.2).

The same record shows each migration's activity on the hosts (`migration_spans`), with
no help from quickmig's own bookkeeping: from its first `quickmig-` checkpoint on the
source to the moment it is over there, which is the source VM's removal (completed), its
stop (completed, source kept), or the merge of the last checkpoint taken for it back on
the source (rolled back). The span counts on the source and on every other host that
acted on the VM meanwhile (the destination: hashing copies, import, start, merge, clean
up). `max_concurrent_migrations` gives the most spans at once per host.
"""
from __future__ import annotations

import json
from pathlib import Path

from workers.coord import audit

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


MIGRATION_CHECKPOINT = "quickmig-"
OVER = {"remove", "stop"}  # the source VM's end once a migration completed


def migration_spans(events: list[dict]) -> list[dict]:
    """Each migration's span in the record: vm_id, snapshot (its checkpoint name), source,
    hosts, start, end, and open (True when the record ends before the migration does)."""
    spans: list[dict] = []
    open_: dict[str, dict] = {}
    for ev in sorted(events, key=lambda e: e["t"]):
        vid, kind = ev.get("vm_id"), ev["event"]
        span = open_.get(vid)
        if kind == "checkpoint" and str(ev.get("snapshot", "")).startswith(MIGRATION_CHECKPOINT):
            if span is not None and span["snapshot"] != ev["snapshot"]:
                span = None  # the last one never finished in the record; a new migration begins
            if span is None:
                span = {"vm_id": vid, "snapshot": ev["snapshot"], "source": ev["host"], "hosts": {ev["host"]},
                        "start": ev["t"], "end": ev["t"], "open": True, "_frozen": set()}
                spans.append(span)
                open_[vid] = span
            span["_frozen"].add(ev.get("snapshot_id"))  # pre-copy rounds check point again
            continue
        if span is None:
            continue
        span["hosts"].add(ev["host"])
        span["end"] = ev["t"]
        on_source = ev["host"] == span["source"]
        if kind == "merge" and on_source and ev.get("snapshot") == span["snapshot"]:
            span["_frozen"].discard(ev.get("snapshot_id"))
            over = not span["_frozen"]
        else:
            over = on_source and kind in OVER
        if over:
            span["open"] = False
            del open_[vid]
    for span in spans:
        del span["_frozen"]
        span["hosts"] = sorted(span["hosts"])
    return spans


def max_concurrent_migrations(events: list[dict]) -> dict[str, int]:
    """Per host, the most migrations whose spans (see migration_spans) overlapped."""
    changes = []
    for i, span in enumerate(migration_spans(events)):
        for host in span["hosts"]:
            changes += [(span["start"], host, i, True), (span["end"], host, i, False)]
    return audit.peak(changes)
