"""Fewer copies of every 8 MiB message on the wire: smbprotocol's transport, made for bulk.

smbprotocol's Direct TCP transport receives with `sock.recv(remaining)`, which allocates
a buffer of the whole remaining message (up to 8 MiB) for every piece the kernel hands
over (often 64 KiB on loopback), and sends with `data = data[sent:]`, copying the rest of
the message after every partial send. On an 8 MiB READ or WRITE that is most of the CPU
the client spends (profiled: the receive thread's time was dominated by `_recv` and
signature copies, not by AES-GMAC). `FastTcp` keeps the same protocol, locking and close
semantics and differs only in memory handling:

- receive into one preallocated buffer per message with `recv_into`;
- send the 4-byte length and the message with `sendmsg`, advancing a memoryview.

`Connection` below computes signatures without copying the message (smbprotocol copies it
twice).

`install()` points smbprotocol's `Connection` at FastTcp; it is called before any
connection is made (workers.smb.connections). Only the SMB client in this process is
affected.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import select
import struct
import timeit

import smbprotocol.connection as smb_connection
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smbprotocol.connection import Commands, Dialects, SigningAlgorithms
from smbprotocol.transport import Tcp

_ZEROS16 = b"\x00" * 16


class FastTcp(Tcp):
    def send(self, header) -> None:
        data = header if isinstance(header, (bytes, bytearray, memoryview)) else header.pack()
        size = len(data)
        if size > self.MAX_SIZE:
            raise ValueError(f"Data to be sent over Direct TCP size {size} exceeds the max length allowed "
                             f"{self.MAX_SIZE}")
        parts = [memoryview(struct.pack(">L", size)), memoryview(data)]
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

    def _recv(self, length, timeout):
        buffer = bytearray(length)
        view = memoryview(buffer)
        offset = 0
        while offset < length:
            start_time = timeit.default_timer()
            with self._close_lock:
                if not self.connected:
                    return None, timeout
                read = select.select([self._sock], [], [], max(timeout, 1))[0]
                elapsed = timeit.default_timer() - start_time
                timeout = timeout - elapsed
                if not read:
                    raise TimeoutError(f"recv idle for {elapsed:.1f}s ({offset}/{length} bytes)")
                try:
                    got = self._sock.recv_into(view[offset:], length - offset)
                except OSError as e:
                    if e.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    got = 0
            if got == 0:
                self.close()
                return None, timeout
            offset += got
        view.release()
        return bytes(buffer), timeout


class Connection(smb_connection.Connection):
    """smbprotocol's Connection, signing with one copy of the message instead of two."""

    def _generate_signature(self, b_header, signing_key, message_id, response, command):
        # The MAC runs over the message with its signature field zeroed: fed in three
        # pieces (before, zeros, after) instead of a zeroed copy of the whole message.
        view = memoryview(b_header)
        pieces = (view[:48], _ZEROS16, view[64:])
        if self.dialect >= Dialects.SMB_3_1_1 and self.signing_algorithm_id is not None:
            sign_id = self.signing_algorithm_id
        elif self.dialect >= Dialects.SMB_3_0_0:
            sign_id = SigningAlgorithms.AES_CMAC
        else:
            sign_id = SigningAlgorithms.HMAC_SHA256

        if sign_id == SigningAlgorithms.AES_GMAC:
            info = (1 if response else 0) | (2 if command == Commands.SMB2_CANCEL else 0)
            nonce = message_id.to_bytes(8, "little") + info.to_bytes(4, "little")
            gmac = Cipher(algorithms.AES(signing_key), modes.GCM(nonce)).encryptor()
            for piece in pieces:
                gmac.authenticate_additional_data(piece)
            gmac.finalize()
            return gmac.tag
        mac = cmac.CMAC(algorithms.AES(signing_key)) if sign_id == SigningAlgorithms.AES_CMAC else \
            hmac.new(signing_key, digestmod=hashlib.sha256)
        for piece in pieces:
            mac.update(piece)
        return mac.finalize() if sign_id == SigningAlgorithms.AES_CMAC else mac.digest()[:16]


def install() -> None:
    smb_connection.Tcp = FastTcp
