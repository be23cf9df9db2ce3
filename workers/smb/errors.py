"""The copy engine's exceptions, and the one place smbprotocol's exceptions are translated.

Every error names the file (as \\\\server[:port]\\share\\path) it is about. The `Retryable`
ones (workers.model.errors) are those trying the same thing again later can help.
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBResponseException,
)
from smbprotocol.header import NtStatus

from workers.model.errors import QuickmigError, Retryable


class SmbError(QuickmigError):
    """Something went wrong talking SMB; the message names the server/share/file."""


class SmbConnectionError(SmbError, Retryable):
    """The server could not be reached, or the connection broke (refused, reset, timed out)."""


class SmbAuthError(SmbError):
    """The server refused the credentials."""


class SmbShareNotFoundError(SmbError):
    """The server has no share by that name."""


class SmbFileNotFoundError(SmbError, FileNotFoundError):
    """The file (or a folder on its path) does not exist."""


class SmbPermissionError(SmbError, PermissionError):
    """The server denied access to the file."""


class SmbSharingViolation(SmbError, Retryable):
    """Someone else holds the file open without sharing the access we asked for."""


class SmbPolicyError(SmbError):
    """The server cannot meet the client's security floor (SMB 3.0 or later, signing,
    encryption when asked for): naming the server and what it lacks. Not retryable: the
    server's or the inventory's settings must change."""


class SourceChangedError(SmbError):
    """The source file changed size while it was being copied.

    Copies only work on frozen files (parent disks after a checkpoint, a saved VM's files).
    """


class CopyVerificationError(SmbError):
    """The copy that landed on the destination does not hash the same as the source read."""


_NOT_FOUND = {
    NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
    NtStatus.STATUS_OBJECT_PATH_NOT_FOUND,
    NtStatus.STATUS_NO_SUCH_FILE,
}
_AUTH = {
    NtStatus.STATUS_LOGON_FAILURE,
    NtStatus.STATUS_WRONG_PASSWORD,
    NtStatus.STATUS_PASSWORD_EXPIRED,
}
_CONNECTION = {
    NtStatus.STATUS_NETWORK_NAME_DELETED,
    NtStatus.STATUS_USER_SESSION_DELETED,
    NtStatus.STATUS_INSUFFICIENT_RESOURCES,
}


def _status_name(status: int) -> str:
    for name, value in vars(NtStatus).items():
        if name.startswith("STATUS_") and value == status:
            return name
    return f"0x{status:08x}"


def translate(exc: BaseException, where: str) -> SmbError | None:
    """The SmbError for an exception raised by smbprotocol (or the socket), or None if foreign.

    `where` names the thing being worked on, e.g. \\\\127.0.0.1:4455\\vms\\a.vhdx.
    """
    if isinstance(exc, SmbError):
        return exc
    if isinstance(exc, SMBResponseException):
        status = exc.status
        name = _status_name(status)
        if status in _NOT_FOUND:
            return SmbFileNotFoundError(f"{where}: no such file or folder ({name})")
        if status == NtStatus.STATUS_ACCESS_DENIED:
            return SmbPermissionError(f"{where}: access denied ({name})")
        if status in _AUTH:
            return SmbAuthError(f"{where}: the server refused the credentials ({name})")
        if status == NtStatus.STATUS_BAD_NETWORK_NAME:
            return SmbShareNotFoundError(f"{where}: no such share on the server ({name})")
        if status == NtStatus.STATUS_SHARING_VIOLATION:
            return SmbSharingViolation(f"{where}: file is open elsewhere without sharing ({name})")
        if status in _CONNECTION:
            return SmbConnectionError(f"{where}: the server dropped the session ({name})")
        return SmbError(f"{where}: {name}: {exc.message}")
    if isinstance(exc, SMBAuthenticationError):
        return SmbAuthError(f"{where}: authentication failed: {exc}")
    if isinstance(exc, SMBConnectionClosed):
        return SmbConnectionError(f"{where}: connection closed: {exc}")
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, BrokenPipeError, socket.gaierror)):
        return SmbConnectionError(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, SMBException):
        text = str(exc)
        if "timeout" in text.lower() or "socket was closed" in text.lower():
            return SmbConnectionError(f"{where}: {text}")
        return SmbError(f"{where}: {text}")
    if isinstance(exc, OSError) and exc.errno is not None:
        # a socket-level failure surfacing from send()/recv()
        return SmbConnectionError(f"{where}: {exc}")
    return None


@contextmanager
def smb_errors(where: str, on_connection_error: Callable[[], None] | None = None) -> Iterator[None]:
    """Re-raise smbprotocol/socket exceptions as SmbError subclasses naming `where`.

    `on_connection_error` runs (e.g. to evict a cached connection) before a
    SmbConnectionError propagates.
    """
    try:
        yield
    except SmbError as e:
        if isinstance(e, SmbConnectionError) and on_connection_error:
            on_connection_error()
        raise
    except Exception as e:
        err = translate(e, where)
        if err is None:
            raise
        if isinstance(err, SmbConnectionError) and on_connection_error:
            on_connection_error()
        raise err from e
