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


class BitFlipRelay:
    """A TCP relay to a server that flips one bit of what the server sends, `after` bytes into
    every connection that carries that much (the payload of the first big READ response)."""

    def __init__(self, port: int, after: int):
        self.port, self.after = port, after
        self.flipped = 0
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
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flip: bool) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if flip and seen <= self.after < seen + len(data):
                    data = bytearray(data)
                    data[self.after - seen] ^= 0x10
                    self.flipped += 1
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


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
