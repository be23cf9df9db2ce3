"""What an operation costs on a real host, for benchmarks that must not believe the lab's 20 ms.

On a Windows Server host every operation quickmig runs is a new WinRS shell, a new
powershell.exe and, for a script that calls a Hyper-V cmdlet, a first use of the Hyper-V
module in that process, before the cmdlets do any work; cmdlets that move bytes (Save-VM,
a restore by Start-VM, hashing) take time by size. A profile holds those costs, and the
emulator spends them (it sleeps where a real host would work): `fast` spends nothing (the
lab as it always was), `windows` spends the figures below. docs/benchmarks.md says which
are published and which are assumptions.

A process starts when its WinRS command is created, before its script arrives: a client
may start the processes it will need ahead of time (workers.hyperv.driver.WarmProcess).
Every process start and module load is appended to the host's cost log
(`hosts/<host>/emulator/costs.jsonl`, one JSON object per line with its time), so a
benchmark can count those that fell inside a downtime.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.emulator.errors import OpError
from workers.hyperv import scripts
from workers.model.chunks import CHUNK_BYTES

MB = 1_000_000


@dataclass(frozen=True)
class HostProfile:
    name: str
    shell_create_s: float = 0.0      # WinRS Create: the shell and its host process
    process_start_s: float = 0.0     # powershell.exe, cold, per command
    module_load_s: float = 0.0       # Import-Module Hyper-V, the first Hyper-V cmdlet in a process
    op_s: dict[str, float] = field(default_factory=dict)  # each script's cmdlets, fixed part
    save_bps: float = 0.0            # Save-VM writes the memory (0: no rate cost)
    restore_bps: float = 0.0         # Start-VM of a Saved VM reads it back
    hash_bps: float = 0.0            # SHA256Cng over a file (file_hash)

    def work_s(self, op: str, memory_bytes: int = 0, hashed_bytes: int = 0, restored: bool = False) -> float:
        """What the operation's cmdlets take on a real host, after its process has started:
        the fixed part, and by size the memory Save-VM writes (or a restore reads) and the bytes
        file_hash reads."""
        t = self.op_s.get(op, 0.0)
        if op == "save_vm" and self.save_bps:
            t += memory_bytes / self.save_bps
        if op == "start_vm" and restored and self.restore_bps:
            t += memory_bytes / self.restore_bps
        if op == "file_hash" and self.hash_bps:
            t += hashed_bytes / self.hash_bps
        return t


FAST = HostProfile("fast")

# PowerShell/PowerShell#4239: Windows PowerShell 5.1 takes about 0.6 s to start, cold. The
# other figures are assumptions (no published measurement): see docs/benchmarks.md.
WINDOWS = HostProfile(
    "windows",
    shell_create_s=0.15,
    process_start_s=0.6,
    module_load_s=0.5,
    op_s={"list_vms": 0.2, "describe_vm": 0.4, "host_info": 0.3, "checkpoint_vm": 2.0,
          "remove_snapshots": 0.5, "save_vm": 0.5, "start_vm": 1.0, "stop_vm": 0.5,
          "wait_heartbeat": 0.5, "reparent_disks": 0.2, "compare_vm": 1.0, "import_vm": 1.5,
          "remove_vm": 0.5, "delete_files": 0.3, "file_hash": 0.05},
    save_bps=500 * MB,
    restore_bps=1000 * MB,
    hash_bps=400 * MB,
)

PROFILES = {p.name: p for p in (FAST, WINDOWS)}

NO_HYPERV_MODULE = scripts.NO_HYPERV_MODULE


class CostLog:
    """The host's cost log: one line per process start and per module load, with its time
    (when it began) and what it cost; `op` is the operation, where it was known by then (a
    process starts before its script arrives)."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "costs.jsonl"
        self._lock = threading.Lock()

    def note(self, event: str, op: str | None, seconds: float) -> None:
        line = json.dumps({"t": time.time(), "event": event, "op": op, "s": seconds}, separators=(",", ":"))
        with self._lock, self.path.open("a") as f:
            f.write(line + "\n")


def read_log(state_dir: Path) -> list[dict]:
    path = state_dir / "costs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spend(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def work_s(profile: HostProfile, model, op: str, args: dict) -> float:
    """The operation's cost on `profile`, sized from the host's state before it runs (it changes
    that state: a saved VM is running after Start-VM)."""
    if profile is FAST:
        return 0.0
    memory, restored, hashed = 0, False, 0
    if op in ("save_vm", "start_vm"):
        vm = model.vms.get(str(args.get("vm_id", "")).lower())
        if vm is not None:
            memory, restored = vm.running_memory_bytes, vm.state == "Saved"
    elif op == "file_hash" and isinstance(args.get("path"), str):
        try:
            size = model.paths.local(args["path"]).stat().st_size
        except (OSError, ValueError, OpError):
            size = 0
        count = args.get("count")
        hashed = min(size, int(count) * CHUNK_BYTES) if isinstance(count, int) else size
    return profile.work_s(op, memory, hashed, restored)
