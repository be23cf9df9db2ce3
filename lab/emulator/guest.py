"""The guest writer: what a running VM's guest does to its disk, and its journal.

While a VM runs on a host, one thread appends numbered 4 KiB records (disk.make_record)
to the VM's active disks at `write_rate_kbps` KiB/s (record `seq` to the disk `target(seq)`
names: with several disks, each in turn), and after each record is written
appends its seq to the shared journal `DIR/guests/<vm_id>.journal`. So the journal holds
only acknowledged writes: a seq in the journal was on the disk first.

Journal lines (one per line, ASCII):

    <seq>                                         an acknowledged write
    start resumed_from=<N> host=<h> t=<time>      resumed from saved memory (counter N)
    start resumed_from=cold disk_seq=<N> host=..  cold boot; the guest reads its disk and
                                                  continues after the highest record on it
    save counter=<N> host=..                      Save-VM: memory (counter N) went to the .vmrs
    stop counter=<N> host=..                      Stop-VM -TurnOff: memory lost
    recover resumed_from=<N> host=..              the emulator process restarted while the VM
                                                  was Running; the writer continues after the
                                                  highest record on the disk
    error <text> host=..                          the writer could not write (VM hung)

The writer and the operations that switch the active disk (checkpoint, merge) share the
VM's `io_lock`: a record is written and acknowledged entirely under it, so a switch never
falls between a write and its acknowledgement, and `stop()` returns only after the last
acknowledged write is on the disk.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lab.emulator import disk

log = logging.getLogger("lab.emulator.guest")

RECORD_KIB = disk.RECORD_BYTES // 1024


def append_line(path: Path, line: str) -> None:
    """Append one line to a file shared by several processes (O_APPEND + flock)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.write(fd, data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class GuestWriter:
    """One running guest. `target(seq)` returns the local path of the active disk record
    `seq` goes to (called under io_lock before each write); `on_error` is called once if a
    write fails."""

    def __init__(self, vm_id: str, host: str, journal: Path, io_lock: threading.RLock,
                 target: Callable[[int], Path], rate_kbps: float, counter: int,
                 on_error: Callable[[str], None] | None = None):
        self.vm_id = vm_id
        self.host = host
        self.journal = journal
        self.io_lock = io_lock
        self.target = target
        self.rate_kbps = float(rate_kbps)
        self.counter = int(counter)  # last acknowledged seq
        self.on_error = on_error
        self.error: str | None = None
        self.started_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.rate_kbps <= 0:
            return
        self._thread = threading.Thread(target=self._run, name=f"guest-{self.vm_id[:8]}", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop writing; returns the last acknowledged seq. Never call it holding io_lock."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        return self.counter

    @property
    def alive(self) -> bool:
        return self.error is None and not self._stop.is_set()

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        interval = RECORD_KIB / self.rate_kbps
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            due = time.monotonic()
            while not self._stop.is_set():
                due += interval
                now = time.monotonic()
                if due > now:
                    if self._stop.wait(due - now):
                        break
                elif now - due > 1.0:
                    due = now  # fell behind (host busy): do not burst to catch up
                with self.io_lock:
                    if self._stop.is_set():
                        break
                    seq = self.counter + 1
                    try:
                        disk.append_records(self.target(seq), self.vm_id, [seq])
                    except Exception as e:  # noqa: BLE001 - the VM's disk vanished or broke: the guest hangs
                        self._fail(f"write of record {seq} failed: {e}")
                        return
                    # acknowledged only now: the record is on the disk
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        os.write(fd, f"{seq}\n".encode())
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self.counter = seq
        finally:
            os.close(fd)

    def _fail(self, why: str) -> None:
        self.error = why
        log.error("guest %s on %s: %s", self.vm_id, self.host, why)
        try:
            append_line(self.journal, f"error {why.replace(chr(10), ' ')} host={self.host}")
        except OSError:
            pass
        if self.on_error:
            self.on_error(why)
