"""The emulated virtual disk file format (.vhdx / .avhdx) and the saved-memory file (.vmrs).

A disk file is:

    offset 0     header, HEADER_BYTES (4096) bytes: DISK_MAGIC, a u32 length, then UTF-8 JSON
                 {"type": "base"|"differencing", "uid": hex, "parent_path": host path|null,
                  "parent_uid": hex|null, "virtual_size": int, "data_bytes": int}, zero padded
    offset 4096  data region of `data_bytes` pseudo-random bytes (base disks only; 0 for children)
    then         guest records, RECORD_BYTES (4096) each, appended by the guest writer:
                 RECORD_MAGIC (8) | vm id (16, UUID bytes) | seq (u64 LE) | crc32 (u32 LE) | payload
                 The CRC covers every byte of the record except the crc field itself.

`Set-VHD -ParentPath` rewrites the header in place (same 4096 bytes), so a copied file's
data and records are never touched. The `uid` is fixed at creation and travels with copies;
a child remembers its parent's uid, so re-parenting to the wrong file is refused, as
Hyper-V refuses a parent whose identifier does not match.

A .vmrs (saved memory) file is a 4096-byte header (VMRS_MAGIC, u32 length, JSON
{"vm_id", "counter", "memory_bytes", "saved_at", "host"}) followed by `memory_bytes`
pseudo-random bytes.
"""
from __future__ import annotations

import json
import os
import random
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
HEADER_BYTES = 4096
RECORD_BYTES = 4096
DISK_MAGIC = b"QMVHDX01"
VMRS_MAGIC = b"QMVMRS01"
RECORD_MAGIC = b"QMREC001"
_REC_HEAD = struct.Struct("<8s16sQI")  # magic, vm id, seq, crc32
_PAYLOAD_BYTES = RECORD_BYTES - _REC_HEAD.size
BLOCK = MiB


class DiskFormatError(Exception):
    """A file is not an emulated disk / saved-state file, or its header is damaged."""


@dataclass
class DiskHeader:
    type: str  # "base" | "differencing"
    uid: str
    parent_path: str | None = None
    parent_uid: str | None = None
    virtual_size: int = 0
    data_bytes: int = 0

    def to_json(self) -> dict:
        return {"type": self.type, "uid": self.uid, "parent_path": self.parent_path,
                "parent_uid": self.parent_uid, "virtual_size": self.virtual_size,
                "data_bytes": self.data_bytes}


def _pack_header(magic: bytes, doc: dict) -> bytes:
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(magic) + 4 + len(body) > HEADER_BYTES:
        raise DiskFormatError("header does not fit in 4096 bytes (path too long?)")
    return (magic + struct.pack("<I", len(body)) + body).ljust(HEADER_BYTES, b"\0")


