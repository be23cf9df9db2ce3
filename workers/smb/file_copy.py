"""Copy one frozen file from one SMB share to another, in parallel streams, verified.

    copy_file(src, r"vm1\\disk.vhdx", dst, r"vm1\\disk.vhdx", streams=4, progress=cb,
              throttle=wait_for_bytes, resume=cp) -> CopyResult

How a copy goes:
1. look at the source through a fresh handle: size, last write time, change time (its
   identity); ask the resume record which chunks (`workers.model.chunks`) of a source with
   that identity already landed in an earlier attempt;
2. create the destination's parent folders and `<name>.partial` (emptied, unless chunks
   are to be reused and the partial file is long enough to hold them);
3. `streams` threads, each on its own SMB connections to both servers, take the next
   chunk not yet done, read it (requests up to the negotiated max size, the next
   chunk's READ in flight while this one is written: workers.smb.stream), send it to
   the partial file, hash it while the WRITE is in flight, and record it in the
   resume record once the server has acknowledged the WRITE. `throttle(n)` is called before
   each read and may sleep (bandwidth limits);
4. with every source handle closed, look at the source's identity again: any change in
   size, last write time or change time is SourceChangedError (only frozen files can be
   copied). The comparison uses a fresh handle after ours are closed because Samba
   reports the write time as of open while any handle is open;
5. cut the partial file to the source's size and flush it, and verify it meanwhile: with
   `dest_digests` (SHA-256s of the partial file's chunks computed on the destination
   host, the driver's `file_hash` for a range) a `workers.smb.verifier.Verifier` has been
   comparing the landed chunks with what was read from the source (chunk digests from
   this attempt and, after a resume, from the resume record) since step 3, and checks the
   rest now; otherwise read it back over SMB in parallel streams and compare every
   chunk's SHA-256 with what was read from the source. A mismatch is
   CopyVerificationError;
6. rename the partial file onto the final name (replacing an earlier copy) and clear
   the resume record.

On SourceChangedError or CopyVerificationError the partial file is deleted and the
resume record cleared; no final file is created. After other failures (connection lost,
cancelled from the progress callback, the process killed) the partial file and the
resume record stay, and the next attempt re-copies only the chunks not recorded.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from smbprotocol.open import Open

from workers.model import chunks
from workers.model.config import COPY_STREAMS_DEFAULT, COPY_STREAMS_MAX
from workers.smb import connections, files, memory, stream
from workers.smb.connections import reset_connections
from workers.smb.endpoint import SmbEndpoint, normalize_rel
from workers.smb.errors import (
    CopyVerificationError,
    SmbAuthError,
    SmbConnectionError,
    SmbError,
    SmbFileNotFoundError,
    SmbPermissionError,
    SmbShareNotFoundError,
    SmbSharingViolation,
    SourceChangedError,
    smb_errors,
)
from workers.smb.resume import MemoryResumeRecord, ResumeRecord
from workers.smb.verifier import HostDigests, Verifier

__all__ = [
    "CopyResult", "SmbEndpoint", "copy_file", "file_size", "exists", "delete_file", "sha256_of", "digest_of",
    "reset_connections", "partial_name", "PARTIAL_SUFFIX", "DEFAULT_STREAMS",
    "SmbError", "SmbConnectionError", "SmbAuthError", "SmbShareNotFoundError", "SmbFileNotFoundError",
    "SmbPermissionError", "SmbSharingViolation", "SourceChangedError", "CopyVerificationError",
]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
PROGRESS_INTERVAL_S = 0.25
# [copy] streams in quickmig.toml; docs/benchmarks.md has the measurements behind the default
DEFAULT_STREAMS, MAX_STREAMS = COPY_STREAMS_DEFAULT, COPY_STREAMS_MAX

Progress = Callable[[int, int], None]
Throttle = Callable[[int], None]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class CopyResult:
    bytes: int
    digest: str  # chunks.SCHEME over the whole file
    seconds: float
    bytes_written: int = 0  # sent to the destination by this call
    bytes_reused: int = 0  # already there from an interrupted attempt
    bytes_sent_total: int = 0  # sent over every attempt (minus `bytes` = copied twice)
    streams: int = 1
    scheme: str = chunks.SCHEME

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Identity:
    size: int
    last_write: int
    change: int

    def as_dict(self) -> dict[str, int]:
        return {"size": self.size, "last_write": self.last_write, "change": self.change}


def partial_name(rel: str) -> str:
    """Where a copy to `rel` lands before it is verified."""
    return normalize_rel(rel) + PARTIAL_SUFFIX


class _Progress:
    """Sums bytes from every stream; calls progress(done, total) at most every
    PROGRESS_INTERVAL_S, plus once at the end."""

    def __init__(self, progress: Progress | None, done: int, total: int):
        self.progress = progress
        self.done, self.total = done, total
        self.lock = threading.Lock()
        self.last = 0.0
        self.reported: int | None = None

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            self._maybe(final=False)

    def final(self) -> None:
        with self.lock:
            if self.reported != self.done:
                self._maybe(final=True)

    def _maybe(self, final: bool) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self.reported = self.done
            self.progress(self.done, self.total)


def _errors(ep: SmbEndpoint, rel: str, stream: int = 0) -> contextlib.AbstractContextManager[None]:
    return smb_errors(ep.unc(rel), on_connection_error=lambda: connections.evict(ep, stream))


def _best_effort(what: str, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - cleanups and early flushes: a failure is logged, never raised over the real one
        log.warning("%s failed: %s", what, e)


def _identity(ep: SmbEndpoint, rel: str) -> Identity:
    with _errors(ep, rel):
        fh = files.open_attributes(connections.tree(ep), rel)
        try:
            last_write, change = files.times(fh)
            return Identity(files.current_size(fh), last_write, change)
        finally:
            files.close(fh)


class _Chunks:
    """Hands out the chunk indices still to do, one at a time, to any stream."""

    def __init__(self, todo: list[int]):
        self._it = iter(todo)
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def next(self) -> int | None:
        if self.stop.is_set():
            return None
        with self._lock:
            return next(self._it, None)


def _flush(ep: SmbEndpoint, rel: str, fh: Open) -> None:
    with _errors(ep, rel):
        files.flush(fh)


def _alongside(fn: Callable[[], None]) -> Callable[[], None]:
    """Run fn() in a thread of its own; returns join(), which waits for it and raises
    what fn raised."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="smb-copy-aside")
    done = pool.submit(fn)
    pool.shutdown(wait=False)  # the thread ends with fn
    return done.result


