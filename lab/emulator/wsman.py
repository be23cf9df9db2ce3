"""The emulated host's HTTP server: WS-Management (the WinRS shell subset) and the lab control API.

WS-Management: exactly what `winrm.protocol.Protocol` sends, on POST /wsman with
Content-Type application/soap+xml:

    Create   (ws-transfer)  new shell; reply carries w:Selector Name="ShellId" (and rsp:ShellId)
    Command  (rsp)          new command in a shell; reply rsp:CommandId. The operation is on
                            stdin; of the command line only its -EncodedCommand counts: whether
                            it sets [Console]::OutputEncoding to UTF-8 (scriptfacts.writes_utf8)
    Send     (rsp)          base64 stdin chunks; End="true" closes stdin and starts the operation
                            (a command whose bootstrap reads requests after its script runs its
                            lines as they arrive: requests_stream.py)
    Receive  (rsp)          base64 stdout/stderr streams and CommandState Done + ExitCode; while
                            the command still runs after the request's OperationTimeout, HTTP 500
                            with the WS-Man fault w:TimedOut / WSManFault Code 2150858793, which
                            pywinrm turns into WinRMOperationTimeoutError and polls again
    Signal   (rsp)          terminate: the command is forgotten (an operation already running
                            finishes, its output is dropped); an unknown command is not an error
    Delete   (ws-transfer)  the shell and its commands are forgotten

Output larger than one envelope is split over several Receive replies (CommandState
Running, then Done). stdin is decoded with the shell's WINRS_CODEPAGE (65001 = UTF-8;
anything else is treated as 437). stdout and stderr are what powershell.exe writes: in
UTF-8 when its command line set [Console]::OutputEncoding to UTF-8, else in the host's OEM
code page whatever the shell's code page (harsher reading), where characters outside it
become '?' and the others arrive as bytes a UTF-8 reader cannot read.

Language: the host speaks the language it was started with (`--locale`, messages.py):
every error message, Compare-VM incompatibility and WS-Management fault reason is
translated where it leaves the host, and PowerShell's "At line:1 char:1" line too; the
categories, error ids, message ids and fault codes stay as they are.

The stdin text must be exactly a shipped operation script with its arguments line filled
in (`workers.hyperv.scripts.parse`); otherwise exit 1 with a CLIXML error. Operation
failures are CLIXML errors on stderr with exit 1 (`lab.emulator.clixml.format_clixml_error`);
success is one JSON line on stdout, exit 0, with a CLIXML progress record on stderr.

Lab control API (JSON, same Basic credentials):

    GET    /lab/ping     {"ok": true, "host", "pid", "endpoint", "locale"}
    GET    /lab/state    {"host", "vm_root", "locale", "vms": [VMInfo + "lab": {counter, write_rate_kbps, ...}],
                          "planned": [{"id", "name", "definition"}]}  (planned VMs: vmimport.py)
    POST   /lab/vms      {"name", "memory_mb"=64, "disk_mb"=128, "write_rate_kbps"=64, "iso"=true,
                          "checkpoint_type"="Standard", "start"=true, "version"="10.0",
                          "switches"=["lab-switch"], "passthrough_disk"=false, "vm_id"=null (a GUID: the
                          VM gets that id), "parent"=null (a base disk: the VM's disk is a child of it),
                          "path"=null (the VM's folder), "automatic_start_action"="StartIfRunning",
                          "dynamic_memory"=false, "memory_maximum_mb", "memory_assigned_mb" (with
                          dynamic_memory), "heartbeat"=true (the guest runs the Heartbeat service),
                          "heartbeat_enabled"=true, "compat_migration"=false, "vtpm"=false,
                          "clustered"=false, "replica"=false, "devices"=[] (kinds: assignable,
                          gpu_partition, sriov, or {"kind": "fibre_channel", "san"}), "disks"=1,
                          "disk_folders"=null (host folders its disks go to, in turn), "generation"=2
                          (1: disks on IDE first), "checkpoints"=0 (user checkpoints in a chain,
                          Standard and Production in turn), "golden"=null (a name: the boot disk is a
                          child of <vm_root>\\Golden\\<name>.vhdx, made on first use), "state"="Running"
                          (or Off, Saved: after it ran a while)} -> {"vm": VMInfo}
    GET    /lab/host     what the host offers: {"supported_versions", "switches", "cpu_vendor", "free_bytes",
                          "fips", "cpu_model", "cpu_features", "memory_bytes", "numa_nodes", "numa_spanning",
                          "guardians", "sans"} (hostprops.py)
    POST   /lab/host     change some of those (free_bytes null = the real free space) -> the same
    DELETE /lab/host     back to the defaults
    GET    /lab/faults   {"faults": [...]}
    POST   /lab/faults   one rule or a list (see faults.py) -> {"faults": [...]}
    DELETE /lab/faults   {"cleared": n}
    GET    /lab/outage   {"remaining_s": float}
    POST   /lab/outage   {"seconds": N} -> the same: for N seconds every POST /wsman is answered
                         by closing the connection unread (the WinRM endpoint is unreachable to
                         a client; commands already running carry on), while /lab/* keeps answering
    DELETE /lab/outage   end it now -> {"remaining_s": 0}
    POST   /lab/shutdown the host shuts down: WinRM stops answering, every running VM is saved,
                         the process exits -> {"host", "saved": [vm ids]}; its next start is a
                         boot (each VM's automatic start action). `quickmig lab restart-host`
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from lab.emulator import costs, messages, requests_stream, scriptfacts
from lab.emulator.clixml import format_clixml_error, format_clixml_progress
from lab.emulator.errors import OpError
from lab.emulator.faults import FaultSpecError, FaultTable, parse_fault
from lab.emulator.model import HyperVHost
from workers.hyperv import scripts
from workers.hyperv.errors import ScriptMismatch

log = logging.getLogger("lab.emulator.wsman")

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ACT_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACT_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACT_COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
ACT_SEND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
ACT_RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
ACT_SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
ACT_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
STATE_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
STATE_RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
SIGNAL_TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate"

FAULT_TIMEOUT = 2150858793      # ERROR_WSMAN_OPERATION_TIMEDOUT: "poll again"
FAULT_SHELL_NOT_FOUND = 2150858843
MAX_BODY = 8 * 1024 * 1024
MAX_STDIN = 4 * 1024 * 1024
# winrm/config/winrs MaxShellsPerUser: 30 by default (MS-WSMV 2.2.4.42 WinrsType). Idle shells
# are dropped after SHELL_IDLE_S, longer than WinRS's 180 s default IdleTimeout: a shell a
# client leaks holds its place longer here than on a real host (the harsher reading).
MAX_SHELLS_PER_USER = 30
SHELL_IDLE_S = 900.0
MAX_OPERATION_TIMEOUT_S = 120.0
OUTPUT_CHUNK = 96 * 1024          # raw bytes per Receive reply (base64 stays under 153600)


def clixml_error(message: str, category: str, fqid: str, target: str = "",
                 locale: str = messages.DEFAULT_LOCALE) -> str:
    """A terminating error as the host writes it: its message in the host's language."""
    return format_clixml_error(messages.translate(message, locale), category, fqid, target=target,
                               position=messages.position_template(locale))


