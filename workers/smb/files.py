"""File operations on one open tree connect, on smbprotocol's low-level API.

Reads and writes move up to the negotiated max_read_size / max_write_size (capped at
`MAX_CHUNK`) per request. A request may be no larger than the credits held (one credit
per 64 KiB) and a fresh session holds 64 (4 MiB); smbprotocol's Open.read/write only
ask for the credits they consume, so each request here also asks for enough extra
credits that the next one can be full size.

Nothing here translates errors or knows about endpoints; `workers.smb.file_copy` does.
"""
from __future__ import annotations

import time

from smbprotocol.connection import Commands, Request
from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.file_info import (
    FileBasicInformation,
    FileDispositionInformation,
    FileEndOfFileInformation,
    FileInformationClass,
    FileRenameInformation,
    FileStandardInformation,
)
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    DirectoryAccessMask,
    FileAttributes,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2ReadResponse,
    SMB2SetInfoRequest,
    SMB2SetInfoResponse,
    SMB2WriteResponse,
)
from smbprotocol.open import (
    FilePipePrinterAccessMask as Access,
)
from smbprotocol.structure import Structure
from smbprotocol.tree import TreeConnect

from workers.smb import wire

MAX_CHUNK = 8 * 1024 * 1024  # bytes per READ/WRITE request, whatever the server allows beyond it
CREDIT_BYTES = 65536  # one SMB2 credit pays for 64 KiB of payload
REQUEST_TIMEOUT_S = 300  # one request (up to MAX_CHUNK bytes) may take this long
CREDIT_WAIT_S = 30
IN_FLIGHT = 4  # full-size requests per connection the credits asked for are meant to cover

SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE

READ_ACCESS = Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE
WRITE_ACCESS = (Access.FILE_READ_DATA | Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA
                | Access.FILE_READ_ATTRIBUTES | Access.FILE_WRITE_ATTRIBUTES | Access.DELETE | Access.SYNCHRONIZE)


def open_for_read(tree: TreeConnect, rel: str) -> Open:
    """Open an existing file to read it, letting everyone else read, write and delete it meanwhile."""
    fh = Open(tree, rel)
    fh.create(ImpersonationLevel.Impersonation, READ_ACCESS, FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL,
              CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_SEQUENTIAL_ONLY)
    return fh


def open_for_write(tree: TreeConnect, rel: str, *, truncate: bool = True) -> Open:
    """Create a file (emptied when `truncate`, kept as it is otherwise) to write, read back,
    rename or delete it through this handle. Other handles may read and write it too: the
    streams of one copy each open the same partial file."""
    fh = Open(tree, rel)
    fh.create(ImpersonationLevel.Impersonation, WRITE_ACCESS, FileAttributes.FILE_ATTRIBUTE_NORMAL,
              SHARE_ALL,
              CreateDisposition.FILE_OVERWRITE_IF if truncate else CreateDisposition.FILE_OPEN_IF,
              CreateOptions.FILE_NON_DIRECTORY_FILE)
    return fh


def open_for_delete(tree: TreeConnect, rel: str) -> Open:
    fh = Open(tree, rel)
    fh.create(ImpersonationLevel.Impersonation, Access.DELETE | Access.FILE_READ_ATTRIBUTES,
              FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL, CreateDisposition.FILE_OPEN,
              CreateOptions.FILE_NON_DIRECTORY_FILE)
    return fh


def open_dir_for_delete(tree: TreeConnect, rel: str) -> Open:
    fh = Open(tree, rel)
    fh.create(ImpersonationLevel.Impersonation, Access.DELETE | Access.FILE_READ_ATTRIBUTES,
              FileAttributes.FILE_ATTRIBUTE_DIRECTORY, SHARE_ALL, CreateDisposition.FILE_OPEN,
              CreateOptions.FILE_DIRECTORY_FILE)
    return fh


def open_attributes(tree: TreeConnect, rel: str) -> Open:
    """Open a file or folder just to look at it."""
    fh = Open(tree, rel)
    fh.create(ImpersonationLevel.Impersonation, Access.FILE_READ_ATTRIBUTES, FileAttributes.FILE_ATTRIBUTE_NORMAL,
              SHARE_ALL, CreateDisposition.FILE_OPEN, 0)
    return fh


