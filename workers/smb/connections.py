"""Per-process SMB connection cache.

One authenticated connection per (server, port, username) — and per password digest and
security options, so differing settings never share a session — created
lazily on first use, with one tree connect per share on it. A connection never crosses a
fork: the cache remembers the pid that filled it, `os.register_at_fork` empties it in
every child, and every lookup checks the pid again. A forked child drops the inherited
sockets *without a word on the wire* (the parent still owns those sessions); it opens
its own on first use. Celery workers may also call `reset_connections()` from
`worker_process_init`.

One connection carries one stream at a time (credits are planned per request); parallel
streams use separate connections: `tree(ep, stream=i)` keys the cache by stream number too,
and by the endpoint's `lane`, so copies running side by side in one process never share one.
A connect holds only its own key's lock: connections to other keys open meanwhile (`warm`
opens a whole set at once, ahead of the downtime that will use them).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from smbprotocol.connection import Dialects
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from workers.smb import wire
from workers.smb.endpoint import SmbEndpoint
from workers.smb.errors import SmbConnectionError, SmbPolicyError, smb_errors
from workers.smb.wire import Connection

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30
# SMB 2.x signs with HMAC-SHA256 over the session key, has no encryption and no protection
# of the negotiation (3.0 brings AES-CMAC signing, AES-CCM encryption and validated
# negotiation; 3.1.1 pre-authentication integrity).
MIN_DIALECT = Dialects.SMB_3_0_0

wire.install()


@dataclass
class _Link:
    connection: Connection
    session: Session
    trees: dict[str, TreeConnect] = field(default_factory=dict)


_lock = threading.Lock()  # guards _links and _key_locks, never held across the wire
_links: dict[tuple, _Link] = {}
_key_locks: dict[tuple, threading.Lock] = {}  # one per key: held while that key's link is made
_owner_pid = os.getpid()


def _key(ep: SmbEndpoint, stream: int = 0) -> tuple:
    # (server, port, username), plus the security options and a digest of the password, so
    # a wrong or rotated password is never masked by a session opened with the old one.
    secret = hashlib.sha256(ep.password.encode("utf-8")).hexdigest()[:16]
    return (ep.server.lower(), ep.port, ep.username.lower(), ep.require_signing, ep.encrypt, secret,
            ep.lane, stream)


def _alive(conn: Connection) -> bool:
    worker = getattr(conn, "_t_worker", None)
    return bool(
        conn.transport is not None and conn.transport.connected
        and worker is not None and worker.is_alive()
        and getattr(conn, "_t_exc", None) is None
    )


def _drop_inherited() -> None:
    """In a forked child: forget the parent's connections, closing only our copies of the fds."""
    global _lock, _owner_pid
    _lock = threading.Lock()  # the parent's locks may have been held by another thread at fork time
    _key_locks.clear()
    for link in _links.values():
        sock = getattr(link.connection.transport, "_sock", None)
        if sock is not None:
            try:
                sock.close()  # close(2) on our fd only; no shutdown(), so the parent's socket lives on
            except OSError:
                pass
    _links.clear()
    _owner_pid = os.getpid()


def _close_quietly(conn: Connection) -> None:
    try:
        if _alive(conn):
            conn.disconnect(close=True, timeout=5)
        elif conn.transport is not None:
            conn.disconnect(close=False)
    except Exception as e:  # noqa: BLE001 - already broken (or being dropped for breaking); nothing more to do
        log.debug("closing SMB connection to %s failed: %s", conn.server_name, e)


def _check_pid() -> None:
    if os.getpid() != _owner_pid:
        _drop_inherited()


def reset_connections() -> None:
    """Forget every cached connection of this process.

    After a fork (Celery's `worker_process_init`) this drops the inherited connections
    without touching them on the wire; in the process that opened them it logs off and
    closes them.
    """
    global _owner_pid
    if os.getpid() != _owner_pid:
        _drop_inherited()
        return
    with _lock:
        links = list(_links.values())
        _links.clear()
    for link in links:
        _close_quietly(link.connection)


