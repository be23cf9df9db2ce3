"""One stream's chunks, pipelined: READs in flight while the previous chunk is written.

A stream owns `depth` chunk buffers (8 MiB + wire.SINK_SLACK each, reused for the whole
copy: no allocation, no page faults per chunk). `ChunkReader` keeps a READ in flight for
every free buffer, the data received straight into the buffer (workers.smb.wire), and
hands the chunks out in the order it took them; `copy_chunks` sends each chunk's WRITE
from the same buffer, hashes it while the WRITE is in flight, and gives the buffer back
for the next READ once the server acknowledged the WRITE. So the source server reads
chunk n+1 while the destination writes chunk n, and one stream keeps both busy (a serial
read-then-write stream left each idle half the time).
"""
from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from smbprotocol.connection import Request
from smbprotocol.open import Open

from workers.model import chunks
from workers.smb import files, wire
from workers.smb.errors import SmbError, SourceChangedError

DEPTH = 2  # chunk buffers per stream: one being written while the next one is read
DRAIN_S = 10  # after a failure, how long to wait for answers still on the wire

Errors = Callable[[], AbstractContextManager[None]]  # a fresh smb_errors(...) (workers.smb.errors) per request
_Reading = tuple[int, int, int, memoryview, list[Request]]  # a chunk's index, offset, length, buffer, READs


def buffers(depth: int) -> list[memoryview]:
    return [memoryview(bytearray(chunks.CHUNK_BYTES + wire.SINK_SLACK)) for _ in range(depth)]


def _drain(fh: Open, requests: Iterable[Request]) -> None:
    """Wait (briefly) for answers to requests we no longer care about, so that none lands
    in a buffer after it was given back and the connection's table forgets them."""
    for req in requests:
        try:
            fh.connection.receive(req, timeout=DRAIN_S)
        except Exception:  # noqa: BLE001 - the failure that got us here is what the caller reports
            pass


class ChunkReader:
    """Yields (index, offset, data, buffer) for the chunks `next_index()` hands out, `data`
    the chunk's bytes in `buffer`, one of `free`'s; the caller appends `buffer` to `free`
    again when done with it."""

    def __init__(self, fh: Open, total: int, next_index: Callable[[], int | None], free: list[memoryview],
                 what: str, errors: Errors, request: int = files.MAX_CHUNK,
                 before_read: Callable[[int], None] | None = None):
        self.fh, self.total, self.next_index, self.free = fh, total, next_index, free
        self.what, self.errors, self.request, self.before_read = what, errors, request, before_read
        self.reading: deque[_Reading] = deque()
        self.done = False

    def _start(self) -> None:
        while self.free and not self.done:
            index = self.next_index()
            if index is None:
                self.done = True
                return
            offset, length = chunks.span(index, self.total)
            if self.before_read is not None:
                self.before_read(length)
            buf = self.free.pop()
            reqs: list[Request] = []
            at = 0
            self.reading.append((index, offset, length, buf, reqs))
            with self.errors():
                while at < length:
                    req = files.send_read(self.fh, offset + at, min(length - at, self.request), into=buf[at:])
                    reqs.append(req)
                    at += req.length

    def _finish(self, offset: int, length: int, buf: memoryview, reqs: list[Request]) -> memoryview:
        at = 0
        with self.errors():
            for req in reqs:
                got = len(files.recv_read(self.fh, req))
                asked = req.length
                while got < asked:  # a short READ: ask for the rest of that piece
                    more = len(files.read_chunk(self.fh, offset + at + got, asked - got, into=buf[at + got:]))
                    if not more:
                        raise SourceChangedError(
                            f"{self.what} shrank during the copy: end of file at {offset + at + got}, expected "
                            f"{offset + length} or more; only frozen files can be copied")
                    got += more
                at += asked
        return buf[:length]

    def __iter__(self) -> Iterator[tuple[int, int, memoryview, memoryview]]:
        while True:
            self._start()
            if not self.reading:
                return
            index, offset, length, buf, reqs = self.reading[0]
            data = self._finish(offset, length, buf, reqs)
            self.reading.popleft()
            yield index, offset, data, buf

    def abandon(self) -> None:
        for *_, reqs in self.reading:
            _drain(self.fh, reqs)
        self.reading.clear()


def copy_chunks(reader: ChunkReader, wfh: Open, errors: Errors, will_write: Callable[[int], None],
                landed: Callable[[int, int, str], None], request: int = files.MAX_CHUNK) -> int:
    """Write every chunk `reader` yields to `wfh` at its offset; `landed(index, length,
    sha256 hex)` once the server acknowledged it. Returns the bytes sent.

    One chunk's WRITE at a time: the READs of the next chunks are what overlaps it, and a
    worker killed mid-copy has at most one chunk per stream sent but not recorded."""
    sent = 0
    reqs: list[Request] = []
    try:
        for index, offset, data, buf in reader:
            will_write(len(data))
            reqs, at = [], 0
            with errors():
                while at < len(data):
                    req = files.send_write(wfh, offset + at, data[at:at + request])
                    reqs.append(req)
                    at += req.length
            digest = hashlib.sha256(data).hexdigest()  # while the WRITE is in flight
            at = 0
            with errors():
                while reqs:
                    req = reqs.pop(0)
                    took = files.recv_write(wfh, req)
                    while took < req.length:  # a short WRITE: send the rest of that piece
                        n = files.write_chunk(wfh, offset + at + took, data[at + took:at + req.length])
                        if n <= 0:
                            raise SmbError(f"server accepted no bytes at offset {offset + at + took}")
                        took += n
                    at += req.length
            sent += len(data)
            landed(index, len(data), digest)
            reader.free.append(buf)
    except BaseException:
        reader.abandon()
        _drain(wfh, reqs)
        raise
    return sent
