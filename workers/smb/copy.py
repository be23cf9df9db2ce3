"""Copy one frozen file from one SMB share to another, verified by SHA-256.

    copy_file(src, r"vm1\\disk.vhdx", dst, r"vm1\\disk.vhdx", progress=cb) -> CopyResult

How a copy goes:
1. open the source for reading, sharing read/write/delete with everyone (Hyper-V and
   other readers keep their handles); remember its size;
2. create the destination's parent folders, then `<name>.partial` (truncated if an
   earlier attempt left one);
3. stream the source in requests of up to the negotiated max read/write size (8 MiB
   cap), hashing what was read and writing it to the partial file;
4. the source must still have the size it had when the copy started, else
   SourceChangedError (only frozen files can be copied: parent disks after a
   checkpoint, a saved VM's files). The last write time is no use here: while any
   handle is open, Samba reports the write time from when the file was opened, not
   the one local writers leave (Samba 4.17, seen in the lab). Same-size rewrites are
   not detected; the hash only proves the destination holds what was read;
5. flush, read the partial file back over SMB and compare its SHA-256 with the hash of
   what was read from the source, else CopyVerificationError;
6. rename the partial file onto the final name (replacing an earlier copy).

On SourceChangedError or CopyVerificationError the partial file is deleted; no final
file is created. After other failures (connection lost, cancelled from the progress
callback) the partial file stays and the next attempt overwrites it.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from workers.smb import connections, files
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

__all__ = [
    "CopyResult", "SmbEndpoint", "copy_file", "file_size", "exists", "delete_file", "sha256_of",
    "reset_connections", "partial_name", "PARTIAL_SUFFIX",
    "SmbError", "SmbConnectionError", "SmbAuthError", "SmbShareNotFoundError", "SmbFileNotFoundError",
    "SmbPermissionError", "SmbSharingViolation", "SourceChangedError", "CopyVerificationError",
]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
PROGRESS_INTERVAL_S = 0.25

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CopyResult:
    bytes: int
    sha256: str
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def partial_name(rel: str) -> str:
    """Where a copy to `rel` lands before it is verified."""
    return normalize_rel(rel) + PARTIAL_SUFFIX


class _Throttle:
    """Calls progress(done, total) at most every PROGRESS_INTERVAL_S, plus once at the end."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.last = time.monotonic()
        self.reported: tuple[int, int] | None = None

    def __call__(self, done: int, total: int, final: bool = False) -> None:
        if self.progress is None or (final and self.reported == (done, total)):
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self.reported = (done, total)
            self.progress(done, total)


def _errors(ep: SmbEndpoint, rel: str):
    return smb_errors(ep.unc(rel), on_connection_error=lambda: connections.evict(ep))


def _write_all(fh, offset: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = files.write_chunk(fh, offset + done, view[done:])
        if n <= 0:
            raise SmbError(f"server accepted no bytes at offset {offset + done}")
        done += n


def _hash_open(fh, size: int) -> tuple[int, str]:
    """(bytes read, sha256 hex) of the first `size` bytes of an open file, and of no more."""
    h = hashlib.sha256()
    offset = 0
    while offset < size:
        data = files.read_chunk(fh, offset, size - offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    # Anything beyond `size` means the file is longer than we think.
    if offset == size and files.read_chunk(fh, offset, 1):
        offset += 1
    return offset, h.hexdigest()


def _best_effort(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:
        log.warning("%s failed: %s", what, e)


def copy_file(src: SmbEndpoint, src_rel: str, dst: SmbEndpoint, dst_rel: str, *,
              progress: Progress | None = None) -> CopyResult:
    """Copy src's `src_rel` to dst's `dst_rel` (backslash paths relative to the share roots)."""
    src_rel, dst_rel = normalize_rel(src_rel), normalize_rel(dst_rel)
    part_rel = dst_rel + PARTIAL_SUFFIX
    started = time.monotonic()
    report = _Throttle(progress)

    with _errors(src, src_rel):
        sfh = files.open_for_read(connections.tree(src), src_rel)
    try:
        total = files.current_size(sfh)
        with _errors(dst, part_rel):
            dst_tree = connections.tree(dst)
            parent = dst_rel.rpartition("\\")[0]
            if parent:
                files.make_dirs(dst_tree, parent)
            dfh = files.open_for_write(dst_tree, part_rel)
        try:
            hasher = hashlib.sha256()
            offset = 0
            while offset < total:
                with _errors(src, src_rel):
                    data = files.read_chunk(sfh, offset, total - offset)
                if not data:
                    raise SourceChangedError(
                        f"{src.unc(src_rel)} shrank during the copy: {total} bytes at open, "
                        f"end of file at {offset}; only frozen files can be copied")
                hasher.update(data)
                with _errors(dst, part_rel):
                    _write_all(dfh, offset, data)
                offset += len(data)
                del data
                report(offset, total)

            with _errors(src, src_rel):
                size_after = files.current_size(sfh)
            if size_after != total:
                raise SourceChangedError(
                    f"{src.unc(src_rel)} changed size during the copy ({total} -> {size_after} bytes); "
                    "only frozen files can be copied")
            digest = hasher.hexdigest()

            with _errors(dst, part_rel):
                files.flush(dfh)
                landed_size, landed = _hash_open(dfh, total)
            if landed_size != total or landed != digest:
                raise CopyVerificationError(
                    f"{dst.unc(dst_rel)}: the copy that landed ({landed_size} bytes, sha256 {landed}) "
                    f"differs from what was read from {src.unc(src_rel)} ({total} bytes, sha256 {digest})")

            with _errors(dst, dst_rel):
                files.rename(dfh, dst_rel, replace=True)
        except (SourceChangedError, CopyVerificationError):
            _best_effort(f"deleting {dst.unc(part_rel)}", files.mark_delete, dfh)
            raise
        finally:
            _best_effort(f"closing {dst.unc(part_rel)}", files.close, dfh)
    finally:
        _best_effort(f"closing {src.unc(src_rel)}", files.close, sfh)

    report(total, total, final=True)
    return CopyResult(bytes=total, sha256=digest, seconds=time.monotonic() - started)


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


def sha256_of(ep: SmbEndpoint, rel: str) -> str:
    """SHA-256 (hex) of a file on the share, read over SMB."""
    rel = normalize_rel(rel)
    with _errors(ep, rel):
        fh = files.open_for_read(connections.tree(ep), rel)
        try:
            h = hashlib.sha256()
            offset = 0
            while data := files.read_chunk(fh, offset, files.MAX_CHUNK):
                h.update(data)
                offset += len(data)
        finally:
            files.close(fh)
    return h.hexdigest()
