"""The bulk path of workers.smb.wire against a real smbd: READ payloads received straight into
chunk buffers must still be checked (signature, or AES-GCM tag) before anyone sees them."""
from __future__ import annotations

import dataclasses
import os
import socket
import threading

import pytest

from workers.smb.file_copy import SmbError, copy_file, exists, partial_name

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class Relay:
    """A TCP relay between the client and a server on `port`: what the client sends goes by
    `_to_server`, what the server answers by `_to_client` (both pass it on as it is)."""

    def __init__(self, port: int):
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listen_port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [client, server]
            threading.Thread(target=self._to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client), daemon=True).start()

    def _to_server(self, src: socket.socket, dst: socket.socket) -> None:
        self._pump(src, dst)

    def _to_client(self, src: socket.socket, dst: socket.socket) -> None:
        self._pump(src, dst)

    def _pump(self, src: socket.socket, dst: socket.socket, change=None) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if change is not None:
                    data = change(data, seen)
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


class BitFlipRelay(Relay):
    """A TCP relay to a server that flips one bit of what the server sends, `after` bytes into
    every connection that carries that much (the payload of the first big READ response)."""

    def __init__(self, port: int, after: int):
        self.after, self.flipped = after, 0
        super().__init__(port)

    def _to_client(self, src: socket.socket, dst: socket.socket) -> None:
        self._pump(src, dst, self._flip)

    def _flip(self, data: bytes, seen: int) -> bytes:
        if seen <= self.after < seen + len(data):
            data = bytearray(data)
            data[self.after - seen] ^= 0x10
            self.flipped += 1
        return data


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_a_read_payload_altered_on_the_wire_fails_the_copy_and_lands_nothing(smb_servers, smb_dir, encrypt):
    from workers.smb import connections
    src, dst = smb_servers
    rel = rf"{smb_dir}\tampered.vhdx"
    path = src.local(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(16 * MiB))
    relay = BitFlipRelay(src.endpoint.port, after=5 * MiB)
    try:
        via_relay = dataclasses.replace(src.endpoint, port=relay.listen_port, encrypt=encrypt)
        with pytest.raises(SmbError) as err:
            copy_file(via_relay, rel, dataclasses.replace(dst.endpoint, encrypt=encrypt), rel, streams=1)
    finally:
        connections.reset_connections()
        relay.close()

    assert relay.flipped >= 1
    text = str(err.value)
    assert ("AES-GCM tag" in text) if encrypt else ("signature could not be verified" in text), text
    assert not dst.local(rel).exists()
    assert not exists(dst.endpoint, rel)
    # the altered chunk was never written: the partial file (kept for a resume) is still empty
    partial = dst.local(partial_name(rel))
    assert not partial.exists() or partial.stat().st_size == 0


class SignatureRelay(Relay):
    """A TCP relay to a server that reads the server's messages one by one (Direct TCP
    framing) and, in each plain SMB2 response of `command` after the session is set up,
    clears SMB2_FLAGS_SIGNED and zeroes the signature ("strip") or flips one bit of the
    signature ("corrupt"). Encrypted messages pass untouched (it cannot read them)."""

    def __init__(self, port: int, command: int, how: str):
        self.command, self.how, self.changed = command, how, 0
        super().__init__(port)

    @staticmethod
    def _exactly(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = sock.recv(n - len(data))
            if not more:
                raise OSError("closed")
            data += more
        return data

    def _to_client(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                size = self._exactly(src, 4)
                msg = bytearray(self._exactly(src, int.from_bytes(size, "big")))
                if msg[:4] == b"\xfeSMB" and int.from_bytes(msg[12:14], "little") == self.command \
                        and int.from_bytes(msg[40:48], "little"):  # a session's response
                    if self.how == "strip":
                        msg[16] &= ~0x08  # SMB2_FLAGS_SIGNED
                        msg[48:64] = bytes(16)
                    else:
                        msg[50] ^= 0x01
                    self.changed += 1
                dst.sendall(size + msg)
        except OSError:
            pass
        finally:
            self._close(src, dst)


SMB2_CREATE = 5


@pytest.mark.parametrize("how", ["strip", "corrupt"])
def test_a_non_read_response_whose_signature_is_stripped_or_corrupted_is_refused(smb_servers, smb_dir, how):
    """An existence check (CREATE) answered "not found" without a valid signature must not
    count as an answer: with signing required, every non-interim response is checked."""
    from workers.smb import connections

    src, _ = smb_servers
    relay = SignatureRelay(src.endpoint.port, SMB2_CREATE, how)
    try:
        via_relay = dataclasses.replace(src.endpoint, port=relay.listen_port)
        with pytest.raises(SmbError, match="signature") as e:
            exists(via_relay, f"{smb_dir}\\no-such.vhdx")
        assert relay.changed >= 1
        assert via_relay.unc_root in str(e.value)  # names the server
    finally:
        connections.evict(dataclasses.replace(src.endpoint, port=relay.listen_port))
        relay.close()
    assert exists(src.endpoint, f"{smb_dir}\\no-such.vhdx") is False  # without the relay: a real answer
