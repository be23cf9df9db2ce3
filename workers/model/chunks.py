"""How a file is cut for copying, hashing and resuming: fixed 8 MiB chunks.

Streams copy chunks out of order, so a whole-file SHA-256 (which needs the bytes in
order) cannot be computed while copying. Instead every chunk gets its own SHA-256, and
the file's digest is the SHA-256 of the chunk digests (32 raw bytes each) in file order:

    digest = sha256(sha256(chunk 0) || sha256(chunk 1) || ... )     # "sha256-chunks-8MiB"

It is computed the same way from the source reads and from the destination read-back, so
a single flipped bit anywhere changes it, and a mismatch names the chunk. An empty file
has no chunks: its digest is sha256(b""). The chunk size is part of the scheme (a
different size gives a different digest), so it is a constant, not a setting.
"""
from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 8 * 1024 * 1024
SCHEME = "sha256-chunks-8MiB"


def count(size: int) -> int:
    return (size + CHUNK_BYTES - 1) // CHUNK_BYTES


def span(index: int, size: int) -> tuple[int, int]:
    """(offset, length) of chunk `index` in a file of `size` bytes."""
    offset = index * CHUNK_BYTES
    return offset, min(CHUNK_BYTES, size - offset)


def file_digest(chunk_digests: list[str]) -> str:
    """The file digest from its chunk digests (hex, in file order)."""
    h = hashlib.sha256()
    for d in chunk_digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def digest_of_bytes(data: bytes) -> str:
    """The scheme applied to bytes in memory (for tests and tools)."""
    return file_digest([hashlib.sha256(data[o:o + CHUNK_BYTES]).hexdigest()
                        for o in range(0, len(data), CHUNK_BYTES)])


PIECE_BYTES = 1024 * 1024  # read size of the local digests: a buffer that stays in the CPU cache
MAX_RANGE = 128  # chunks (1 GiB) one host call hashes at most: a call takes a second or so, not minutes


def local_chunk_digests(path: str | os.PathLike[str], first: int = 0, count: int | None = None) -> list[str]:
    """SHA-256 (hex) of chunks first .. first+count-1 of a local file (to its end when
    `count` is None, fewer when the file ends sooner), read by this host itself: what the
    driver's `file_hash` computes on a Hyper-V host for a range, and the lab's hosts for it.

    It reads 1 MiB at a time into one buffer and hashes each piece while it is still in
    the CPU cache: 8 MiB reads took 1.3-1.4 s per GiB on the lab machine, this 0.8 s, the
    difference kernel time copying into a buffer the cache cannot hold."""
    if not isinstance(first, int) or first < 0 or (count is not None and (not isinstance(count, int) or count < 0)):
        raise ValueError(f"chunk range must be whole numbers >= 0, not first={first!r} count={count!r}")
    out: list[str] = []
    buf = bytearray(PIECE_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(first * CHUNK_BYTES)
        while count is None or len(out) < count:
            block, filled = hashlib.sha256(), 0
            while filled < CHUNK_BYTES and (n := f.readinto(view[:min(PIECE_BYTES, CHUNK_BYTES - filled)])):
                block.update(view[:n])
                filled += n
            if not filled:
                break
            out.append(block.hexdigest())
            if filled < CHUNK_BYTES:
                break
    return out


def digest_of_local(path: str | os.PathLike[str], scheme: str = SCHEME) -> str:
    """The digest of a local file read by this host itself, `scheme` SCHEME or "sha256"
    (a plain SHA-256 of the file): the driver's `file_hash`."""
    if scheme == SCHEME:
        return file_digest(local_chunk_digests(path))
    if scheme != "sha256":
        raise ValueError(f"unknown digest scheme {scheme!r} (known: {SCHEME}, sha256)")
    whole, buf = hashlib.sha256(), bytearray(PIECE_BYTES)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            whole.update(memoryview(buf)[:n])
    return whole.hexdigest()
