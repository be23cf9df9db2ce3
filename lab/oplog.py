"""The host calls a lab's worker logs record (workers.hyperv.driver logs one line per call:
`hyperv op=OP host=HOST took=Ns outcome=OUTCOME`): what the partition test and bench/chaos.py
read to tell when a node acted on a host."""
from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import NamedTuple

OP_LINE = re.compile(r"^(\S+ \S+) .* hyperv op=(\S+) host=(\S+) took=([0-9.]+)s outcome=(\S+)")


class HostCall(NamedTuple):
    started: float  # epoch seconds: the line's time (when the call returned) less its duration
    ended: float
    op: str
    host: str
    outcome: str


def host_calls(log: Path) -> list[HostCall]:
    """Every host call `log` records (text log format), in order."""
    found = []
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        m = OP_LINE.match(line)
        if m:
            ended = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append(HostCall(ended - float(m.group(4)), ended, m.group(2), m.group(3), m.group(5)))
    return found


def node_calls(lab_dir: Path, node: str) -> list[HostCall]:
    """Every host call of every worker of node `node` (lab/nodes.py), by start time."""
    return sorted(c for log in (Path(lab_dir) / "logs").glob(f"worker-*-{node}.log") for c in host_calls(log))