# ---- shells and commands ----------------------------------------------------------------

class Command:
    def __init__(self, shell: Shell, command_line: str):
        self.id = str(uuid.uuid4()).upper()
        self.shell = shell
        self.command_line = command_line
        self.stdin = bytearray()
        self.stdin_closed = False
        self.done = threading.Event()
        self.stdout = b""
        self.stderr = b""
        self.out_pos = 0
        self.err_pos = 0
        self.exit_code = 0
        self.drop = False
        self.terminated = False
        self.op = ""
        self.utf8 = scriptfacts.writes_utf8(command_line)  # else the host's OEM code page
        self.start = scriptfacts.start_facts(command_line)
        self.ready_at = time.monotonic()  # when its process has started (and loaded what it loads first)
        self.streaming = False  # it reads requests after its script, and has been sent some stdin
        self.output = threading.Condition()  # notified when output is added or the command is done


class Shell:
    def __init__(self, codepage: int, owner: str):
        self.id = str(uuid.uuid4()).upper()
        self.codepage = codepage
        self.owner = owner
        self.commands: dict[str, Command] = {}
        self.last_used = time.monotonic()

    @property
    def encoding(self) -> str:
        return "utf-8" if self.codepage == 65001 else "cp437"


class WSManFault(Exception):
    def __init__(self, subcode: str, reason: str, wsman_code: int | None = None, code: str = "s:Sender",
                 status: int = 500):
        super().__init__(reason)
        self.subcode, self.reason, self.wsman_code, self.code, self.status = subcode, reason, wsman_code, code, status


class DropConnection(Exception):
    pass


