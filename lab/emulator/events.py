"""What a host records for the lab to check afterwards.

`DIR/events.jsonl` (shared by every host): one JSON line per VM event (create, start, save,
stop, checkpoint, merge, import, remove, recover) and per file operation in a VM's folder.
`DIR/guests/<vm_id>.journal`: the host's lines in a guest's journal (start, save, stop,
recover; see guest.py for the whole format).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lab.emulator.guest import append_line
from lab.emulator.hostpaths import HostPaths, is_guid
from lab.emulator.vm import VM


class EventLog:
    def __init__(self, host_name: str, lab_dir: Path, paths: HostPaths):
        self.host_name = host_name
        self.paths = paths
        self.events_file = lab_dir / "events.jsonl"
        self.guests_dir = lab_dir / "guests"

    def event(self, vm: VM, event: str, **extra) -> None:
        self._append_event(vm.id, event, vm_name=vm.name, **extra)

    def _append_event(self, vm_id: str, event: str, **extra) -> None:
        rec = {"t": time.time(), "host": self.host_name, "vm_id": vm_id, "event": event}
        rec.update(extra)
        append_line(self.events_file, json.dumps(rec, ensure_ascii=True))

    def file_event(self, event: str, host_path: str) -> None:
        """A file operation in a VM's folder (named by its id), registered here or not: so
        the record shows a destination's part in a migration before any import."""
        found = self.paths._root_of(host_path)
        rel = host_path[len(found[0]) + 1:] if found else ""
        folder = rel.split("\\", 1)[0].lower()
        if is_guid(folder):
            self._append_event(folder, event, path=host_path)

    def journal_path(self, vm_id: str) -> Path:
        return self.guests_dir / f"{vm_id}.journal"

    def journal(self, vm: VM, line: str) -> None:
        append_line(self.journal_path(vm.id), f"{line} host={self.host_name} t={time.time():.6f}")
