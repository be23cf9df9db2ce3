"""smbprotocol's connection with a bulk path: READ and WRITE payloads are never copied in Python.

smbprotocol packs every message into one `bytes` (the 8 MiB payload included), copies it
again to insert the signature, receives into a fresh buffer per message, copies it into
`bytes`, unpacks it (another copy) and re-packs the header to check its signature
(another). Profiled on a 1 GiB copy these copies, the page faults of the fresh 8 MiB
buffers and the Python structure code cost more CPU than SHA-256, AES-GMAC and the
kernel's socket copies together. Here:

- `send_bulk` sends a READ or WRITE as pieces (`sendmsg`): the 4-byte length, a header of
  ~112 bytes, and the caller's payload buffer as it is. The signature (AES-GMAC, AES-CMAC
  or HMAC-SHA256, as smbprotocol negotiated) is computed over the pieces; with encryption
  (AES-GCM) the pieces are encrypted into one per-connection buffer that is reused.
- The receive thread reads the header of each incoming message first; a READ response
  whose request named a `sink` (a writable buffer) is received straight into the sink
  with one `recv(MSG_WAITALL)`, its signature checked over the pieces, or decrypted in
  place (AES-GCM). Every other message (a few hundred bytes) goes through smbprotocol's
  own parsing, unchanged in behaviour.

Everything else (negotiate, session setup, credits, sequence numbers, pending responses,
keep-alive echoes) stays smbprotocol's. This overrides private smbprotocol code, so it is
written against one exact version (`SMBPROTOCOL_VERSION`, pinned in pyproject.toml) and
refuses to load with any other: a silent mismatch could corrupt copies.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import select
import socket
import struct
import threading
import timeit
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from typing import Any

SMBPROTOCOL_VERSION = "1.17.0"
if version("smbprotocol") != SMBPROTOCOL_VERSION:  # pragma: no cover - depends on the install
    raise ImportError(
        f"workers.smb.wire overrides private code of smbprotocol {SMBPROTOCOL_VERSION} but "
        f"smbprotocol {version('smbprotocol')} is installed; install smbprotocol=={SMBPROTOCOL_VERSION} "
        "(pyproject.toml pins it) or port wire.py to the new version")

import smbprotocol.connection as smb_connection  # noqa: E402
from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives import cmac  # noqa: E402
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, Cipher, algorithms, modes  # noqa: E402
from smbprotocol.connection import (  # noqa: E402
    Ciphers,
    Commands,
    Dialects,
    Request,
    SigningAlgorithms,
    SMB2TransformHeader,
)
from smbprotocol.exceptions import SMBConnectionClosed, SMBException  # noqa: E402
from smbprotocol.header import (  # noqa: E402
    NtStatus,
    Smb2Flags,
    SMB2HeaderRequest,
    SMB2HeaderResponse,
)
from smbprotocol.open import Open, SMB2ReadRequest, SMB2WriteRequest  # noqa: E402
from smbprotocol.session import Session  # noqa: E402
from smbprotocol.transport import Tcp  # noqa: E402

_ZEROS16 = b"\x00" * 16
HEADER = 64
READ_RESPONSE_FIXED = 16  # StructureSize .. Reserved2 of an SMB2 READ response
TRANSFORM = 52
SINK_SLACK = 16  # a sink must be this much longer than the payload it takes (in-place AES-GCM needs it)
_GCM = (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
_MAX_NETBIOS = 0xFFFFFF

Bytes = bytes | bytearray | memoryview  # what sendmsg, the MACs and the ciphers take


class FastTcp(Tcp):
    """Direct TCP that sends lists of buffers and receives into the caller's buffers."""

    def send(self, header: Bytes | SMB2TransformHeader) -> None:
        data = header if isinstance(header, (bytes, bytearray, memoryview)) else header.pack()
        self.send_pieces([data])

    def send_pieces(self, pieces: Sequence[Bytes]) -> None:
        size = sum(len(p) for p in pieces)
        if size > self.MAX_SIZE:
            raise ValueError(f"Data to be sent over Direct TCP size {size} exceeds the max length allowed "
                             f"{self.MAX_SIZE}")
        parts = [memoryview(struct.pack(">L", size))] + [memoryview(p).cast("B") for p in pieces if len(p)]
        with self._sock_lock:
            while parts:
                sent = self._sock.sendmsg(parts)
                while sent:
                    if sent >= len(parts[0]):
                        sent -= len(parts[0])
                        parts.pop(0)
                    else:
                        parts[0] = parts[0][sent:]
                        sent = 0

    def recv_into(self, view: memoryview, timeout: float, idle_ok: bool = False) -> bool:
        """Fill `view` from the socket; False when the connection closed. Waiting longer than
        `timeout` for the first byte raises TimeoutError when `idle_ok` (the caller sends a
        keep-alive), SMBConnectionClosed otherwise (a message stopped half way)."""
        offset, length = 0, len(view)
        while offset < length:
            start = timeit.default_timer()
            with self._close_lock:
                if not self.connected:
                    return False
                ready = select.select([self._sock], [], [], max(timeout, 1))[0]
                elapsed = timeit.default_timer() - start
                timeout -= elapsed
                if not ready:
                    if idle_ok and offset == 0:
                        raise TimeoutError(f"recv idle for {elapsed:.1f}s")
                    raise SMBConnectionClosed(f"the server stopped sending half way through a message "
                                              f"({offset}/{length} bytes)")
                try:
                    got = self._sock.recv_into(view[offset:], length - offset, socket.MSG_WAITALL)
                except OSError as e:
                    if e.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    got = 0
            if got == 0:
                self.close()
                return False
            offset += got
            idle_ok = False
        return True

    def recv(self, timeout: float) -> bytes:
        size = bytearray(4)
        if not self.recv_into(memoryview(size), timeout, idle_ok=True):
            return b""
        body = bytearray(struct.unpack(">L", size)[0])
        if not self.recv_into(memoryview(body), timeout):
            return b""
        return bytes(body)