def _duration_s(text: str | None, default: float) -> float:
    if not text:
        return default
    m = re.fullmatch(r"P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text.strip())
    if not m:
        return default
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


# ---- the server -------------------------------------------------------------------------

class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: HyperVHost | None, port: int, username: str, password: str,
                 bind: str = "127.0.0.1", faults: FaultTable | None = None, host_name: str | None = None,
                 profile: costs.HostProfile = costs.FAST):
        self.model = host  # may be set after binding (see __main__), before serve_forever
        self.host_name = host_name or (host.name if host else "")
        self.username = username
        self.password = password
        self.faults = faults or FaultTable()
        self.outage_until = 0.0  # monotonic time until which WS-Man requests are dropped
        self.shells: dict[str, Shell] = {}
        self.shells_lock = threading.Lock()
        self.max_shells_per_user = MAX_SHELLS_PER_USER
        self.profile = profile
        self.cost_log: costs.CostLog | None = None  # once the model is there (its state folder)
        self.endpoint = f"http://{bind}:{port}/wsman"
        super().__init__((bind, port), Handler)
        self.endpoint = f"http://{bind}:{self.server_address[1]}/wsman"

    @property
    def locale(self) -> str:
        return self.model.locale if self.model is not None else messages.DEFAULT_LOCALE

    def outage_remaining_s(self) -> float:
        return max(0.0, self.outage_until - time.monotonic())

    # -- auth ------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, pw = raw.partition(":")
        ok_user = hmac.compare_digest(user.encode(), self.username.encode())
        ok_pw = hmac.compare_digest(pw.encode(), self.password.encode())
        return bool(sep) and ok_user and ok_pw

    # -- shells ----------------------------------------------------------------------
    def _reap(self) -> None:
        now = time.monotonic()
        for sid, sh in list(self.shells.items()):
            if now - sh.last_used > SHELL_IDLE_S:
                del self.shells[sid]

    def new_shell(self, codepage: int, owner: str) -> Shell:
        costs.spend(self.profile.shell_create_s)
        with self.shells_lock:
            self._reap()
            if sum(1 for sh in self.shells.values() if sh.owner == owner) >= self.max_shells_per_user:
                # MS-WSMV 3.1.4.5.2.1 wsman:QuotaLimit, with the message it gives for MaxShellsPerUser
                raise WSManFault("w:QuotaLimit", "The Windows Remote Shell cannot process the request. The server "
                                 "is already executing the maximum number of concurrent shells a user can "
                                 "remotely open on the same system. Retry later.",
                                 2150859174, code="s:Receiver")
            sh = Shell(codepage, owner)
            self.shells[sh.id] = sh
            return sh

    def shell(self, shell_id: str | None) -> Shell:
        with self.shells_lock:
            sh = self.shells.get(shell_id or "")
            if sh is None:
                raise WSManFault("w:InvalidSelectors", f"The request for the Windows Remote Shell with ShellId "
                                 f"{shell_id} failed because the shell was not found on the server.",
                                 FAULT_SHELL_NOT_FOUND)
            sh.last_used = time.monotonic()
            return sh

    def command(self, shell: Shell, command_id: str | None) -> Command:
        cmd = shell.commands.get(command_id or "")
        if cmd is None:
            raise WSManFault("w:InvalidParameter", "The Windows Remote Shell received a request to perform an "
                             "operation on a command identifier that does not exist.", 2150858869)
        return cmd

    # -- running an operation ----------------------------------------------------------
    def start_command(self, cmd: Command) -> None:
        threading.Thread(target=self._execute, args=(cmd,), name=f"op-{cmd.id[:8]}", daemon=True).start()

    def feed(self, cmd: Command, chunk: bytes, ended: bool) -> None:
        """stdin for a process that reads requests after its script (requests_stream.py)."""
        with cmd.output:
            cmd.stdin += chunk
            cmd.stdin_closed = cmd.stdin_closed or ended
            first = not cmd.streaming
            cmd.streaming = True
            cmd.output.notify_all()
        if first:
            threading.Thread(target=requests_stream.serve, args=(self, cmd), name=f"stream-{cmd.id[:8]}",
                             daemon=True).start()

    def refuse_script(self, cmd: Command, why: str) -> None:
        log.warning("refused a script that is not a shipped operation: %s", why)
        self._finish(cmd, 1, stderr=clixml_error(f"The script is not a shipped quickmig operation script: {why}",
                                                 "ParserError", "QuickmigScriptMismatch", locale=self.locale))

    def run_in_process(self, cmd: Command, op: str) -> None:
        self._run_in_process(cmd, op)

    def finish(self, cmd: Command, code: int, stdout: str = "", stderr: str = "") -> None:
        self._finish(cmd, code, stdout, stderr)

    def fail_unexpectedly(self, cmd: Command, e: Exception) -> None:
        self._finish(cmd, 1, stderr=clixml_error(f"Unexpected emulator error: {type(e).__name__}: {e}",
                                                 "NotSpecified", "QuickmigEmulatorError"))

    def _finish(self, cmd: Command, code: int, stdout: str = "", stderr: str = "") -> None:
        enc = "utf-8" if cmd.utf8 else messages.oem_codepage(self.locale)
        with cmd.output:
            cmd.stdout += stdout.encode(enc, errors="replace")
            cmd.stderr += stderr.encode(enc, errors="replace")
            cmd.exit_code = code
            cmd.done.set()
            cmd.output.notify_all()

    def _note(self, event: str, op: str | None, seconds: float) -> None:
        if self.cost_log is None and self.model is not None:
            self.cost_log = costs.CostLog(self.model.state_dir)
        if self.cost_log is not None:
            self.cost_log.note(event, op, seconds)

    def start_process(self, cmd: Command) -> None:
        """A Command starts powershell.exe at once: it is ready after the profile's process start
        (and the Hyper-V module, if its command line loads it before reading the script), and
        then writes the line its command line writes before reading stdin, if any."""
        start = self.profile.process_start_s
        load = self.profile.module_load_s if cmd.start.imports_hyperv else 0.0
        self._note("process_start", None, start)
        if cmd.start.imports_hyperv:
            self._note("module_load", None, load)
        cmd.ready_at = time.monotonic() + start + load
        if cmd.start.ready_line is not None:
            line = (cmd.start.ready_line + "\r\n").encode("utf-8" if cmd.utf8 else messages.oem_codepage(self.locale))

            def ready() -> None:
                with cmd.output:
                    cmd.stdout += line
                    cmd.output.notify_all()
            timer = threading.Timer(start + load, ready)
            timer.daemon = True
            timer.start()

    def _run_in_process(self, cmd: Command, op: str) -> None:
        """The script arrived: wait for its process to be ready, then load the Hyper-V module on
        the script's first Hyper-V cmdlet if the process has not loaded it yet."""
        costs.spend(cmd.ready_at - time.monotonic())
        if op not in costs.NO_HYPERV_MODULE and not cmd.start.imports_hyperv:
            self._note("module_load", op, self.profile.module_load_s)
            costs.spend(self.profile.module_load_s)

    def _execute(self, cmd: Command) -> None:
        text = bytes(cmd.stdin).decode(cmd.shell.encoding, errors="replace")
        if text.startswith("\ufeff"):
            text = text[1:]
        try:
            try:
                op, args = scripts.parse(text)
            except ScriptMismatch as e:
                log.warning("refused a script that is not a shipped operation: %s", e)
                self._finish(cmd, 1, stderr=clixml_error(
                    f"The script is not a shipped quickmig operation script: {e}", "ParserError",
                    "QuickmigScriptMismatch", locale=self.locale))
                return
            cmd.op = op
            self._run_in_process(cmd, op)
            fault = self.faults.take_delayed(op)
            if fault is not None and fault.action == "fail":
                self._finish(cmd, 1, stderr=clixml_error(fault.message, "NotSpecified", "QuickmigInjectedFault"))
                return
            if fault is not None and fault.action == "drop":
                cmd.drop = True
            t0 = time.monotonic()
            work = costs.work_s(self.profile, self.model, op, args) if isinstance(args, dict) else 0.0
            try:
                try:
                    result = self.model.run(op, args)
                finally:  # a real host spends it, whether the cmdlet then fails or not
                    costs.spend(work - (time.monotonic() - t0))
            except OpError as e:
                log.info("op %s failed: %s [%s / %s]", op, e.message, e.category, e.fqid)
                self._finish(cmd, 1, stderr=clixml_error(e.message, e.category, e.fqid, target=e.target,
                                                         locale=self.locale))
                return
            log.info("op %s ok in %.3fs", op, time.monotonic() - t0)
            for inc in result.get("incompatibilities") or []:  # Compare-VM's messages, in the host's words
                inc["message"] = messages.translate(inc["message"], self.locale)
            compat = result.get("compatibility") or {}  # CheckSystemCompatibilityInfo's reasons too
            compat["reasons"] = [messages.translate(r, self.locale) for r in compat.get("reasons") or []]
            heartbeat = ((result.get("vm") or {}).get("preflight") or {}).get("heartbeat") or {}
            if heartbeat.get("status"):  # PrimaryStatusDescription is a display text
                heartbeat["status"] = messages.translate(heartbeat["status"], self.locale)
            out = json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\r\n"
            self._finish(cmd, 0, stdout=out, stderr=format_clixml_progress())
        except Exception as e:  # a bug in the emulator: still answer like a failed script
            log.exception("op failed unexpectedly")
            self._finish(cmd, 1, stderr=clixml_error(f"Unexpected emulator error: {type(e).__name__}: {e}",
                                                     "NotSpecified", "QuickmigEmulatorError"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        try:  # one reply = headers + body in one segment; no Nagle/delayed-ACK stalls
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- plumbing ----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n" + body)  # headers and body in one write
        self.flush_headers()

    def _json(self, status: int, doc: object) -> None:
        self._send(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self._send(411, b"", "text/plain", {"Connection": "close"})
            self.close_connection = True
            return None
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self._send(413, b"", "text/plain", {"Connection": "close"})
            self.close_connection = True
            return None
        return self.rfile.read(n)

    def _auth(self) -> bool:
        if self.server.authorized(self.headers.get("Authorization")):
            return True
        body = self._body()  # read it, so the connection stays usable
        if body is None:
            return False
        self._send(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
        return False

    def do_GET(self) -> None:
        self._lab("GET")

    def do_DELETE(self) -> None:
        self._lab("DELETE")

    def do_POST(self) -> None:
        if self.path.split("?")[0] == "/wsman":
            if self.server.outage_remaining_s() > 0:
                self._hang_up()
                return
            self._wsman()
        else:
            self._lab("POST")

    # -- lab control API ---------------------------------------------------------------
    def _lab(self, method: str) -> None:
        if not self._auth():
            return
        path = self.path.split("?")[0].rstrip("/")
        body = self._body() if method in ("POST", "DELETE") else b""
        if body is None:
            return
        doc = None
        if body:
            try:
                doc = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._json(400, {"error": "the body is not JSON"})
                return
        route = self._LAB_ROUTES.get((method, path))
        try:
            if route is None:
                self._json(404, {"error": f"no such lab endpoint: {method} {path}"})
            else:
                route(self, doc)
        except FaultSpecError as e:
            self._json(400, {"error": str(e)})
        except OpError as e:
            self._json(400, {"error": e.message, "category": e.category, "fqid": e.fqid})
        except TypeError as e:
            self._json(400, {"error": str(e)})

    def _lab_ping(self, doc: object) -> None:
        srv = self.server
        self._json(200, {"ok": True, "host": srv.model.name, "pid": os.getpid(), "endpoint": srv.endpoint,
                         "locale": srv.locale})

    def _lab_state(self, doc: object) -> None:
        self._json(200, self.server.model.lab_state())

    def _lab_create_vm(self, doc: object) -> None:
        if not isinstance(doc, dict):
            self._json(400, {"error": "POST /lab/vms takes a JSON object"})
            return
        unknown = set(doc) - {"name", "memory_mb", "disk_mb", "write_rate_kbps", "iso",
                              "checkpoint_type", "start", "version", "switches", "passthrough_disk",
                              "vm_id", "parent", "path", "automatic_start_action", "dynamic_memory",
                              "memory_maximum_mb", "memory_assigned_mb", "heartbeat", "heartbeat_enabled",
                              "compat_migration", "vtpm", "clustered", "replica", "devices", "disks",
                              "disk_folders", "generation", "checkpoints", "golden", "state",
                              "legacy_adapter", "vlan_id", "static_mac"}
        if unknown:
            self._json(400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"})
            return
        self._json(200, self.server.model.create_vm(**doc))

    def _lab_get_host(self, doc: object) -> None:
        self._json(200, dict(self.server.model.props))

    def _lab_set_host(self, doc: object) -> None:
        self._json(200, self.server.model.set_props(doc))

    def _lab_reset_host(self, doc: object) -> None:
        self._json(200, self.server.model.reset_props())

    def _lab_get_faults(self, doc: object) -> None:
        self._json(200, {"faults": self.server.faults.list()})

    def _lab_add_faults(self, doc: object) -> None:
        srv = self.server
        rules = doc if isinstance(doc, list) else [doc]
        parsed = [parse_fault(r) for r in rules]
        for f in parsed:
            srv.faults.add(f)
            log.warning("fault armed: %s", f.describe())
        self._json(200, {"faults": srv.faults.list()})

    def _lab_clear_faults(self, doc: object) -> None:
        self._json(200, {"cleared": self.server.faults.clear()})

    def _lab_get_outage(self, doc: object) -> None:
        self._json(200, {"remaining_s": self.server.outage_remaining_s()})

    def _lab_start_outage(self, doc: object) -> None:
        srv = self.server
        seconds = doc.get("seconds") if isinstance(doc, dict) and set(doc) == {"seconds"} else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600:
            self._json(400, {"error": "POST /lab/outage takes {\"seconds\": a number in (0, 3600]}"})
            return
        srv.outage_until = time.monotonic() + seconds
        log.warning("outage: the WinRM endpoint drops every request for %.1fs", seconds)
        self._json(200, {"remaining_s": srv.outage_remaining_s()})

    def _lab_end_outage(self, doc: object) -> None:
        self.server.outage_until = 0.0
        self._json(200, {"remaining_s": 0.0})

    def _lab_shutdown(self, doc: object) -> None:
        srv = self.server
        srv.outage_until = float("inf")  # no operation may start a VM again while it goes down
        result = srv.model.host_shutdown()
        log.warning("host shutdown: saved %d running VM(s); the process ends", len(result["saved"]))
        self._json(200, result)
        threading.Thread(target=srv.shutdown, daemon=True).start()

    _LAB_ROUTES = {
        ("GET", "/lab/ping"): _lab_ping,
        ("GET", "/lab/state"): _lab_state,
        ("POST", "/lab/vms"): _lab_create_vm,
        ("GET", "/lab/host"): _lab_get_host,
        ("POST", "/lab/host"): _lab_set_host,
        ("DELETE", "/lab/host"): _lab_reset_host,
        ("GET", "/lab/faults"): _lab_get_faults,
        ("POST", "/lab/faults"): _lab_add_faults,
        ("DELETE", "/lab/faults"): _lab_clear_faults,
        ("GET", "/lab/outage"): _lab_get_outage,
        ("POST", "/lab/outage"): _lab_start_outage,
        ("DELETE", "/lab/outage"): _lab_end_outage,
        ("POST", "/lab/shutdown"): _lab_shutdown,
    }

    def _hang_up(self) -> None:
        """Close the connection without an answer, as a dead link or a crashed service does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- WS-Management -----------------------------------------------------------------
    def _wsman(self) -> None:
        if not self._auth():
            return
        body = self._body()
        if body is None:
            return
        msg_id = ""
        action = ""
        try:
            if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
                raise WSManFault("w:InvalidMessageInformationHeader", "Document type declarations are not accepted.")
            try:
                root = ET.fromstring(body)
            except ET.ParseError as e:
                raise WSManFault("w:InvalidMessageInformationHeader",
                                 f"The request is not well-formed XML: {e}") from None
            header = root.find("s:Header", NS)
            soap_body = root.find("s:Body", NS)
            if header is None or soap_body is None:
                raise WSManFault("w:InvalidMessageInformationHeader", "The request is not a SOAP 1.2 envelope.")
            action = (header.findtext("a:Action", "", NS) or "").strip()
            msg_id = (header.findtext("a:MessageID", "", NS) or "").strip()
            resource = (header.findtext("w:ResourceURI", "", NS) or "").strip()
            if resource != SHELL_URI:
                raise WSManFault("w:DestinationUnreachable", f"The resource URI {resource!r} is not supported.",
                                 2150858770)
            reply = self._dispatch(action, header, soap_body)
        except DropConnection:
            log.warning("fault injection: dropping the connection instead of answering")
            self._hang_up()
            return
        except WSManFault as f:
            self._send(f.status, self._fault(f, msg_id).encode("utf-8"), "application/soap+xml;charset=UTF-8")
            return
        self._send(200, self._envelope(action + "Response", msg_id, reply).encode("utf-8"),
                   "application/soap+xml;charset=UTF-8")

    def _dispatch(self, action: str, header: ET.Element, soap_body: ET.Element) -> str:
        """Run one WS-Management request; the reply's body."""
        timeout = min(_duration_s(header.findtext("w:OperationTimeout", None, NS), 60.0), MAX_OPERATION_TIMEOUT_S)
        shell_id = None
        for sel in header.findall("w:SelectorSet/w:Selector", NS):
            if sel.get("Name") == "ShellId":
                shell_id = (sel.text or "").strip()
        options = {o.get("Name"): (o.text or "").strip() for o in header.findall("w:OptionSet/w:Option", NS)}
        if action == ACT_CREATE:
            return self._create(options)
        if action == ACT_COMMAND:
            return self._command(shell_id, soap_body)
        if action == ACT_SEND:
            return self._send_input(shell_id, soap_body)
        if action == ACT_RECEIVE:
            return self._receive(shell_id, soap_body, timeout)
        if action == ACT_SIGNAL:
            return self._signal(shell_id, soap_body)
        if action == ACT_DELETE:
            return self._delete(shell_id)
        raise WSManFault("a:ActionNotSupported", f"The action {action!r} is not supported by the service.",
                         2150858818)

    def _envelope(self, action: str, relates_to: str, body: str) -> str:
        return ('<s:Envelope xml:lang="{lang}" xmlns:s="{s}" xmlns:a="{a}" xmlns:x="{x}" xmlns:w="{w}" '
                'xmlns:rsp="{rsp}"><s:Header><a:Action>{act}</a:Action>'
                '<a:MessageID>uuid:{mid}</a:MessageID>'
                '<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>'
                '<a:RelatesTo>{rel}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>').format(
            lang=self.server.locale, act=escape(action), mid=str(uuid.uuid4()).upper(), rel=escape(relates_to),
            body=body, **NS)

    def _fault(self, f: WSManFault, relates_to: str) -> str:
        # the reason in the host's language (harsher reading: the client's w:Locale is not honoured)
        lang = self.server.locale
        reason = escape(messages.translate(f.reason, lang))
        detail = ""
        if f.wsman_code is not None:
            detail = (f'<s:Detail><f:WSManFault xmlns:f="{NS["f"]}" Code="{f.wsman_code}" '
                      f'Machine="{escape(self.server.host_name)}"><f:Message>{reason}</f:Message>'
                      f'</f:WSManFault></s:Detail>')
        body = (f'<s:Fault><s:Code><s:Value>{f.code}</s:Value><s:Subcode><s:Value>{f.subcode}</s:Value>'
                f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="{lang}">{reason}</s:Text></s:Reason>'
                f'{detail}</s:Fault>')
        return self._envelope(ACT_FAULT, relates_to, body)

    def _create(self, options: dict) -> str:
        try:
            codepage = int(options.get("WINRS_CODEPAGE") or 437)
        except ValueError:
            raise WSManFault("w:InvalidOptions", "WINRS_CODEPAGE must be a number.") from None
        sh = self.server.new_shell(codepage, self.server.username)
        log.debug("shell %s created (codepage %d)", sh.id, codepage)
        return (f'<x:ResourceCreated><a:Address>{escape(self.server.endpoint)}</a:Address><a:ReferenceParameters>'
                f'<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">{sh.id}'
                f'</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>'
                f'<rsp:Shell><rsp:ShellId>{sh.id}</rsp:ShellId><rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri>'
                f'<rsp:Owner>{escape(sh.owner)}</rsp:Owner><rsp:InputStreams>stdin</rsp:InputStreams>'
                f'<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>')

    def _command(self, shell_id: str | None, body: ET.Element) -> str:
        sh = self.server.shell(shell_id)
        line = body.find("rsp:CommandLine", NS)
        if line is None:
            raise WSManFault("w:InvalidParameter", "The Command request has no rsp:CommandLine.")
        text = (line.findtext("rsp:Command", "", NS) or "") + " " + (line.findtext("rsp:Arguments", "", NS) or "")
        if len(sh.commands) >= 16:
            raise WSManFault("w:QuotaLimit", "Too many commands in this shell.", 2150859174, code="s:Receiver")
        cmd = Command(sh, text.strip())
        sh.commands[cmd.id] = cmd
        self.server.start_process(cmd)
        log.debug("command %s in shell %s: %s", cmd.id, sh.id, cmd.command_line[:200])
        return f"<rsp:CommandResponse><rsp:CommandId>{cmd.id}</rsp:CommandId></rsp:CommandResponse>"

    def _send_input(self, shell_id: str | None, body: ET.Element) -> str:
        sh = self.server.shell(shell_id)
        for stream in body.findall("rsp:Send/rsp:Stream", NS):
            if stream.get("Name") != "stdin":
                raise WSManFault("w:InvalidParameter", f"Unknown input stream {stream.get('Name')!r}.")
            cmd = self.server.command(sh, stream.get("CommandId"))
            if cmd.stdin_closed:
                raise WSManFault("w:InvalidParameter", "The input stream of this command is already closed.")
            try:
                chunk = base64.b64decode((stream.text or "").strip(), validate=True)
            except binascii.Error:
                raise WSManFault("w:InvalidParameter", "The stdin stream is not valid base64.") from None
            if len(cmd.stdin) + len(chunk) > MAX_STDIN:
                raise WSManFault("w:InvalidParameter", "The script is too large.")
            ended = (stream.get("End") or "").lower() == "true"
            if cmd.start.script_end is not None:  # it reads on while stdin stays open
                self.server.feed(cmd, chunk, ended)
                continue
            cmd.stdin += chunk
            if ended:
                cmd.stdin_closed = True
                self.server.start_command(cmd)
        return "<rsp:SendResponse/>"

    def _receive(self, shell_id: str | None, body: ET.Element, timeout: float) -> str:
        sh = self.server.shell(shell_id)
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        if desired is None:
            raise WSManFault("w:InvalidParameter", "The Receive request has no rsp:DesiredStream.")
        cmd = self.server.command(sh, desired.get("CommandId"))
        with cmd.output:  # output so far (a warm process's ready line), or the end
            cmd.output.wait_for(lambda: cmd.done.is_set() or cmd.out_pos < len(cmd.stdout), timeout)
        if not cmd.done.is_set() and cmd.out_pos >= len(cmd.stdout):
            raise WSManFault("w:TimedOut", "The WS-Management service cannot complete the operation within the "
                             "time specified in OperationTimeout.", FAULT_TIMEOUT, code="s:Receiver")
        sh.last_used = time.monotonic()
        if cmd.drop:
            sh.commands.pop(cmd.id, None)
            raise DropConnection()
        # hand out at most OUTPUT_CHUNK bytes per reply; Done only once everything is out
        budget = OUTPUT_CHUNK
        parts = []
        out = cmd.stdout[cmd.out_pos:cmd.out_pos + budget]
        cmd.out_pos += len(out)
        budget -= len(out)
        err = cmd.stderr[cmd.err_pos:cmd.err_pos + budget]
        cmd.err_pos += len(err)
        out_end = cmd.out_pos >= len(cmd.stdout)
        err_end = cmd.err_pos >= len(cmd.stderr)
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                parts.append(f'<rsp:Stream Name="{name}" CommandId="{cmd.id}">'
                             f'{base64.b64encode(data).decode()}</rsp:Stream>')
        if out_end and err_end and cmd.done.is_set():
            parts.append(f'<rsp:Stream Name="stdout" CommandId="{cmd.id}" End="true"></rsp:Stream>'
                         f'<rsp:Stream Name="stderr" CommandId="{cmd.id}" End="true"></rsp:Stream>'
                         f'<rsp:CommandState CommandId="{cmd.id}" State="{STATE_DONE}">'
                         f'<rsp:ExitCode>{cmd.exit_code}</rsp:ExitCode></rsp:CommandState>')
        else:
            parts.append(f'<rsp:CommandState CommandId="{cmd.id}" State="{STATE_RUNNING}"/>')
        return "<rsp:ReceiveResponse>" + "".join(parts) + "</rsp:ReceiveResponse>"

    def _signal(self, shell_id: str | None, body: ET.Element) -> str:
        sh = self.server.shell(shell_id)
        sig = body.find("rsp:Signal", NS)
        if sig is None:
            raise WSManFault("w:InvalidParameter", "The Signal request has no rsp:Signal.")
        code = (sig.findtext("rsp:Code", "", NS) or "").strip()
        cmd = sh.commands.get(sig.get("CommandId") or "")
        if cmd is None:
            return "<rsp:SignalResponse/>"  # already gone (e.g. its answer was dropped): nothing to stop
        if code == SIGNAL_TERMINATE or code.endswith("/ctrl_c") or code.endswith("/ctrl_break"):
            with cmd.output:  # a process reading requests stops waiting for them
                cmd.terminated = True
                cmd.output.notify_all()
            sh.commands.pop(cmd.id, None)
        return "<rsp:SignalResponse/>"

    def _delete(self, shell_id: str | None) -> str:
        sh = self.server.shell(shell_id)
        with self.server.shells_lock:
            self.server.shells.pop(sh.id, None)
        return ""
