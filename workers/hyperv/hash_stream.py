"""One long-lived hashing process on a host: ranges of a file's chunks hashed on request.

The switchover's downtime copy checks what landed on the destination range by range while
it copies (workers.smb.verifier). A `file_hash` call per range would start a powershell.exe
per range, inside the downtime. `HashStream` starts one process before Save-VM instead, with
the driver's STREAM_BOOTSTRAP: it sends the shipped `hash_stream` script (its arguments: the
host's roots, to which every path is confined), then the line SCRIPT_END, and keeps stdin
open. Each request is then one JSON line on stdin, {"path", "scheme", "first", "count"}, and
its answer one JSON line on stdout; requests from several threads take turns (the host
hashes one range at a time either way). `close()` ends the process (Signal terminate) and
deletes its shell; so does leaving the `with` block.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from winrm.protocol import Protocol

from workers.hyperv import scripts
from workers.hyperv.driver import SCRIPT_END, SEND_CHUNK_BYTES, STREAM_BOOTSTRAP, HyperVDriver
from workers.hyperv.errors import HyperVError, classify, error_from_stderr
from workers.model import chunks

log = logging.getLogger(__name__)

OP = "hash_stream"


class HashStream:
    def __init__(self, driver: HyperVDriver, *, start_timeout_s: float = 120):
        self.driver = driver
        self.start_timeout_s = start_timeout_s
        self._proto: Protocol | None = None
        self._shell_id: str | None = None
        self._command_id: str | None = None
        self._out = b""  # stdout received but not yet answered
        self._lock = threading.Lock()
        self._closed = False
        self.answered = 0

    def __enter__(self) -> HashStream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the process and send it its script: returns once it is ready for requests."""
        d = self.driver
        text = scripts.render(OP, {"roots": d.host.roots}) + SCRIPT_END + "\n"
        self._proto, self._shell_id, self._command_id, self._out = d.start_process(
            OP, STREAM_BOOTSTRAP, timeout_s=self.start_timeout_s)
        try:
            self._send(text.encode("utf-8"))
        except BaseException:
            self.close()
            raise

    def _send(self, data: bytes) -> None:
        assert self._proto is not None and self._shell_id is not None and self._command_id is not None
        with self.driver._faults_mapped(OP):
            for i in range(0, len(data), SEND_CHUNK_BYTES):
                self._proto.send_command_input(self._shell_id, self._command_id, data[i:i + SEND_CHUNK_BYTES],
                                               end=False)

    def _answer_line(self, deadline: float) -> bytes:
        """The next line of stdout, waiting for it; the process ending first is its error."""
        assert self._proto is not None and self._shell_id is not None and self._command_id is not None
        err = b""
        while b"\n" not in self._out:
            rc, o, e, done = self.driver._receive_once(self._proto, self._shell_id, self._command_id, OP, deadline)
            self._out += o
            err += e
            if done and b"\n" not in self._out:
                self._closed = True
                raise error_from_stderr(err, OP, host=self.driver.host.name, exit_code=rc or 1)
        line, self._out = self._out.split(b"\n", 1)
        return line.strip()

    def chunk_digests(self, path: str, first: int, count: int) -> list[str]:
        """SHA-256s (lowercase hex) of the 8 MiB chunks first .. first+count-1 of a file on the
        host, as `HyperVDriver.chunk_digests`, answered by this process."""
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (first, count)) or first < 0 \
                or not 1 <= count <= chunks.MAX_RANGE:
            raise ValueError(f"chunk_digests needs first >= 0 and count 1..{chunks.MAX_RANGE}, "
                             f"not {first!r} and {count!r}")
        path = self.driver.host.confine(path)
        line = json.dumps({"path": path, "scheme": chunks.SCHEME, "first": first, "count": count},
                          ensure_ascii=True, allow_nan=False)
        host = self.driver.host.name
        t0 = time.monotonic()
        with self._lock:
            if self._closed or self._proto is None:
                raise HyperVError(f"{OP} on {host}: the hashing process has ended", op=OP, host=host)
            with self.driver._faults_mapped(OP):
                self._send((line + "\n").encode("ascii"))
                raw = self._answer_line(t0 + self.driver.timeout_for(OP, {}))
            self.answered += 1
        try:
            doc = json.loads(raw.decode("utf-8", "replace").lstrip("\ufeff"))
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("path") != path or doc.get("first") != first:
            raise HyperVError(f"{OP} on {host} answered {raw[:300]!r} to a request for chunks {first}.. of {path}",
                              op=OP, host=host)
        if doc.get("error") is not None:
            category, fqid = doc.get("category") or None, doc.get("error_id") or None
            raise classify(category, fqid)(str(doc["error"]), op=OP, host=host, category=category, fqid=fqid)
        got = doc.get("chunks")
        if not isinstance(got, list) or not all(isinstance(c, str) for c in got) or len(got) > count:
            raise HyperVError(f"{OP} on {host} answered {raw[:300]!r} to a request for chunks {first}.. of {path}",
                              op=OP, host=host)
        log.debug("hyperv op=%s host=%s chunks %d+%d took=%.2fs", OP, host, first, len(got), time.monotonic() - t0)
        return got

    def close(self) -> None:
        """End the process and delete its shell (once; later calls do nothing)."""
        with self._lock:
            proto, shell_id, command_id = self._proto, self._shell_id, self._command_id
            self._proto = self._shell_id = self._command_id = None
            self._closed = True
        if proto is not None:
            self.driver.close_process(proto, shell_id, command_id)