def _then(fn: Callable[[], T], join: Callable[[], None]) -> T:
    """fn()'s result once join() returned too; fn's error wins over join's."""
    try:
        out = fn()
    except BaseException:
        _best_effort("waiting for the flush", join)
        raise
    join()
    return out


def _run_streams(n: int, work: Callable[[int, _Chunks], None], todo: list[int],
                 stop: threading.Event | None = None) -> None:
    """Run work(stream, chunks) in n threads; the first error stops the others and is raised."""
    queue = _Chunks(todo)
    if stop is not None:
        queue.stop = stop
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i, queue)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            queue.stop.set()
            errors.append(e)

    if n == 1:
        run(0)
    else:
        threads = [threading.Thread(target=run, args=(i,), name=f"smb-copy-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _not_running() -> None:
    """The join() of a verifier that is not running (none was asked for, or it was joined)."""


class FileCopy:
    """One copy_file call, in the stages of the module docstring: prepare (steps 1-2),
    stream (3), verify (4-5), commit (6), and discard after a failure that the copy
    cannot resume from. run() goes through them; copy_file builds one and runs it.

    The streams and the verifier share `digests` (chunk -> SHA-256 hex of what was read
    from the source, for this attempt's chunks and those the resume record had) and
    `stop` (set: every stream stops taking chunks and the verifier stops checking)."""

    # What prepare() finds out: the source, the resume record's chunks, the partial file.
    before: Identity
    total: int
    n_chunks: int
    digests: dict[int, str]
    dfh: Open  # the partial file: resized, flushed, renamed or deleted through it
    reused: int  # bytes of the resume record's chunks, not copied again
    report: _Progress
    n_streams: int  # copy streams: no more than chunks to copy
    sent: list[int]  # bytes each copy stream sent
    verifier: Verifier | None

    def __init__(self, src: SmbEndpoint, src_rel: str, dst: SmbEndpoint, dst_rel: str, *,
                 streams: int, progress: Progress | None, throttle: Throttle | None,
                 resume: ResumeRecord | None, read_ahead: bool, dest_digests: HostDigests | None):
        self.src, self.src_rel = src, normalize_rel(src_rel)
        self.dst, self.dst_rel = dst, normalize_rel(dst_rel)
        if not 1 <= int(streams) <= MAX_STREAMS:
            raise ValueError(f"streams must be 1..{MAX_STREAMS}, not {streams}")
        self.streams = int(streams)
        self.part_rel = self.dst_rel + PARTIAL_SUFFIX
        self.resume: ResumeRecord = resume or MemoryResumeRecord()
        self.progress, self.throttle, self.dest_digests = progress, throttle, dest_digests
        self.depth = stream.DEPTH + (1 if read_ahead else 0)
        self.what = src.unc(self.src_rel)  # the source, in messages
        self.stop = threading.Event()  # a stream failed or the host found a bad chunk: everyone stops
        self.verifier_join: Callable[[], None] = _not_running  # joins the verifier's thread while it runs

    def run(self) -> CopyResult:
        memory.limit_arenas()
        started = time.monotonic()
        self.prepare()
        try:
            try:
                self.stream()
                self.verify()
            except BaseException:
                self._stop_verifier()
                raise
            digest = self.commit()
        except (SourceChangedError, CopyVerificationError):
            self.discard()
            raise
        finally:
            _best_effort(f"closing {self.dst.unc(self.part_rel)}", files.close, self.dfh)
        sent_total = self.resume.bytes_sent()
        self.resume.clear()
        self.report.final()
        return CopyResult(bytes=self.total, digest=digest, seconds=time.monotonic() - started,
                          bytes_written=sum(self.sent), bytes_reused=self.reused, bytes_sent_total=sent_total,
                          streams=self.n_streams)

    # --- prepare: the source's identity, the resume record, the partial file ----------

    def prepare(self) -> None:
        self.before = _identity(self.src, self.src_rel)
        self.total = self.before.size
        self.n_chunks = chunks.count(self.total)
        self.digests = self.resume.load(self.before.as_dict())
        self.dfh = self._open_partial()
        self.reused = sum(chunks.span(i, self.total)[1] for i in self.digests)
        if self.reused:
            log.info("resuming %s: %d of %d bytes already on %s", self.what, self.reused, self.total,
                     self.dst.unc(self.part_rel))
        self.report = _Progress(self.progress, self.reused, self.total)
        self.n_streams = max(1, min(self.streams, self.n_chunks - len(self.digests)))
        self.sent = [0] * self.n_streams
        self.verifier = None if self.dest_digests is None else Verifier(
            self.dest_digests, self.digests, self.n_chunks, self.stop, self._chunk_name,
            # a failed early flush costs nothing: the flush after the last chunk is the one that counts
            between=lambda: _best_effort(f"flushing {self.dst.unc(self.part_rel)}", self._flush))

    def _open_partial(self) -> Open:
        """Create the destination's folders and open the partial file: emptied, unless it
        holds the resume record's chunks (if it is too short for them, the record is cleared)."""
        with _errors(self.dst, self.part_rel):
            dst_tree = connections.tree(self.dst)
            parent = self.dst_rel.rpartition("\\")[0]
            if parent:
                files.make_dirs(dst_tree, parent)
            dfh = files.open_for_write(dst_tree, self.part_rel, truncate=not self.digests)
            if self.digests:
                needed = max(sum(chunks.span(i, self.total)) for i in self.digests)
                if files.current_size(dfh) < needed:  # the partial file is not the one the chunks went to
                    log.warning("%s is shorter than its resume record says; copying it all again",
                                self.dst.unc(self.part_rel))
                    self.resume.clear()
                    self.digests = self.resume.load(self.before.as_dict())
        return dfh

    def _chunk_name(self, index: int) -> str:
        offset, length = chunks.span(index, self.total)
        return f"{self.dst.unc(self.dst_rel)}: chunk {index} (bytes {offset}..{offset + length})"

    # --- stream: the copy streams, the verifier alongside ------------------------------

    def stream(self) -> None:
        todo = [i for i in range(self.n_chunks) if i not in self.digests]
        if self.verifier is not None:
            self.verifier_join = _alongside(self.verifier.run)
        _run_streams(self.n_streams, self._copy_stream, todo, self.stop)
        if self.stop.is_set():  # the host found a bad chunk and the streams stopped early
            join = self._take_verifier()
            join()  # raises what it found
            raise CopyVerificationError(f"{self.dst.unc(self.dst_rel)}: the copy stopped before every chunk landed")

    def _copy_stream(self, i: int, queue: _Chunks) -> None:
        with _errors(self.src, self.src_rel, i):
            sfh = files.open_for_read(connections.tree(self.src, i), self.src_rel)
        try:
            with _errors(self.dst, self.part_rel, i):
                wfh = files.open_for_write(connections.tree(self.dst, i), self.part_rel, truncate=False)
            try:
                reader = stream.ChunkReader(sfh, self.total, queue.next, stream.buffers(self.depth), self.what,
                                            lambda: _errors(self.src, self.src_rel, i), before_read=self.throttle)
                self.sent[i] = stream.copy_chunks(reader, wfh, lambda: _errors(self.dst, self.part_rel, i),
                                                  self.resume.will_write, self._landed)
            finally:
                _best_effort(f"closing {self.dst.unc(self.part_rel)}", files.close, wfh)
        finally:
            _best_effort(f"closing {self.what}", files.close, sfh)

    def _landed(self, index: int, length: int, digest: str) -> None:
        self.digests[index] = digest
        self.resume.record(index, digest)
        self.report.add(length)
        if self.verifier is not None:
            self.verifier.landed()

    def _take_verifier(self) -> Callable[[], None]:
        """The verifier thread's join(), from now on the caller's to call."""
        join, self.verifier_join = self.verifier_join, _not_running
        return join

    def _stop_verifier(self) -> None:
        """After a failure: stop the verifier if it still runs; a bad chunk it found is the
        error to report, rather than what it made the streams fail with."""
        join = self._take_verifier()
        if join is _not_running:
            return
        self.stop.set()
        try:
            join()
        except CopyVerificationError:
            raise
        except BaseException as e:  # noqa: BLE001 - the first failure is the one reported
            log.debug("verifier after the copy failed: %s", e)

    # --- verify: source unchanged, size, every chunk checked, flushed ------------------

    def verify(self) -> None:
        self._check_source_unchanged()
        self._cut_to_size()
        if self.verifier is not None:
            self._finish_on_host(self.verifier)
        else:
            self._read_back()

    def _check_source_unchanged(self) -> None:
        before, after = self.before, _identity(self.src, self.src_rel)
        if after != before:
            raise SourceChangedError(
                f"{self.what} changed during the copy (size {before.size} -> {after.size}, "
                f"last write {before.last_write} -> {after.last_write}, change time {before.change} -> "
                f"{after.change}); only frozen files can be copied")

    def _cut_to_size(self) -> None:
        """A partial file reused from a longer attempt has bytes beyond the source's end."""
        with _errors(self.dst, self.part_rel):
            files.set_size(self.dfh, self.total)
            if files.current_size(self.dfh) != self.total:
                raise CopyVerificationError(
                    f"{self.dst.unc(self.dst_rel)}: the copy that landed is not {self.total} bytes long")

    def _finish_on_host(self, verifier: Verifier) -> None:
        # The flush (the destination writing its cache to disk) and the check of the
        # last chunks (the destination host reading them back from its cache) use
        # different resources: side by side they cost the longer of the two, not both.
        flushed = _alongside(self._flush)
        join = self._take_verifier()
        verifier.finish()
        _then(join, flushed)
        if not verifier.complete:  # never rename a copy not every chunk of which was checked
            raise CopyVerificationError(f"{self.dst.unc(self.dst_rel)}: only {verifier.checked} of "
                                        f"{self.n_chunks} chunks were checked on the destination host")

    def _read_back(self) -> None:
        # The read-back shares the flush's connection: one after the other.
        self._flush()
        _run_streams(max(1, min(self.streams, self.n_chunks)), self._read_back_stream, list(range(self.n_chunks)))

    def _read_back_stream(self, i: int, queue: _Chunks) -> None:
        part = self.dst.unc(self.part_rel)
        with _errors(self.dst, self.part_rel, i):
            rfh = files.open_for_read(connections.tree(self.dst, i), self.part_rel)
        try:
            reader = stream.ChunkReader(rfh, self.total, queue.next, stream.buffers(self.depth), part,
                                        lambda: _errors(self.dst, self.part_rel, i))
            try:
                for index, offset, data, buf in reader:
                    got = hashlib.sha256(data).hexdigest()
                    reader.free.append(buf)
                    if got != self.digests[index]:
                        raise CopyVerificationError(
                            f"{self.dst.unc(self.dst_rel)}: chunk {index} (bytes {offset}..{offset + len(data)}) "
                            f"that landed hashes {got}, but what was read from {self.what} hashes "
                            f"{self.digests[index]}")
            except BaseException:
                reader.abandon()
                raise
        finally:
            _best_effort(f"closing {part}", files.close, rfh)

    def _flush(self) -> None:
        _flush(self.dst, self.part_rel, self.dfh)

    # --- commit, or discard -------------------------------------------------------------

    def commit(self) -> str:
        """Put the verified copy in place under its final name; returns its digest."""
        digest = chunks.file_digest([self.digests[i] for i in range(self.n_chunks)])
        with _errors(self.dst, self.dst_rel):
            files.rename(self.dfh, self.dst_rel, replace=True)
        return digest

    def discard(self) -> None:
        """After SourceChangedError or CopyVerificationError: what landed cannot be resumed
        from, so the partial file goes (when its handle closes) and so does the resume
        record. Other failures leave both for the next attempt."""
        _best_effort(f"deleting {self.dst.unc(self.part_rel)}", files.mark_delete, self.dfh)
        self.resume.clear()


def copy_file(src: SmbEndpoint, src_rel: str, dst: SmbEndpoint, dst_rel: str, *,
              streams: int = DEFAULT_STREAMS, progress: Progress | None = None,
              throttle: Throttle | None = None, resume: ResumeRecord | None = None,
              read_ahead: bool = False, dest_digests: HostDigests | None = None) -> CopyResult:
    """Copy src's `src_rel` to dst's `dst_rel` (backslash paths relative to the share roots).

    `dest_digests(first, count)` returns the SHA-256s (hex) of chunks first .. first+count-1
    of `dst_rel` + PARTIAL_SUFFIX computed on the destination host (the driver's
    `chunk_digests`); given, it replaces the read-back over SMB (see step 5 above).

    Every stream keeps the next chunk's READ in flight while it writes one (workers.smb.
    stream); `read_ahead` gives each stream one more chunk buffer, so two READs are in
    flight (+8 MiB per stream)."""
    return FileCopy(src, src_rel, dst, dst_rel, streams=streams, progress=progress, throttle=throttle,
                    resume=resume, read_ahead=read_ahead, dest_digests=dest_digests).run()


def file_size(ep: SmbEndpoint, rel: str) -> int:
    """Size in bytes of a file on the share."""
    rel = normalize_rel(rel)
    with _errors(ep, rel):
        fh = files.open_attributes(connections.tree(ep), rel)
        try:
            return fh.end_of_file
        finally:
            files.close(fh)


def exists(ep: SmbEndpoint, rel: str) -> bool:
    """Whether a file or folder exists at `rel` on the share."""
    rel = normalize_rel(rel)
    try:
        with _errors(ep, rel):
            files.close(files.open_attributes(connections.tree(ep), rel))
    except SmbFileNotFoundError:
        return False
    return True


def write_small(ep: SmbEndpoint, rel: str, data: bytes) -> None:
    """Write a small file whole (one request), creating its folders: a marker, not a copy."""
    rel = normalize_rel(rel)
    with _errors(ep, rel):
        tree = connections.tree(ep)
        if "\\" in rel:
            files.make_dirs(tree, rel.rsplit("\\", 1)[0])
        fh = files.open_for_write(tree, rel)
        try:
            files.write_chunk(fh, 0, data)
            files.flush(fh)
        finally:
            files.close(fh)


def read_small(ep: SmbEndpoint, rel: str, limit: int = 1 << 20) -> bytes:
    """The bytes of a small file (at most `limit`; a larger one is refused, not truncated)."""
    rel = normalize_rel(rel)
    with _errors(ep, rel):
        fh = files.open_for_read(connections.tree(ep), rel)
        try:
            size = fh.end_of_file
            if size > limit:
                raise SmbError(f"{ep.unc(rel)} is {size} bytes, more than the {limit} expected")
            return bytes(files.read_chunk(fh, 0, size)) if size else b""
        finally:
            files.close(fh)


def list_files(ep: SmbEndpoint, rel_dir: str, pattern: str = "*") -> list[str]:
    """Names of the files matching `pattern` in a folder of the share ([] if there is no such folder)."""
    rel_dir = normalize_rel(rel_dir)
    with _errors(ep, rel_dir):
        return [n for n in files.list_names(connections.tree(ep), rel_dir, pattern) if n not in (".", "..")]


def delete_file(ep: SmbEndpoint, rel: str) -> None:
    """Delete a file on the share; nothing happens if it is not there."""
    rel = normalize_rel(rel)
    try:
        with _errors(ep, rel):
            fh = files.open_for_delete(connections.tree(ep), rel)
            try:
                files.mark_delete(fh)
            finally:
                files.close(fh)
    except SmbFileNotFoundError:
        return


def remove_empty_folder(ep: SmbEndpoint, rel: str) -> bool:
    """Remove a folder on the share if it is empty; False when it is not there, or not empty
    or in use (the server refuses to delete it then: nothing in it is ever touched)."""
    rel = normalize_rel(rel)
    try:
        with _errors(ep, rel):
            fh = files.open_dir_for_delete(connections.tree(ep), rel)
            try:
                files.mark_delete(fh)
            finally:
                files.close(fh)
    except (SmbFileNotFoundError, SmbPermissionError):
        return False
    except SmbConnectionError:
        raise
    except SmbError:
        return False
    return True


def _chunk_digests(ep: SmbEndpoint, rel: str, each: Callable[[memoryview], object] | None = None) -> list[str]:
    """SHA-256 (hex) of every chunk of a file on the share, read over SMB in one stream;
    `each(data)` also sees every chunk in file order."""
    rel = normalize_rel(rel)
    out: list[str] = []
    with _errors(ep, rel):
        fh = files.open_for_read(connections.tree(ep), rel)
        try:
            todo = iter(range(chunks.count(files.current_size(fh))))
            reader = stream.ChunkReader(fh, files.current_size(fh), lambda: next(todo, None),
                                          stream.buffers(stream.DEPTH), ep.unc(rel), contextlib.nullcontext)
            for _index, _offset, data, buf in reader:
                out.append(hashlib.sha256(data).hexdigest())
                if each is not None:
                    each(data)
                reader.free.append(buf)
        finally:
            files.close(fh)
    return out


def sha256_of(ep: SmbEndpoint, rel: str) -> str:
    """SHA-256 (hex) of a file on the share, read over SMB."""
    h = hashlib.sha256()
    _chunk_digests(ep, rel, h.update)
    return h.hexdigest()


def digest_of(ep: SmbEndpoint, rel: str) -> str:
    """The chunks.SCHEME digest of a file on the share, read over SMB (one stream)."""
    return chunks.file_digest(_chunk_digests(ep, rel))