def _mac(sign_id: int, key: bytes, pieces: Iterable[Bytes], message_id: int, response: bool, command: int) -> bytes:
    """The 16-byte SMB2 signature of the message made of `pieces` (signature field zeroed)."""
    if sign_id == SigningAlgorithms.AES_GMAC:
        info = (1 if response else 0) | (2 if command == Commands.SMB2_CANCEL else 0)
        nonce = message_id.to_bytes(8, "little") + info.to_bytes(4, "little")
        gmac = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        for piece in pieces:
            gmac.authenticate_additional_data(piece)
        gmac.finalize()
        return gmac.tag
    if sign_id == SigningAlgorithms.AES_CMAC:
        aes_cmac = cmac.CMAC(algorithms.AES(key))
        for piece in pieces:
            # cryptography's stub says bytes; its Rust side takes any buffer, and bytes() would copy the payload
            aes_cmac.update(piece)  # type: ignore[arg-type]
        return aes_cmac.finalize()
    sha_hmac = hmac.new(key, digestmod=hashlib.sha256)
    for piece in pieces:
        sha_hmac.update(piece)
    return sha_hmac.digest()[:16]


def _authentic(decryptor: AEADDecryptionContext) -> None:
    try:
        decryptor.finalize()
    except InvalidTag:
        raise SMBException("an encrypted message from the server failed authentication (AES-GCM tag)") from None


def _header_pieces(header: Bytes) -> list[Bytes]:
    """An SMB2 header (and what follows it) as MAC input, its signature field read as zeros."""
    view = memoryview(header)
    return [view[:48], _ZEROS16, view[64:]]