def list_names(tree: TreeConnect, rel_dir: str, pattern: str) -> list[str]:
    """Names of the files in rel_dir matching `pattern` (SMB wildcards); a missing folder has none."""
    d = Open(tree, rel_dir)
    try:
        d.create(ImpersonationLevel.Impersonation,
                 DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES
                 | DirectoryAccessMask.SYNCHRONIZE,
                 FileAttributes.FILE_ATTRIBUTE_DIRECTORY, SHARE_ALL, CreateDisposition.FILE_OPEN,
                 CreateOptions.FILE_DIRECTORY_FILE)
    except SMBResponseException as e:
        if e.status in (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND):
            return []
        raise
    try:
        try:
            entries = d.query_directory(pattern, FileInformationClass.FILE_NAMES_INFORMATION)
        except SMBResponseException as e:
            if e.status == NtStatus.STATUS_NO_SUCH_FILE:
                return []
            raise
        return [e["file_name"].get_value().decode("utf-16-le") for e in entries]
    finally:
        close(d)


def close(fh: Open) -> None:
    if fh.connected:
        fh.close(get_attributes=False)


def make_dirs(tree: TreeConnect, rel_dir: str) -> None:
    """Create rel_dir and its parents (backslash separated) if they do not exist yet."""
    parts = rel_dir.split("\\")
    for i in range(1, len(parts) + 1):
        d = Open(tree, "\\".join(parts[:i]))
        d.create(ImpersonationLevel.Impersonation,
                 DirectoryAccessMask.FILE_READ_ATTRIBUTES | DirectoryAccessMask.SYNCHRONIZE,
                 FileAttributes.FILE_ATTRIBUTE_DIRECTORY, SHARE_ALL, CreateDisposition.FILE_OPEN_IF,
                 CreateOptions.FILE_DIRECTORY_FILE)
        close(d)


def _credits(fh: Open, want: int, max_size: int) -> tuple[int, int]:
    """(bytes to move in the next request, credits to ask for in it).

    The request may only be as large as the credits we hold; we ask for what it consumes
    plus what lets IN_FLIGHT full-size requests be outstanding at once.
    """
    conn = fh.connection
    limit = min(max_size, MAX_CHUNK)
    if not conn.supports_multi_credit:
        return min(want, limit, CREDIT_BYTES), 1
    deadline = time.monotonic() + CREDIT_WAIT_S
    while (available := conn.sequence_window["high"] - conn.sequence_window["low"]) < 1:
        if time.monotonic() > deadline:
            raise SMBException("no SMB credits granted by the server: connection timeout")
        time.sleep(0.001)
    size = max(1, min(want, limit, available * CREDIT_BYTES))
    charge = (size - 1) // CREDIT_BYTES + 1
    full = (limit - 1) // CREDIT_BYTES + 1
    top_up = max(0, IN_FLIGHT * full - (available - charge))
    return size, min(charge + top_up, 8192)


def send_read(fh: Open, offset: int, want: int, into: memoryview | None = None) -> Request:
    """Send one READ of up to `want` bytes at `offset`; `recv_read` waits for its answer.
    With `into` (a writable buffer at least `want` + wire.SINK_SLACK bytes long) the data is
    received straight into it. `req.length` is what was asked for (fewer when credits are short)."""
    size, credit_request = _credits(fh, want, fh.connection.max_read_size)
    tc = fh.tree_connect
    req = fh.connection.send_bulk(Commands.SMB2_READ, wire.read_body(fh, offset, size), size, None,
                                  tc.session.session_id, tc.tree_connect_id, credit_request, sink=into)
    req.length = size
    return req


def recv_read(fh: Open, req: Request) -> bytes | memoryview:
    """The bytes a READ sent by `send_read` returned (empty at end of file): a view of its
    `into` buffer when it had one."""
    try:
        resp = fh.connection.receive(req, timeout=REQUEST_TIMEOUT_S)
    except SMBResponseException as e:
        if e.status == NtStatus.STATUS_END_OF_FILE:
            return b""
        raise
    if req.bulk_length is not None:
        return req.sink[:req.bulk_length]
    out = SMB2ReadResponse()  # answered the ordinary way (no sink, or an unusual response)
    out.unpack(resp["data"].get_value())
    data = out["buffer"].get_value()
    if req.sink is None:
        return data
    req.sink[:len(data)] = data
    return req.sink[:len(data)]


