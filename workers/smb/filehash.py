"""The whole-file SHA-256 of a copy's source, computed from the chunks the streams read.

Streams finish chunks out of order; SHA-256 needs the bytes in file order. `InOrderHash`
takes each chunk as its stream is done with it, keeps those that arrived early, and
hashes whatever run of chunks is next. Memory is bounded: a stream whose chunk is
`window` or more chunks ahead of the next one to hash waits (the chunk it waits for was
handed out earlier, so it is already being read by another stream and never waits).

The stream that delivers the next chunk hashes it, and any early ones that follow, in
its own thread: hashlib releases the GIL on large buffers, so no extra thread is needed.
The result is compared with a SHA-256 computed on the destination host (the driver's
`file_hash`, Get-FileHash), which makes reading the copy back over SMB unnecessary.
"""
from __future__ import annotations

import hashlib
import threading


class InOrderHash:
    def __init__(self, window: int, stop: threading.Event | None = None):
        self.window = max(1, int(window))
        self.stop = stop or threading.Event()
        self._h = hashlib.sha256()
        self._next = 0
        self._early: dict[int, bytes] = {}
        self._cond = threading.Condition()

    def add(self, index: int, data: bytes) -> None:
        """Chunk `index` (0-based, every chunk of the file exactly once)."""
        with self._cond:
            while index >= self._next + self.window and not self.stop.is_set():
                self._cond.wait(0.5)
            if self.stop.is_set():
                return
            if index != self._next:
                self._early[index] = data
                return
        while data is not None:  # this thread owns hashing until the run of ready chunks ends
            self._h.update(data)
            with self._cond:
                self._next += 1
                data = self._early.pop(self._next, None)
                self._cond.notify_all()

    @property
    def chunks_hashed(self) -> int:
        with self._cond:
            return self._next

    def hexdigest(self) -> str:
        with self._cond:
            if self._early:
                raise RuntimeError(f"chunks {sorted(self._early)} arrived but chunk {self._next} never did")
            return self._h.hexdigest()