class Connection(smb_connection.Connection):
    """smbprotocol's Connection plus the bulk READ/WRITE path described above."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        self._bulk_lock = threading.Lock()
        self._sealed = bytearray(0)
        return super().connect(*args, **kwargs)

    # --- signing and encryption over pieces ---------------------------------------

    def _sign_id(self) -> int:
        if self.dialect >= Dialects.SMB_3_1_1 and self.signing_algorithm_id is not None:
            return self.signing_algorithm_id
        return SigningAlgorithms.AES_CMAC if self.dialect >= Dialects.SMB_3_0_0 else SigningAlgorithms.HMAC_SHA256

    def _generate_signature(self, b_header: bytes, signing_key: bytes, message_id: int, response: bool,
                            command: int) -> bytes:
        # smbprotocol's signature of one packed message, without its two copies of it.
        return _mac(self._sign_id(), signing_key, _header_pieces(b_header), message_id, response, command)

    def _cipher_id(self) -> int:
        return self.cipher_id if self.dialect >= Dialects.SMB_3_1_1 else Ciphers.AES_128_CCM

    def _seal(self, pieces: Sequence[Bytes], session: Session) -> list[Bytes]:
        """The pieces of one message encrypted for `session`: [transform header, ciphertext]."""
        size = sum(len(p) for p in pieces)
        if self._cipher_id() not in _GCM:  # AES-CCM cannot be fed in pieces; smbprotocol's way
            return [self._encrypt(b"".join(bytes(p) for p in pieces), session).pack()]
        nonce = os.urandom(12)
        th = bytearray(TRANSFORM)
        th[0:4] = b"\xfdSMB"
        th[20:32] = nonce
        struct.pack_into("<LHHQ", th, 36, size, 0, 1, session.session_id)
        if len(self._sealed) < size + SINK_SLACK:
            self._sealed = bytearray(size + SINK_SLACK)
        out = memoryview(self._sealed)
        enc = Cipher(algorithms.AES(session.encryption_key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(bytes(th[20:52]))
        at = 0
        for piece in pieces:
            at += enc.update_into(piece, out[at:])
        enc.finalize()
        th[4:20] = enc.tag
        return [th, out[:at]]

    # --- sending --------------------------------------------------------------------

    def send_bulk(self, command: int, body: bytes, length: int, payload: memoryview | None, sid: int, tid: int,
                  credit_request: int, sink: memoryview | None = None) -> Request:
        """Send one READ (`body` from read_body, `payload` None; the data lands in `sink` when
        given, which must be SINK_SLACK bytes longer than `length`) or WRITE (`body` from
        write_body, `payload` the `length` bytes to write). Returns smbprotocol's Request:
        `Connection.receive` waits for it as for any other."""
        session = self.session_table[sid]
        tree = session.tree_connect_table[tid]
        charge = (max(length, 1) - 1) // 65536 + 1 if self.supports_multi_credit else 0
        with self.sequence_lock:
            low, high = self.sequence_window["low"], self.sequence_window["high"]
            if charge > high - low:
                raise SMBException(f"Request requires {charge} credits but only {high - low} credits are available")
            self.sequence_window["low"] += charge or 1
        header = SMB2HeaderRequest()
        header["tree_id"] = tid
        header["credit_charge"] = charge
        header["command"] = command
        header["credit_request"] = credit_request
        header["message_id"] = low
        header["session_id"] = sid
        header["data"] = body
        if tree.is_dfs_share:
            header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_DFS_OPERATIONS)
        encrypt = session.encrypt_data or tree.encrypt_data
        sign = not encrypt and session.signing_required and session.signing_key
        if sign:
            header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
        b_header = bytearray(header.pack())
        pieces: list[Bytes] = [b_header] if payload is None else [b_header, payload]
        if sign:
            signature = _mac(self._sign_id(), session.signing_key, _header_pieces(b_header) + pieces[1:], low,
                             False, command)
            b_header[48:64] = signature
            header["signature"] = signature
        request = Request(header, SMB2ReadRequest if command == Commands.SMB2_READ else SMB2WriteRequest, self,
                          session_id=sid)
        request.sink, request.bulk_length = sink, None
        self.outstanding_requests[low] = request  # before sending: the answer may beat us back
        self._check_worker_running()
        with self._bulk_lock:  # the sealed buffer is one per connection
            self.transport.send_pieces(self._seal(pieces, session) if encrypt else pieces)
        return request

    # --- receiving ------------------------------------------------------------------

    def _process_message_thread(self) -> None:
        try:
            while True:
                size = bytearray(4)
                try:
                    if not self.transport.recv_into(memoryview(size), self._receive_timeout, idle_ok=True):
                        return
                except TimeoutError as ex:
                    self._keep_alive(ex)
                    continue
                if not self._receive(struct.unpack(">L", size)[0]):
                    return
        except Exception as exc:  # noqa: BLE001 - as smbprotocol's thread: any failure goes to the waiting callers
            smb_connection.log.exception("SMB receive worker died (outstanding=%d)", len(self.outstanding_requests))
            self._t_exc = exc  # raised to the next caller of send/receive
            self.disconnect(False)
        finally:
            for request in self.outstanding_requests.values():
                request.response_event.set()

    def _keep_alive(self, ex: TimeoutError) -> None:
        # smbprotocol's: an echo every idle timeout; an echo of ours still unanswered means
        # the server is gone.
        for r in self.outstanding_requests.values():
            if (r.response is None and r.message["command"].get_value() == Commands.SMB2_ECHO
                    and r.message["reserved"].get_value() == 1):
                raise SMBConnectionClosed("Connection timed out. Server did not respond within timeout.") from ex
        for sid in self.session_table.keys():
            req = self.send(smb_connection.SMB2Echo(), sid=sid)
            req.message["reserved"] = 1

    def _read(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        return buf if self.transport.recv_into(memoryview(buf), self._receive_timeout) else None

    def _sink_for(self, plain_header: bytearray) -> tuple[Request, memoryview] | None:
        """(request, sink) when this header starts a successful, uncompounded READ response
        to a request that named a sink."""
        command, = struct.unpack_from("<H", plain_header, 12)
        status, = struct.unpack_from("<L", plain_header, 8)
        next_command, message_id = struct.unpack_from("<LQ", plain_header, 20)
        if command != Commands.SMB2_READ or status != NtStatus.STATUS_SUCCESS or next_command:
            return None
        request = self.outstanding_requests.get(message_id)
        sink = getattr(request, "sink", None)
        return None if sink is None else (request, sink)

    def _payload_span(self, fixed: bytearray, size: int, sink: memoryview) -> tuple[int, int]:
        """(padding after the fixed part, payload length) of a READ response of `size` bytes."""
        data_offset, data_length = fixed[2], struct.unpack_from("<L", fixed, 4)[0]
        pad = data_offset - HEADER - READ_RESPONSE_FIXED
        if pad < 0 or HEADER + READ_RESPONSE_FIXED + pad + data_length != size or \
                data_length + SINK_SLACK > len(sink):
            raise SMBException(f"malformed READ response: offset {data_offset}, length {data_length}, "
                               f"message {size} bytes, room for {len(sink) - SINK_SLACK}")
        return pad, data_length

    def _receive(self, size: int) -> bool:
        """Receive one message of `size` bytes and hand it to its request; False on close."""
        if size < HEADER:
            body = self._read(size)
            return body is not None and self._dispatch(bytes(body))
        first = self._read(4)
        if first is None:
            return False
        if first == b"\xfdSMB":
            return self._receive_sealed(size, first)
        rest = self._read(HEADER - 4)
        if rest is None:
            return False
        header = first + rest
        found = self._sink_for(header) if size >= HEADER + READ_RESPONSE_FIXED else None
        if found is None:
            body = self._read(size - HEADER)
            return body is not None and self._dispatch(bytes(header + body))
        request, sink = found
        fixed = self._read(READ_RESPONSE_FIXED)
        if fixed is None:
            return False
        pad, n = self._payload_span(fixed, size, sink)
        padding = self._read(pad)
        if padding is None or not self.transport.recv_into(sink[:n], self._receive_timeout):
            return False
        flags, = struct.unpack_from("<L", header, 16)
        session = self.session_table.get(request.session_id)
        if session is not None and session.encrypt_data:
            raise SMBException("the server sent an unencrypted READ response on an encrypted session")
        if flags & Smb2Flags.SMB2_FLAGS_SIGNED:
            message_id, = struct.unpack_from("<Q", header, 24)
            want = _mac(self._sign_id(), session.signing_key, _header_pieces(header) + [fixed, padding, sink[:n]],
                        message_id, True, Commands.SMB2_READ)
            if want != bytes(header[48:64]):
                raise SMBException(f"Server message signature could not be verified: {header[48:64].hex()} "
                                   f"!= {want.hex()}")
        elif session is not None and session.signing_required:
            raise SMBException("the server sent an unsigned READ response on a session that requires signing")
        self._deliver(request, bytes(header + fixed + padding), n)
        return True

    def _receive_sealed(self, size: int, first: bytearray) -> bool:
        rest = self._read(TRANSFORM - 4)
        if rest is None:
            return False
        th = first + rest
        flags, session_id = struct.unpack_from("<HQ", th, 42)
        session = self.session_table.get(session_id)
        if self._cipher_id() not in _GCM or session is None or flags != 1:
            body = self._read(size - TRANSFORM)  # smbprotocol's way (it also reports bad ones)
            if body is None:
                return False
            msg = SMB2TransformHeader()
            msg.unpack(bytes(th + body))
            return self._dispatch(self._decrypt(msg), encrypted=True)
        dec = Cipher(algorithms.AES(session.decryption_key), modes.GCM(bytes(th[20:32]), bytes(th[4:20]))).decryptor()
        dec.authenticate_additional_data(bytes(th[20:52]))
        clear = size - TRANSFORM
        head = self._read(min(clear, HEADER + READ_RESPONSE_FIXED))
        if head is None:
            return False
        plain = bytearray(len(head) + SINK_SLACK)
        dec.update_into(head, plain)
        plain = plain[:len(head)]
        found = self._sink_for(plain) if len(plain) == HEADER + READ_RESPONSE_FIXED else None
        if found is None:
            body = self._read(clear - len(head))
            if body is None:
                return False
            out = bytearray(len(body) + SINK_SLACK)
            n = dec.update_into(body, out)
            _authentic(dec)
            return self._dispatch(bytes(plain + out[:n]), encrypted=True)
        request, sink = found
        pad, n = self._payload_span(plain[HEADER:], clear, sink)
        padding = self._read(pad)
        if padding is None or not self.transport.recv_into(sink[:n], self._receive_timeout):
            return False
        clear_pad = bytearray(pad + SINK_SLACK)
        dec.update_into(padding, clear_pad)
        dec.update_into(sink[:n], sink)  # in place: the sink has SINK_SLACK bytes to spare
        _authentic(dec)  # nothing is delivered before the tag is checked
        self._deliver(request, bytes(plain + clear_pad[:pad]), n)
        return True

    def _deliver(self, request: Request, b_header: bytes, bulk_length: int) -> None:
        header = SMB2HeaderResponse()
        header.unpack(b_header)
        with self.sequence_lock:
            self.sequence_window["high"] += header["credit_response"].get_value()
        with request.response_event_lock:
            request.bulk_length = bulk_length
            request.response = header
            request.response_event.set()

    def _check_clear(self, header: SMB2HeaderResponse, session_id: int, command: int) -> None:
        """A response that came unencrypted may be accepted (MS-SMB2 3.2.5.1.3): when the
        session requires signing, every response but an interim one (STATUS_PENDING) and an
        oplock break (MessageId all ones) must carry a valid signature, whether or not it
        sets SMB2_FLAGS_SIGNED. smbprotocol checks only the responses that set the flag, so
        a relay that clears it could make a CREATE answer "not found". On an encrypted
        session nothing may come in the clear. NEGOTIATE and SESSION_SETUP keep
        smbprotocol's checks (the final SESSION_SETUP response is verified by
        Session.connect)."""
        if command in (Commands.SMB2_NEGOTIATE, Commands.SMB2_SESSION_SETUP):
            self.verify_signature(header, session_id)
            return
        session = self.session_table.get(session_id)
        if session is not None and session.encrypt_data:
            raise SMBException(f"the server sent an unencrypted response (command {command}) on an encrypted "
                               "session")
        interim = (header["message_id"].get_value() == 0xFFFFFFFFFFFFFFFF
                   or header["status"].get_value() == NtStatus.STATUS_PENDING)
        required = session is not None and session.signing_required and not interim
        if required and not header["flags"].has_flag(Smb2Flags.SMB2_FLAGS_SIGNED):
            raise SMBException(f"Server message signature could not be verified: an unsigned response "
                               f"(command {command}) on a session that requires signing")
        self.verify_signature(header, session_id, force=required)

    def _dispatch(self, b_msg: bytes, encrypted: bool = False) -> bool:
        """smbprotocol's handling of one received (decrypted) message, compounds included."""
        next_command = -1
        while next_command != 0:
            next_command = struct.unpack("<L", b_msg[20:24])[0]
            header_length = next_command if next_command != 0 else len(b_msg)
            b_header = b_msg[:header_length]
            b_msg = b_msg[header_length:]

            header = SMB2HeaderResponse()
            header.unpack(b_header)
            message_id = header["message_id"].get_value()
            request = self.outstanding_requests[message_id]
            command = header["command"].get_value()
            # SESSION_SETUP responses carry the session id; every other takes the request's.
            session_id = header["session_id"].get_value() if command == Commands.SMB2_SESSION_SETUP \
                else request.session_id
            if not encrypted:
                self._check_clear(header, session_id, command)

            credit_response = header["credit_response"].get_value()
            if credit_response == 0 and not self.supports_multi_credit:
                credit_response += 1
            with self.sequence_lock:
                self.sequence_window["high"] += credit_response

            status = header["status"].get_value()
            if command == Commands.SMB2_NEGOTIATE:
                self.preauth_integrity_hash_value.append(b_header)
            elif command == Commands.SMB2_SESSION_SETUP and status == NtStatus.STATUS_MORE_PROCESSING_REQUIRED:
                self.preauth_integrity_session_hash_value[message_id].append(b_header)

            with request.response_event_lock:
                if header["flags"].has_flag(Smb2Flags.SMB2_FLAGS_ASYNC_COMMAND):
                    request.async_id = b_header[32:40]
                request.response = header
                request.response_event.set()
                if request.message["reserved"].get_value() == 1:  # our keep-alive echo
                    self.outstanding_requests.pop(message_id, None)
        return True


def read_body(fh: Open, offset: int, length: int) -> bytes:
    """The SMB2 READ request body for `length` bytes at `offset` of the open file `fh`
    (padding 0x50: the server puts the data right after the response's fixed part)."""
    return struct.pack("<HBBLQ16sLLLHHB", 49, 0x50, 0, length, offset, fh.file_id, 0, 0, 0, 0, 0, 0)


def write_body(fh: Open, offset: int, length: int) -> bytes:
    """The SMB2 WRITE request body without its data (which follows at offset 0x70)."""
    return struct.pack("<HHLQ16sLLHHL", 49, 0x70, length, offset, fh.file_id, 0, 0, 0, 0, 0)


def install() -> None:
    smb_connection.Tcp = FastTcp
