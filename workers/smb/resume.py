"""What a copy remembers between attempts (its resume record): which chunks already
landed, with their digests.

A chunk is recorded only after the destination acknowledged its WRITE, so after a crash
the recorded chunks are on the destination's partial file and only the chunks that were
in flight (at most one per stream) are copied again. `will_write` is called before a
chunk is sent, so `bytes_sent` over all attempts minus the file size is how much was
copied twice.

Records are tied to the source's identity (size, last write time, change time): a source
that is not the one the chunks came from starts the copy over.

`MemoryResumeRecord` lives as long as one copy_file call (no resume); the copy pool keeps
one in Redis (`workers.coord.copy_resume`).
"""
from __future__ import annotations

import threading
from typing import Protocol


class ResumeRecord(Protocol):
    """What copy_file asks of a resume record; implementations store it somewhere that
    may outlive a process."""

    def load(self, identity: dict) -> dict[int, str]:
        """The chunks recorded for a source with this identity; forgets any other source's."""

    def will_write(self, nbytes: int) -> None:
        """`nbytes` are about to be sent (counted over every attempt)."""

    def record(self, index: int, digest: str) -> None:
        """Chunk `index` landed on the destination with this SHA-256."""

    def bytes_sent(self) -> int:
        """Bytes sent over every attempt."""

    def clear(self) -> None:
        """Forget everything: the copy is done, or must start over."""


class MemoryResumeRecord:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.identity: dict | None = None
        self.chunks: dict[int, str] = {}
        self.sent = 0

    def load(self, identity: dict) -> dict[int, str]:
        with self._lock:
            if identity != self.identity:
                self.identity, self.chunks = dict(identity), {}
            return dict(self.chunks)

    def will_write(self, nbytes: int) -> None:
        with self._lock:
            self.sent += nbytes

    def record(self, index: int, digest: str) -> None:
        with self._lock:
            self.chunks[index] = digest

    def bytes_sent(self) -> int:
        return self.sent

    def clear(self) -> None:
        with self._lock:
            self.identity, self.chunks, self.sent = None, {}, 0