def _unpack_header(raw: bytes, magic: bytes, what: str, path: Path) -> dict:
    if len(raw) < HEADER_BYTES or raw[:8] != magic:
        raise DiskFormatError(f"{path}: not an emulated {what} file (bad magic or truncated header)")
    (n,) = struct.unpack_from("<I", raw, 8)
    if n > HEADER_BYTES - 12:
        raise DiskFormatError(f"{path}: damaged {what} header")
    try:
        doc = json.loads(raw[12:12 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DiskFormatError(f"{path}: damaged {what} header") from None
    if not isinstance(doc, dict):
        raise DiskFormatError(f"{path}: damaged {what} header")
    return doc


def _random_blocks(seed: str, total: int) -> Iterable[bytes]:
    """`total` pseudo-random bytes in 1 MiB blocks (seeded, so reproducible).

    One random block, each copy stamped with its index: generating every byte afresh ran at
    ~40-150 MB/s here and made the emulated Save-VM (memory to .vmrs) several times slower
    than a real host's disk, which inflated the measured downtime."""
    rng = random.Random(seed)
    base = rng.randbytes(min(BLOCK, total))
    left, i = total, 0
    while left > 0:
        n = min(BLOCK, left)
        yield (struct.pack("<Q", i) + base[8:n]) if n >= 8 else base[:n]
        left -= n
        i += 1


def _write_new(path: Path, header: bytes, body: Iterable[bytes]) -> None:
    """Create `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(header)
            for block in body:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_base(path: Path, disk_mb: int, seed: str | None = None) -> DiskHeader:
    """A new base disk: header plus `disk_mb` MiB of pseudo-random data."""
    data = int(disk_mb) * MiB
    hdr = DiskHeader(type="base", uid=uuid.uuid4().hex, virtual_size=max(data, MiB), data_bytes=data)
    _write_new(path, _pack_header(DISK_MAGIC, hdr.to_json()), _random_blocks(seed or hdr.uid, data))
    return hdr


def create_child(path: Path, parent_host_path: str, parent: DiskHeader) -> DiskHeader:
    """A new differencing disk whose parent is `parent_host_path` (header only, no records)."""
    hdr = DiskHeader(type="differencing", uid=uuid.uuid4().hex, parent_path=parent_host_path,
                     parent_uid=parent.uid, virtual_size=parent.virtual_size, data_bytes=0)
    _write_new(path, _pack_header(DISK_MAGIC, hdr.to_json()), ())
    return hdr


def read_header(path: Path) -> DiskHeader:
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    doc = _unpack_header(raw, DISK_MAGIC, "disk", path)
    try:
        hdr = DiskHeader(type=doc["type"], uid=doc["uid"], parent_path=doc.get("parent_path"),
                         parent_uid=doc.get("parent_uid"), virtual_size=int(doc.get("virtual_size", 0)),
                         data_bytes=int(doc.get("data_bytes", 0)))
    except (KeyError, TypeError, ValueError):
        raise DiskFormatError(f"{path}: damaged disk header") from None
    if hdr.type not in ("base", "differencing") or hdr.data_bytes < 0:
        raise DiskFormatError(f"{path}: damaged disk header")
    if hdr.type == "differencing" and not hdr.parent_path:
        raise DiskFormatError(f"{path}: differencing disk without a parent path")
    return hdr


def set_parent(path: Path, parent_host_path: str, parent_uid: str, *, verify: bool = True) -> DiskHeader:
    """Rewrite a differencing disk's parent in place.

    verify=True is `Set-VHD -ParentPath`: the new parent must be the disk the child was
    made from (same uid). verify=False re-parents to another disk (used by a merge, where
    the grandchild's new parent now holds the merged child's data).
    The file's mode is restored afterwards (it may be read-only because it is a parent).
    """
    hdr = read_header(path)
    if hdr.type != "differencing":
        raise DiskFormatError(f"{path}: is not a differencing disk")
    if verify and hdr.parent_uid and parent_uid != hdr.parent_uid:
        raise DiskFormatError("the new parent's identifier does not match the identifier the "
                              "differencing disk was created from")
    hdr.parent_path = parent_host_path
    hdr.parent_uid = parent_uid
    with _writable(path):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, _pack_header(DISK_MAGIC, hdr.to_json()), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    return hdr


class _writable:
    """Temporarily add the owner write bit to a file (parents are chmod 0444)."""

    def __init__(self, path: Path):
        self.path = path
        self.mode: int | None = None

    def __enter__(self):
        mode = os.stat(self.path).st_mode & 0o7777
        if not mode & 0o200:
            self.mode = mode
            os.chmod(self.path, mode | 0o200)
        return self

    def __exit__(self, *exc):
        if self.mode is not None:
            os.chmod(self.path, self.mode)


# ---- guest records -------------------------------------------------------------------

def _payload(seq: int) -> bytes:
    # cheap, seq-dependent filler: 8 bytes repeated
    word = struct.pack("<Q", (seq * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    return (word * (_PAYLOAD_BYTES // 8 + 1))[:_PAYLOAD_BYTES]


def make_record(vm_id: str, seq: int) -> bytes:
    vid = uuid.UUID(vm_id).bytes
    payload = _payload(seq)
    crc = zlib.crc32(payload, zlib.crc32(RECORD_MAGIC + vid + struct.pack("<Q", seq)))
    return _REC_HEAD.pack(RECORD_MAGIC, vid, seq, crc) + payload


def append_records(path: Path, vm_id: str, seqs: Iterable[int]) -> None:
    """Append records (used by the guest writer and by tests). Flushed, not fsynced."""
    data = b"".join(make_record(vm_id, s) for s in seqs)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class RecordScan:
    """What the record area of one file holds."""
    seqs: list[int] = field(default_factory=list)
    vm_ids: set[str] = field(default_factory=set)
    bad: list[int] = field(default_factory=list)   # offsets of records that fail magic/CRC
    torn_bytes: int = 0                             # trailing partial record (an interrupted write)


def records_offset(hdr: DiskHeader) -> int:
    return HEADER_BYTES + hdr.data_bytes


def scan_records(path: Path) -> RecordScan:
    hdr = read_header(path)
    out = RecordScan()
    with open(path, "rb") as f:
        f.seek(records_offset(hdr))
        offset = records_offset(hdr)
        while True:
            rec = f.read(RECORD_BYTES)
            if not rec:
                break
            if len(rec) < RECORD_BYTES:
                out.torn_bytes = len(rec)
                break
            magic, vid, seq, crc = _REC_HEAD.unpack_from(rec)
            body = rec[_REC_HEAD.size:]
            if magic != RECORD_MAGIC or zlib.crc32(body, zlib.crc32(rec[:8 + 16 + 8])) != crc:
                out.bad.append(offset)
            else:
                out.seqs.append(seq)
                out.vm_ids.add(str(uuid.UUID(bytes=vid)))
            offset += RECORD_BYTES
    return out


def read_records(path: Path) -> list[int]:
    """The seqs of the valid guest records in one disk file, in file order."""
    return scan_records(path).seqs


def record_area(path: Path) -> tuple[int, int]:
    """(offset, length) of the whole-record area of a disk file (partial tail excluded)."""
    hdr = read_header(path)
    off = records_offset(hdr)
    size = os.path.getsize(path)
    n = max(0, size - off) // RECORD_BYTES
    return off, n * RECORD_BYTES


def max_seq(paths: Iterable[Path]) -> int:
    best = 0
    for p in paths:
        for s in read_records(p):
            best = max(best, s)
    return best


# ---- chains ---------------------------------------------------------------------------

Resolver = Callable[[str], Path]


@dataclass
class ChainLink:
    host_path: str
    local: Path
    header: DiskHeader


def read_chain(leaf_host_path: str, resolve: Resolver, max_depth: int = 256) -> list[ChainLink]:
    """Leaf first, base last, following each header's parent path (as Get-VHD does).

    `resolve` maps a host path to a local file (raising for paths outside the host).
    Raises FileNotFoundError naming the missing file, DiskFormatError for a broken chain.
    """
    links: list[ChainLink] = []
    seen: set[str] = set()
    path = leaf_host_path
    while True:
        if path.lower() in seen or len(links) >= max_depth:
            raise DiskFormatError(f"{leaf_host_path}: the parent chain loops")
        seen.add(path.lower())
        local = resolve(path)
        if not local.is_file():
            raise FileNotFoundError(path)
        hdr = read_header(local)
        if links and links[-1].header.parent_uid and links[-1].header.parent_uid != hdr.uid:
            raise DiskFormatError(
                f"{links[-1].host_path}: its parent {path} is not the disk it was made from (identifier mismatch)")
        links.append(ChainLink(path, local, hdr))
        if hdr.type == "base":
            return links
        path = hdr.parent_path  # type: ignore[assignment]


def chain_records(leaf_host_path: str, resolve: Resolver) -> list[int]:
    """All guest record seqs of a chain, base first (oldest first)."""
    out: list[int] = []
    for link in reversed(read_chain(leaf_host_path, resolve)):
        out.extend(read_records(link.local))
    return out


def merge_into_parent(child: Path, parent: Path) -> int:
    """Append the child's guest records to its parent. Returns the number of records moved.

    The caller re-parents the grandchild and deletes the child afterwards.
    """
    off, length = record_area(child)
    moved = 0
    with _writable(parent):
        with open(child, "rb") as src, open(parent, "ab") as dst:
            src.seek(off)
            left = length
            while left > 0:
                block = src.read(min(BLOCK, left))
                if not block:
                    break
                dst.write(block)
                left -= len(block)
                moved += len(block) // RECORD_BYTES
            dst.flush()
            os.fsync(dst.fileno())
    return moved


# ---- saved memory (.vmrs) and other fixed-size files ------------------------------------

def write_vmrs(path: Path, vm_id: str, counter: int, memory_bytes: int, host: str, saved_at: float,
               cpu_set: str | None = None) -> None:
    """A saved state: the guest's counter, its memory, and (Save-VM) the processor features it
    runs with, which only a host that offers the same may resume."""
    doc = {"vm_id": vm_id, "counter": int(counter), "memory_bytes": int(memory_bytes),
           "saved_at": saved_at, "host": host}
    if cpu_set is not None:
        doc["cpu_set"] = cpu_set
    _write_new(path, _pack_header(VMRS_MAGIC, doc), _random_blocks(f"{vm_id}:{counter}", int(memory_bytes)))


def read_vmrs(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    doc = _unpack_header(raw, VMRS_MAGIC, "saved-state", path)
    if not isinstance(doc.get("counter"), int) or not isinstance(doc.get("vm_id"), str):
        raise DiskFormatError(f"{path}: damaged saved-state header")
    return doc


def write_filler(path: Path, size: int, seed: str) -> None:
    """A file of `size` pseudo-random bytes (the .vmgs, the lab ISO)."""
    _write_new(path, b"", _random_blocks(seed, size))
