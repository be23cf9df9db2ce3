"""Start, find and stop the lab's processes by pid.

Each process gets its own session (process group), so stopping it also stops whatever
it forked (Celery's pool children, smbd's per-client children). A pid is only signalled
while its start time still matches what we recorded, so a recycled pid is never hit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def spawn(argv: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None) -> dict:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    return {"pid": proc.pid, "start": start_time(proc.pid), "log": str(log), "argv": argv,
            "cwd": str(cwd) if cwd else None}


def alive(entry: dict) -> bool:
    st = start_time(entry["pid"])
    if st is None or st != entry.get("start"):
        return False
    try:
        with open(f"/proc/{entry['pid']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _live_groups(pgids: set[int]) -> set[int]:
    """Which of these process groups still have a member that is not a zombie. A zombie has
    exited: signalling it succeeds, but it waits only for its parent (init, for a lab process
    whose launcher has exited) to reap it, which on some machines takes seconds."""
    live = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while we looked
        if fields[0] != "Z" and int(fields[2]) in pgids:
            live.add(int(fields[2]))
    return live


def stop(entry: dict, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after the timeout."""
    stop_all([entry], timeout_s)


def stop_all(entries: list[dict], timeout_s: float = 10.0) -> None:
    """stop() for several process groups at once: every one gets its SIGTERM first and they
    share the deadline, so stopping them takes as long as the slowest, not the sum."""
    live = _live_groups({e["pid"] for e in entries})
    groups = set()
    for entry in entries:
        pid = entry["pid"]
        if alive(entry):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        elif pid not in live:  # leader gone: only what it left in its group, if anything
            continue
        groups.add(pid)
    left = _wait_for(groups, time.monotonic() + timeout_s, every_s=0.1)
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_for(left, time.monotonic() + 5, every_s=0.05)
    for pid in groups:
        _reap(pid)


def _wait_for(groups: set[int], deadline: float, every_s: float) -> set[int]:
    """Reap our own and wait until none of `groups` lives or the deadline; those still living."""
    left = _live_groups(groups)
    while left and time.monotonic() < deadline:
        for pid in left:
            _reap(pid)
        time.sleep(every_s)
        left = _live_groups(left)
    return left


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_for_log(path: Path, needle: str, timeout_s: float, entry: dict) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if needle in path.read_text(errors="replace"):
                return
        except FileNotFoundError:
            pass
        if not alive(entry):
            raise RuntimeError(f"{entry['argv'][0]} exited during start; see {path}")
        time.sleep(0.2)
    raise TimeoutError(f"no {needle!r} in {path} after {timeout_s}s")
