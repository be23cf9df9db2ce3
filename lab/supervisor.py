"""`python -m lab.supervisor --lab-dir DIR`: the lab's process supervisor.

Started last by `lab up`, stopped first by `lab down`. Every CHECK_EVERY_S it looks at
the processes recorded in lab.json and restarts any supervised one that died (a worker
pool's main process, an emulated host, the metrics exporter, beat, the HTTP API, the
intake, the webhook deliveries, a node's relay), with the same command line, log and working directory, so
a pool is never left empty. What the dead process left in its process group (a pool's orphaned children) is
stopped first. It exits when lab.json is gone. Production does the same with systemd (deploy/systemd,
Restart=always).

A lab host restart (`quickmig lab restart-host`, orchestrator.restart_host) is not a crash:
it stops and starts the host's emulator while holding the lab's lock, which every check
here takes too, so no check ever sees that emulator gone; its entry counts `reboots`, not
`restarts`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path

from lab import orchestrator, processes

CHECK_EVERY_S = 0.5
SUPERVISED = ("worker-", "emulator-", "relay-", "metrics", "beat", "api", "intake", "webhooks")

log = logging.getLogger("quickmig.lab.supervisor")


def supervised(name: str) -> bool:
    return name.startswith(SUPERVISED)


def _save(lab_file: Path, lab: dict) -> None:
    tmp = lab_file.with_name(".lab.supervisor.tmp")
    tmp.write_text(json.dumps(lab, indent=1))
    tmp.replace(lab_file)


def check_once(lab_file: Path) -> list[str]:
    """Restart what died; returns the names restarted."""
    with orchestrator.locked(lab_file.parent):
        return _restart_dead(lab_file)


def _restart_dead(lab_file: Path) -> list[str]:
    try:
        lab = json.loads(lab_file.read_text())
    except FileNotFoundError:
        raise SystemExit(0) from None
    restarted = []
    for name, entry in lab["processes"].items():
        if not supervised(name) or processes.alive(entry):
            continue
        processes.stop(entry, timeout_s=0.5)  # whatever the dead leader left in its group
        new = processes.spawn(entry["argv"], Path(entry["log"]), env=dict(os.environ),
                              cwd=Path(entry["cwd"]) if entry.get("cwd") else None)
        new["restarts"] = entry.get("restarts", 0) + 1
        lab["processes"][name] = new
        restarted.append(name)
        log.warning("%s (pid %d) died; restarted as pid %d (restart %d)",
                    name, entry["pid"], new["pid"], new["restarts"])
    if restarted:
        _save(lab_file, lab)
    return restarted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.supervisor")
    ap.add_argument("--lab-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor: %(message)s")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    lab_file = args.lab_dir.resolve() / "lab.json"
    while not stopping:
        check_once(lab_file)
        time.sleep(CHECK_EVERY_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