def read_chunk(fh: Open, offset: int, want: int, into: memoryview | None = None) -> bytes | memoryview:
    """One READ of up to `want` bytes at `offset` (fewer when credits are short, empty at end of file)."""
    return recv_read(fh, send_read(fh, offset, want, into))


def send_write(fh: Open, offset: int, data: bytes | memoryview) -> Request:
    """Send one WRITE of (a prefix of) `data` at `offset`, without copying it; `recv_write`
    says how much the server took. `req.length` is the prefix sent."""
    size, credit_request = _credits(fh, len(data), fh.connection.max_write_size)
    tc = fh.tree_connect
    req = fh.connection.send_bulk(Commands.SMB2_WRITE, wire.write_body(fh, offset, size), size,
                                  memoryview(data)[:size], tc.session.session_id, tc.tree_connect_id,
                                  credit_request)
    req.length = size
    return req


def recv_write(fh: Open, req: Request) -> int:
    resp = fh.connection.receive(req, timeout=REQUEST_TIMEOUT_S)
    out = SMB2WriteResponse()
    out.unpack(resp["data"].get_value())
    return out["count"].get_value()


def write_chunk(fh: Open, offset: int, data: bytes | memoryview) -> int:
    """One WRITE of (a prefix of) `data` at `offset`; returns the bytes the server took."""
    return recv_write(fh, send_write(fh, offset, data))


def flush(fh: Open) -> None:
    msg, recv = fh.flush(send=False)
    tc = fh.tree_connect
    req = fh.connection.send(msg, sid=tc.session.session_id, tid=tc.tree_connect_id)
    fh.connection.receive(req, timeout=REQUEST_TIMEOUT_S)


def _query(fh: Open, info_class: type[Structure]) -> Structure:
    info = info_class()
    q = SMB2QueryInfoRequest()
    q["info_type"] = info.INFO_TYPE
    q["file_info_class"] = info.INFO_CLASS
    q["file_id"] = fh.file_id
    q["output_buffer_length"] = len(info)
    tc = fh.tree_connect
    req = fh.connection.send(q, sid=tc.session.session_id, tid=tc.tree_connect_id)
    resp = fh.connection.receive(req, timeout=REQUEST_TIMEOUT_S)
    out = SMB2QueryInfoResponse()
    out.unpack(resp["data"].get_value())
    return out.parse_buffer(info_class)


def _set(fh: Open, info: Structure) -> None:
    s = SMB2SetInfoRequest()
    s["info_type"] = info.INFO_TYPE
    s["file_info_class"] = info.INFO_CLASS
    s["file_id"] = fh.file_id
    s["buffer"] = info
    tc = fh.tree_connect
    req = fh.connection.send(s, sid=tc.session.session_id, tid=tc.tree_connect_id)
    resp = fh.connection.receive(req, timeout=REQUEST_TIMEOUT_S)
    SMB2SetInfoResponse().unpack(resp["data"].get_value())


def current_size(fh: Open) -> int:
    """The open file's size as the server sees it now (not as it was at CREATE)."""
    return _query(fh, FileStandardInformation)["end_of_file"].get_value()


def times(fh: Open) -> tuple[int, int]:
    """(last write time, change time) of the open file, as FILETIME ticks."""
    info = _query(fh, FileBasicInformation)
    return (int.from_bytes(info["last_write_time"].pack(), "little"),
            int.from_bytes(info["change_time"].pack(), "little"))


def set_size(fh: Open, size: int) -> None:
    """Cut (or extend) the open file to `size` bytes."""
    info = FileEndOfFileInformation()
    info["end_of_file"] = size
    _set(fh, info)


def rename(fh: Open, new_rel: str, replace: bool = True) -> None:
    """Rename the open file to `new_rel` (relative to the share root), replacing what is there."""
    info = FileRenameInformation()
    info["replace_if_exists"] = replace
    info["file_name"] = new_rel
    _set(fh, info)


def mark_delete(fh: Open) -> None:
    """Delete the open file once its last handle closes (needs DELETE access)."""
    info = FileDispositionInformation()
    info["delete_pending"] = True
    _set(fh, info)
