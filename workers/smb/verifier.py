"""Checks a copy's landed chunks against digests the destination host computes, while the
rest of the file is still copying.

The destination host hashes what it has on disk (the driver's `file_hash` for a range of
chunks); `Verifier.run` asks it for the chunks that have landed in one unbroken run from
the start, in ranges of at least MIN_RANGE chunks (so a copy costs a host call per 128 MiB
or more, not per chunk) and at most chunks.MAX_RANGE, and compares each with the SHA-256
taken while reading the source. So by the time the last chunk lands most of the file has
been checked, and only the tail is left (hashing after the copy added ~0.8 s per GiB on
the lab machine, minutes for a large disk on a real host).

The last chunk is checked only after `finish()`: until the copy cut the partial file to
the source's size, a partial file reused from a longer earlier attempt could still have
bytes beyond the end that the host would hash with it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from workers.model import chunks
from workers.smb.errors import CopyVerificationError

MIN_RANGE = 16  # chunks (128 MiB)
WAIT_S = 0.5  # how often a waiting verifier looks at `stop`

HostDigests = Callable[[int, int], list[str]]  # (first chunk, count) -> their SHA-256s, hex


class Verifier:
    def __init__(self, host_digests: HostDigests, digests: dict[int, str], n_chunks: int, stop: threading.Event,
                 describe: Callable[[int], str], between: Callable[[], None] | None = None):
        """`digests` (chunk -> SHA-256 hex of what was read from the source) fills as chunks
        land; `describe(index)` names a chunk in an error; `stop` set means give up;
        `between()` runs after each range checked before finish() (the copier flushes what
        landed so far, so that the flush after the last chunk has little left to write)."""
        self.host_digests, self.digests, self.n = host_digests, digests, n_chunks
        self.stop, self.describe, self.between = stop, describe, between
        self.checked = 0  # chunks [0, checked) agree with the host
        self._ready = 0  # chunks [0, _ready) have landed
        self._finished = False
        self._cond = threading.Condition()

    def landed(self) -> None:
        """A chunk landed (the caller has put its digest in `digests`)."""
        with self._cond:
            self._cond.notify()

    def finish(self) -> None:
        """Every chunk landed and the file has its final size: check the rest."""
        with self._cond:
            self._finished = True
            self._cond.notify()

    def _next_range(self) -> tuple[int, int] | None:
        with self._cond:
            while True:
                while self._ready < self.n and self._ready in self.digests:
                    self._ready += 1
                limit = self._ready if self._finished else min(self._ready, self.n - 1)
                waiting = limit - self.checked
                if waiting > 0 and (self._finished or waiting >= MIN_RANGE):
                    return self.checked, min(waiting, chunks.MAX_RANGE)
                if self.checked >= self.n or self.stop.is_set() or (self._finished and waiting <= 0):
                    return None
                self._cond.wait(WAIT_S)

    def run(self) -> None:
        """Check chunks until all are checked (after finish()) or `stop` is set; a chunk that
        differs is CopyVerificationError. Any failure here sets `stop` for the streams too."""
        try:
            self._check()
        except BaseException:
            self.stop.set()
            raise

    def _check(self) -> None:
        while (span := self._next_range()) is not None:
            first, count = span
            got = self.host_digests(first, count)[:count]
            if not got:
                raise CopyVerificationError(f"{self.describe(first)}: the destination host has no such chunk "
                                            "(the copy that landed is too short)")
            for index, digest in enumerate(got, start=first):
                if digest.lower() != self.digests[index]:
                    raise CopyVerificationError(
                        f"{self.describe(index)} that landed hashes {digest.lower()} on the destination host, but "
                        f"what was read from the source hashes {self.digests[index]}")
            self.checked = first + len(got)
            if self.between is not None and not self._finished:
                self.between()

    @property
    def complete(self) -> bool:
        return self.checked >= self.n