def connection_count() -> int:
    """How many connections this process has cached (0 right after a fork)."""
    _check_pid()
    return len(_links)


def evict(ep: SmbEndpoint, stream: int = 0) -> None:
    """Drop (and close) the cached connection for `ep`'s `stream`, e.g. after it broke."""
    _check_pid()
    with _lock:
        link = _links.pop(_key(ep, stream), None)
    if link is not None:
        _close_quietly(link.connection)


def _connect(ep: SmbEndpoint) -> _Link:
    conn = Connection(uuid.uuid4(), ep.server, ep.port, require_signing=ep.require_signing)
    try:
        conn.connect(timeout=CONNECT_TIMEOUT_S)
    except ValueError as e:  # smbprotocol's transport wraps refused/unreachable as ValueError
        raise SmbConnectionError(f"{ep.unc_root}: cannot connect: {e}") from e
    try:
        _check_server(ep, conn)
        session = Session(conn, ep.username, ep.password, require_encryption=ep.encrypt)
        session.connect()
        if ep.require_signing and not (session.signing_required or session.encrypt_data):
            raise SmbPolicyError(f"{ep.unc_root}: the session is neither signed nor encrypted")
    except BaseException:
        _close_quietly(conn)
        raise
    log.debug("SMB connection to %s:%s as %s (dialect 0x%04x, max read %d, max write %d, "
              "signing %s, encryption %s)", ep.server, ep.port, ep.username, conn.dialect,
              conn.max_read_size, conn.max_write_size, session.signing_required, session.encrypt_data)
    return _Link(conn, session)


def _check_server(ep: SmbEndpoint, conn: Connection) -> None:
    """The negotiated connection meets the endpoint's floor, before any credential is sent."""
    if conn.dialect < MIN_DIALECT:
        raise SmbPolicyError(f"{ep.unc_root}: the server negotiated SMB {conn.dialect >> 8}.{conn.dialect & 0xff:x}; "
                             "quickmig requires SMB 3.0 or later (enable SMB 3 on the server)")
    if ep.encrypt and not conn.supports_encryption:
        raise SmbPolicyError(f"{ep.unc_root}: the server does not offer SMB encryption, which smb_encrypt "
                             "requires (enable it on the server, or set smb_encrypt = false for this host "
                             "where the network is trusted)")


def tree(ep: SmbEndpoint, stream: int = 0) -> TreeConnect:
    """The tree connect for ep's share on this process's cached connection number `stream`
    (made on demand)."""
    _check_pid()
    key = _key(ep, stream)
    with smb_errors(ep.unc_root, on_connection_error=lambda: evict(ep, stream)):
        with _lock:
            key_lock = _key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with _lock:
                link = _links.get(key)
            if link is not None and not _alive(link.connection):
                with _lock:
                    if _links.get(key) is link:
                        _links.pop(key)
                _close_quietly(link.connection)
                link = None
            if link is None:
                link = _connect(ep)
                with _lock:
                    _links[key] = link
            share = ep.share.lower()
            tc = link.trees.get(share)
            if tc is None:
                tc = TreeConnect(link.session, f"\\\\{ep.server}\\{ep.share}")
                tc.connect()
                link.trees[share] = tc
            return tc


def warm(ep: SmbEndpoint, streams: int = 1) -> None:
    """Open ep's connections for streams 0..streams-1 now, side by side (those cached and
    alive are kept), so the copy that uses them later pays no connect or session setup."""
    if streams <= 1:
        tree(ep)
        return
    with ThreadPoolExecutor(streams, thread_name_prefix="smb-warm") as pool:
        for f in [pool.submit(tree, ep, i) for i in range(streams)]:
            f.result()


os.register_at_fork(after_in_child=_drop_inherited)
