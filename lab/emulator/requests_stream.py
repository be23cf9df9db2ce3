"""A process that reads requests on stdin after its script (the driver's STREAM_BOOTSTRAP).

powershell.exe started with that bootstrap reads its script from stdin line by line up to
the bootstrap's end line, runs it, and the script reads the following lines as its
requests (`$qmRequests`), answering each with one line on stdout while stdin stays open.
The only shipped script that does so is `hash_stream`. Here: the lines before the end line
must be exactly that shipped script with its arguments line (`workers.hyperv.scripts.parse`);
anything else ends the process with exit 1 and a CLIXML error, as does stdin ending before
the end line (harsher than a real host, which would run what it read). Each request then
costs what the profile says a hash of that many bytes costs (`file_hash`'s fixed part and
the hashing rate), after the process has started (once); a request that fails is answered
with its error and the process carries on; once stdin ends, the script prints how many it
answered and exits 0. A process that is signalled (terminate) or whose shell is deleted
stops at once.
"""
from __future__ import annotations

import json
import logging
import time

from lab.emulator import costs, messages
from lab.emulator.errors import OpError
from workers.hyperv import scripts
from workers.hyperv.errors import ScriptMismatch
from workers.model.chunks import CHUNK_BYTES

log = logging.getLogger("lab.emulator.requests_stream")

STREAM_OP = "hash_stream"
WAIT_S = 0.5  # how often a waiting process looks at whether it was terminated


def _lines(srv, cmd):
    """stdin's lines as they arrive (the last one may lack its newline), until stdin ends or
    the command is terminated."""
    pos = 0
    while True:
        with cmd.output:
            cmd.output.wait_for(lambda at=pos: cmd.stdin.find(b"\n", at) >= 0 or cmd.stdin_closed or cmd.terminated,
                                WAIT_S)
            if cmd.terminated or cmd.id not in cmd.shell.commands or cmd.shell.id not in srv.shells:
                return
            nl = cmd.stdin.find(b"\n", pos)
            if nl < 0 and not cmd.stdin_closed:
                continue
            end = nl if nl >= 0 else len(cmd.stdin)
            raw, pos = bytes(cmd.stdin[pos:end]), end + 1
            last = nl < 0
        if raw or not last:
            yield raw.decode(cmd.shell.encoding, errors="replace").rstrip("\r")
        if last:
            return


def _write(srv, cmd, doc: dict) -> None:
    enc = "utf-8" if cmd.utf8 else messages.oem_codepage(srv.locale)
    line = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\r\n"
    with cmd.output:
        cmd.stdout += line.encode(enc, errors="replace")
        cmd.output.notify_all()


def _answer(srv, roots: object, line: str) -> dict:
    """What hash_stream.ps1 prints for one request line."""
    try:
        req = json.loads(line)
    except ValueError:
        req = None
    if not isinstance(req, dict):  # ConvertFrom-Json's own refusal, or a request that is not an object
        return {"path": None, "first": None, "error": "Invalid JSON primitive: the request is not a JSON object.",
                "error_id": "System.ArgumentException,Microsoft.PowerShell.Commands.ConvertFromJsonCommand",
                "category": "NotSpecified"}
    path, first = req.get("path"), req.get("first")
    try:
        fault = srv.faults.take_delayed(STREAM_OP)
        if fault is not None and fault.action == "fail":
            raise OpError(fault.message, "NotSpecified", "QuickmigInjectedFault")
        t0 = time.monotonic()
        try:
            return srv.model.hash_request(roots, req)
        finally:  # a real host reads the bytes whether the hash then fails or not
            costs.spend(_work_s(srv, path, first, req.get("count")) - (time.monotonic() - t0))
    except OpError as e:
        return {"path": path, "first": first, "error": messages.translate(e.message, srv.locale),
                "error_id": e.fqid, "category": e.category}


def _work_s(srv, path: object, first: object, count: object) -> float:
    """One request's cost on the profile: file_hash's fixed part and the bytes of the range."""
    if srv.profile is costs.FAST or not isinstance(first, int) or not isinstance(count, int):
        return 0.0
    try:
        size = srv.model.paths.local(path).stat().st_size
    except (OSError, ValueError, OpError):
        size = 0
    hashed = max(0, min(size - first * CHUNK_BYTES, count * CHUNK_BYTES))
    return srv.profile.work_s("file_hash", hashed_bytes=hashed)


def serve(srv, cmd) -> None:
    """Run a streaming command: its script, then its requests, until stdin ends."""
    end_line = cmd.start.script_end
    script: list[str] = []
    roots: object = None
    answered = 0
    started = False
    try:
        for line in _lines(srv, cmd):
            if not started:
                if line != end_line:
                    script.append(line)
                    continue
                try:
                    op, args = scripts.parse("\n".join(script) + "\n")
                except ScriptMismatch as e:
                    srv.refuse_script(cmd, str(e))
                    return
                if op != STREAM_OP:
                    srv.refuse_script(cmd, f"{op} does not read requests after its script")
                    return
                cmd.op, roots, started = op, args.get("roots"), True
                srv.run_in_process(cmd, op)
                continue
            if line.strip():
                _write(srv, cmd, _answer(srv, roots, line))
                answered += 1
        if cmd.terminated:
            return
        if not started:
            srv.refuse_script(cmd, f"stdin ended before the line {end_line!r} that ends the script")
            return
        srv.finish(cmd, 0, stdout=json.dumps({"answered": answered}, separators=(",", ":")) + "\r\n")
    except Exception as e:  # a bug in the emulator: still answer like a failed script
        log.exception("request stream failed unexpectedly")
        srv.fail_unexpectedly(cmd, e)
