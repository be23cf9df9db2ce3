"""The Hyper-V driver: run one operation script on one host over WinRM, get one JSON document back.

Per operation: open a WinRM cmd shell (codepage 65001, no profile), start powershell.exe with
a fixed bootstrap (POWERSHELL_COMMAND), send the rendered script on its stdin, receive
stdout/stderr until the command is done or our own deadline passes, then signal the
command and delete the shell, always. Exit code 0 is success and stdout holds the JSON
result; anything else is the CLIXML error on stderr, turned into a typed exception.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import json
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests
import requests.utils
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from workers.hyperv import scripts
from workers.hyperv.errors import (
    AccessDenied,
    HyperVError,
    OperationTimeout,
    TransportError,
    error_from_stderr,
)
from workers.model import chunks, lease_deadline
from workers.model.config import ConfigError, Credentials, Host

log = logging.getLogger(__name__)


def _proxy_lookups_take_turns() -> None:
    """requests' proxy lookup (`requests.utils.should_bypass_proxies`) sets
    os.environ["no_proxy"] for the length of a call and deletes it again afterwards
    (psf/requests#4997): two threads in it at once, when no_proxy is not set, end in
    KeyError('no_proxy'). pywinrm goes through it for every message (its `proxy=None`
    passes no_proxy="*"), and quickmig makes WinRM calls from several threads at once (the
    downtime copy checks its files side by side): a cutover failed, and rolled back, for
    it. A lock makes the lookups take turns; they read the environment, nothing else."""
    original = requests.utils.should_bypass_proxies
    if getattr(original, "quickmig_takes_turns", False):
        return
    lock = threading.Lock()

    @functools.wraps(original)
    def taking_turns(url: str, no_proxy: str | None) -> bool:
        with lock:
            return original(url, no_proxy=no_proxy)

    taking_turns.quickmig_takes_turns = True  # type: ignore[attr-defined]
    requests.utils.should_bypass_proxies = taking_turns


_proxy_lookups_take_turns()

# Why not `powershell -NoProfile -NonInteractive -Command -`, the obvious way to run a
# script from stdin: with `-Command -`, powershell.exe treats stdin like an interactive prompt and
# runs it statement by statement. A multi-line statement needs an extra blank line or it
# is silently never run, $ErrorActionPreference = 'Stop' stops only the current statement
# (the next ones still run: a failed Get-VM would not stop a later Remove-VM), and the exit
# code is that of the last statement (PowerShell/PowerShell#3223, #15331, #21808).
# So the command line carries a small fixed bootstrap as -EncodedCommand; it joins all of
# stdin (the rendered script, delivered line by line as $input, the way Ansible's WinRM
# bootstrap reads its payload) and runs it as ONE script block: a terminating error ends
# the whole script, exit code 1, and -EncodedCommand makes powershell.exe write that error
# to the redirected stderr as CLIXML. The command line stays a few hundred characters, far
# below cmd.exe's 8 KB limit that `run_ps` (-EncodedCommand of the whole script) runs into.
# The bootstrap first sets the console's input and output encodings to UTF-8 (no BOM), as
# Ansible's WinRM bootstrap (bootstrap_wrapper.ps1) does: powershell.exe writes its stdout
# and stderr in [Console]::OutputEncoding, which is otherwise the host's OEM code page
# whatever the shell's code page, so a non-ASCII VM name, switch or path would reach us as
# '?' or broken bytes. The scripts themselves are pure ASCII (scripts.render), so only
# what comes back needs it. The setters throw where there is no console at all; then
# nothing better can be done, and the script still runs (Ansible does the same).
# The lab emulator reads this line for that setting (lab.emulator.scriptfacts).
_PRELUDE = ("try { [Console]::InputEncoding = [Console]::OutputEncoding = "
            "New-Object System.Text.UTF8Encoding $false } catch { $null = $_ }; "
            "$ProgressPreference = 'SilentlyContinue'; ")
_READ_AND_RUN = ("$qmScript = [string]::Join([string][char]10, [string[]]@($input)); "
                 "& ([scriptblock]::Create($qmScript))")
BOOTSTRAP = _PRELUDE + _READ_AND_RUN


def _command_line(bootstrap: str) -> str:
    return ("powershell.exe -NoProfile -NonInteractive -EncodedCommand "
            + base64.b64encode(bootstrap.encode("utf-16-le")).decode("ascii"))


POWERSHELL_COMMAND = _command_line(BOOTSTRAP)

# A process started ahead of its operation (HyperVDriver.warm): the same bootstrap, but it
# first loads the Hyper-V module (for a script that calls a Hyper-V cmdlet) and says so on
# stdout, then waits on stdin for its script. The switchover starts the processes it will
# need before Save-VM, so no process start and no module load falls inside the downtime.
READY_LINE = "quickmig-ready"
_READY = f"[Console]::Out.WriteLine('{READY_LINE}'); [Console]::Out.Flush(); "
WARM_BOOTSTRAP = _PRELUDE + _READY + _READ_AND_RUN
WARM_HYPERV_BOOTSTRAP = _PRELUDE + "Import-Module Hyper-V -ErrorAction Stop; " + _READY + _READ_AND_RUN

# A process that goes on reading stdin after its script (workers.hyperv.hash_stream): it says it
# is ready, reads the script line by line up to SCRIPT_END (PowerShell's $input hands out
# stdin's lines as they arrive, one per MoveNext), and runs it with the rest of stdin, the
# requests, left in $qmRequests. The script is still a shipped text; the requests are data.
SCRIPT_END = "quickmig-end-of-script"
_READ_SCRIPT_THEN_REQUESTS = (
    "$qmLines = New-Object System.Collections.Generic.List[string]; "
    f"while ($input.MoveNext() -and [string]$input.Current -cne '{SCRIPT_END}') "
    "{ $qmLines.Add([string]$input.Current) }; "
    "$qmRequests = $input; "
    "& ([scriptblock]::Create([string]::Join([string][char]10, $qmLines.ToArray())))")
STREAM_BOOTSTRAP = _PRELUDE + _READY + _READ_SCRIPT_THEN_REQUESTS

SHELL_CODEPAGE = 65001          # UTF-8 stdin/stdout in the WinRM shell
OPERATION_TIMEOUT_S = 20        # WS-Man OperationTimeout: how long one Receive may block
READ_TIMEOUT_S = OPERATION_TIMEOUT_S + 10   # HTTP read timeout, must exceed the above
SEND_CHUNK_BYTES = 48 * 1024    # stdin per Send message (base64 keeps it under MaxEnvelopeSize)
HEARTBEAT_MARGIN_S = 30         # wait_heartbeat's deadline: its own timeout_s plus this
WSMAN_ACCESS_DENIED = 5         # WSManFault Code of "access denied" (Win32 ERROR_ACCESS_DENIED)

# Deadlines for operations that can take long on a real host (seconds). The others use
# default_timeout_s. wait_heartbeat gets at least its timeout_s + HEARTBEAT_MARGIN_S.
OP_TIMEOUT_S = {
    "checkpoint_vm": 600,
    "save_vm": 900,          # writes the VM's memory to disk
    "import_vm": 900,
    "compare_vm": 300,
    "remove_snapshots": 3600,  # waits for the merge of each differencing disk
    "remove_vm": 900,
    "delete_files": 600,
    "file_hash": 1800,       # reads the whole file (a disk of hundreds of GB)
    "hash_stream": 600,      # one range of at most 1 GiB per request
    "start_vm": 600,         # restores the memory from the saved state
}

# The operations that change a host (compare_vm too: it registers a planned VM for a moment):
# none starts once this thread's step claim could have passed to another delivery
# (workers.model.lease_deadline, docs/design.md section 3.3).
DESTRUCTIVE_OPS = frozenset({"checkpoint_vm", "save_vm", "start_vm", "stop_vm", "compare_vm", "import_vm",
                             "remove_snapshots", "remove_vm", "delete_files", "reparent_disks"})

TRANSPORTS = ("basic", "ntlm", "kerberos", "credssp")
CERT_VALIDATION = ("validate", "ignore")


START_ACTIONS = ("Nothing", "StartIfRunning", "Start")  # Set-VM -AutomaticStartAction's values


def _with_action(args: dict, action: str | None) -> dict:
    if action is None:
        return args
    if action not in START_ACTIONS:
        raise ValueError(f"automatic_start_action must be one of {', '.join(START_ACTIONS)}, not {action!r}")
    return {**args, "automatic_start_action": action}


def _is_loopback(hostname: str | None) -> bool:
    try:
        return ipaddress.ip_address(hostname or "").is_loopback
    except ValueError:
        return False


class WarmProcess:
    """A powershell.exe started on a host ahead of one operation (`HyperVDriver.warm`): its
    shell is open, the process has started and loaded what the script needs, and it waits
    on stdin for the script. `HyperVDriver.run(op, args, warm=it)` uses it once; `close()`
    ends one that was not used and deletes its shell."""

    def __init__(self, driver: HyperVDriver, op: str, proto: Protocol, shell_id: str, command_id: str,
                 early: bytes):
        self.driver, self.op = driver, op
        self._proto, self._shell_id, self._command_id = proto, shell_id, command_id
        self.early = early  # stdout after the ready line, already received
        self._lock = threading.Lock()
        self.used = False

    def take(self, op: str) -> tuple[Protocol, str, str]:
        with self._lock:
            if op != self.op or self.used:
                raise ValueError(f"the process warmed for {self.op} on {self.driver.host.name} cannot run {op}"
                                 + (" (it was used already)" if self.used else ""))
            self.used = True
        return self._proto, self._shell_id, self._command_id

    def close(self) -> None:
        with self._lock:
            if self.used:
                return
            self.used = True
        self.driver._cleanup(self._proto, self._shell_id, self._command_id)


class WarmProcesses:
    """Processes started side by side ahead of the operations they will run, `{name: (driver,
    op)}`; `get(name)` is the process, or None if it could not be started (the operation then
    starts its own: slower, never wrong). Every process not used is ended on the way out."""

    def __init__(self, wanted: dict[str, tuple[HyperVDriver, str]]):
        self.wanted = wanted
        self.procs: dict[str, WarmProcess | None] = {}

    def __enter__(self) -> WarmProcesses:
        def start(item: tuple[str, tuple[HyperVDriver, str]]) -> tuple[str, WarmProcess | None]:
            name, (driver, op) = item
            try:
                return name, driver.warm(op)
            except HyperVError as e:
                log.warning("hyperv host=%s: could not start the process for %s ahead: %s", driver.host.name, op, e)
                return name, None
        with ThreadPoolExecutor(max(1, len(self.wanted)), thread_name_prefix="warm") as pool:
            self.procs = dict(pool.map(start, self.wanted.items()))
        return self

    def get(self, name: str) -> WarmProcess | None:
        return self.procs.get(name)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc is not None:
                proc.close()


class HyperVDriver:
    """Runs the operation scripts on one Hyper-V host. Safe to share; each call has its own shell."""

    def __init__(self, host: Host, creds: Credentials, *, default_timeout_s: float = 120,
                 op_timeouts_s: dict[str, float] | None = None):
        self.host = host
        self._creds = creds
        self.default_timeout_s = float(default_timeout_s)
        self.op_timeouts_s = {**OP_TIMEOUT_S, **(op_timeouts_s or {})}
        self._endpoint = host.winrm_endpoint
        self._protocol_kwargs = self._transport_settings(host)

    def __repr__(self) -> str:
        return f"HyperVDriver(host={self.host.name!r}, endpoint={self._endpoint!r})"

    @staticmethod
    def _transport_settings(host: Host) -> dict:
        """pywinrm Protocol settings for a host; refuses what would send credentials in the clear."""
        url = urlsplit(host.winrm_endpoint)
        scheme = (url.scheme or "").lower()
        if scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"host {host.name}: winrm_endpoint {host.winrm_endpoint!r} is not an "
                              "http:// or https:// URL (e.g. https://hv1.example:5986/wsman)")
        transport = (host.winrm_transport or "").lower()
        if transport not in TRANSPORTS:
            raise ConfigError(f"host {host.name}: winrm_transport {host.winrm_transport!r} is not one of "
                              f"{', '.join(TRANSPORTS)}")
        if transport == "basic" and scheme != "https" and not _is_loopback(url.hostname):
            raise ConfigError(f"host {host.name}: winrm_transport 'basic' sends the password in the clear "
                              f"over {host.winrm_endpoint}; use an https:// endpoint, or ntlm/kerberos/"
                              "credssp (message encryption); plain http with basic is only for "
                              "loopback (127.0.0.0/8) lab hosts")
        if transport == "basic":
            encryption = "never"
        else:
            # Over http the WinRM messages themselves are encrypted by the auth protocol;
            # over https, TLS does it.
            encryption = "always" if scheme == "http" else "auto"
        kwargs = {
            "transport": transport,
            "message_encryption": encryption,
            "read_timeout_sec": READ_TIMEOUT_S,
            "operation_timeout_sec": OPERATION_TIMEOUT_S,
            "proxy": None,  # never route WinRM through a proxy from the environment
        }
        validation = host.winrm_cert_validation or "validate"
        if validation in CERT_VALIDATION:
            kwargs["server_cert_validation"] = validation
        elif validation.endswith((".pem", ".crt", ".cer")):  # a CA bundle to validate against
            kwargs["server_cert_validation"] = "validate"
            kwargs["ca_trust_path"] = validation
        else:
            raise ConfigError(f"host {host.name}: winrm_cert_validation {validation!r} is not 'validate', "
                              "'ignore' or the path of a CA bundle (.pem/.crt)")
        return kwargs

    def _new_protocol(self) -> Protocol:
        return Protocol(self._endpoint, username=self._creds.winrm_username,
                        password=self._creds.winrm_password, **self._protocol_kwargs)

    def timeout_for(self, op: str, args: dict) -> float:
        t = float(self.op_timeouts_s.get(op, self.default_timeout_s))
        if op == "wait_heartbeat":
            t = max(t, float(args.get("timeout_s") or 0) + HEARTBEAT_MARGIN_S)
        return t

    # -- the one way in -----------------------------------------------------------------

    def warm(self, op: str, *, timeout_s: float = 120) -> WarmProcess:
        """Start the process for `op` now, to run it later without waiting for a process start
        or a module load: returns once the host says the process is ready."""
        scripts.load(op)  # an unknown op never reaches the host
        bootstrap = WARM_BOOTSTRAP if op in scripts.NO_HYPERV_MODULE else WARM_HYPERV_BOOTSTRAP
        proto, shell_id, command_id, early = self.start_process(op, bootstrap, timeout_s=timeout_s)
        return WarmProcess(self, op, proto, shell_id, command_id, early)

    def start_process(self, op: str, bootstrap: str, *, timeout_s: float = 120) -> tuple[Protocol, str, str, bytes]:
        """Open a shell and start powershell.exe with `bootstrap`, which writes READY_LINE once
        it has loaded what it loads first: (protocol, shell id, command id, stdout after that
        line). The caller sends the script and ends the command (`close_process`)."""
        proto = self._new_protocol()
        shell_id = command_id = None
        deadline = time.monotonic() + timeout_s
        try:
            with self._faults_mapped(op):
                shell_id = proto.open_shell(codepage=SHELL_CODEPAGE, noprofile=True)
                command_id = proto.run_command(shell_id, _command_line(bootstrap), console_mode_stdin=False)
                out, err = b"", b""
                marker = READY_LINE.encode("ascii")
                while marker not in out:
                    rc, o, e, done = self._receive_once(proto, shell_id, command_id, op, deadline)
                    out, err = out + o, err + e
                    if done:  # it ended before its script: the module would not load, say
                        raise error_from_stderr(err, op, host=self.host.name, exit_code=rc or 1)
                early = out.split(marker, 1)[1].lstrip(b"\r\n")
                return proto, shell_id, command_id, early
        except BaseException:
            self._cleanup(proto, shell_id, command_id)
            raise

    def close_process(self, proto: Protocol, shell_id: str | None, command_id: str | None) -> None:
        """End a process `start_process` started (Signal terminate) and delete its shell."""
        self._cleanup(proto, shell_id, command_id)

    def shell_create_s(self) -> float:
        """How long the host takes to create a WinRS shell (`quickmig calibrate`): one is opened,
        timed, and deleted again; nothing runs in it."""
        proto = self._new_protocol()
        shell_id = None
        try:
            with self._faults_mapped("shell"):
                t0 = time.monotonic()
                shell_id = proto.open_shell(codepage=SHELL_CODEPAGE, noprofile=True)
                return time.monotonic() - t0
        finally:
            self._cleanup(proto, shell_id, None)

    def run(self, op: str, args: dict | None = None, *, timeout_s: float | None = None,
            warm: WarmProcess | None = None) -> dict:
        """Run operation `op` with `args` (see docs/hyperv-operations.md) and return its JSON
        result; in the process `warm` started for it, if given."""
        args = {} if args is None else args
        text = scripts.render(op, args)
        timeout = float(timeout_s) if timeout_s is not None else self.timeout_for(op, args)
        t0 = time.monotonic()
        outcome = "ok"
        try:
            rc, stdout, stderr = self._execute(op, text, t0 + timeout, warm)
            if rc != 0:
                raise error_from_stderr(stderr, op, host=self.host.name, exit_code=rc)
            return self._result(op, stdout)
        except HyperVError as e:
            outcome = type(e).__name__
            if e.host is None:
                e.host = self.host.name
            if e.op is None:
                e.op = op
            raise
        except BaseException as e:
            outcome = type(e).__name__
            raise
        finally:
            took = time.monotonic() - t0
            # "no such VM" is an answer (lookups ask every host), not a fault of the host
            level = logging.INFO if outcome in ("ok", "VMNotFound") else logging.WARNING
            log.log(level, "hyperv op=%s host=%s took=%.2fs outcome=%s", op, self.host.name, took, outcome)

    def _result(self, op: str, stdout: bytes) -> dict:
        out = stdout.decode("utf-8", "replace").lstrip("\ufeff").strip()
        lines = [ln for ln in out.splitlines() if ln.strip()]
        for candidate in (out, lines[-1] if lines else "", "".join(lines)):
            try:
                doc = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
        shown = out[-300:] if out else "nothing"
        raise HyperVError(f"{op} on {self.host.name} succeeded but printed no JSON object (got {shown!r})",
                          op=op, host=self.host.name)

    def _execute(self, op: str, text: str, deadline: float,
                 warm: WarmProcess | None = None) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) of the script; transport faults become TransportError."""
        early = b""
        if warm is not None:
            proto, shell_id, command_id = warm.take(op)
            early = warm.early
        else:
            proto, shell_id, command_id = self._new_protocol(), None, None
        try:
            with self._faults_mapped(op):
                if shell_id is None:
                    shell_id = proto.open_shell(codepage=SHELL_CODEPAGE, noprofile=True)
                if command_id is None:
                    # console_mode_stdin=False: stdin is a pipe we write, as Ansible's WinRM plugin does.
                    command_id = proto.run_command(shell_id, POWERSHELL_COMMAND, console_mode_stdin=False)
                data = text.encode("utf-8")
                if op in DESTRUCTIVE_OPS:
                    # last moment before the host acts: the script runs once its stdin has come
                    lease_deadline.check(f"{op} on {self.host.name}")
                for i in range(0, len(data), SEND_CHUNK_BYTES):
                    last = i + SEND_CHUNK_BYTES >= len(data)
                    proto.send_command_input(shell_id, command_id, data[i:i + SEND_CHUNK_BYTES], end=last)
                rc, out, err = self._receive(proto, shell_id, command_id, op, deadline)
                return rc, early + out, err
        finally:
            self._cleanup(proto, shell_id, command_id)

    def _receive_once(self, proto: Protocol, shell_id: str, command_id: str, op: str,
                      deadline: float) -> tuple[int, bytes, bytes, bool]:
        """One Receive: (exit code, stdout, stderr, done); nothing yet is (0, b"", b"", False).
        Not Protocol.get_command_output: it retries Receive timeouts forever. One Receive
        blocks up to the WS-Man OperationTimeout, which we shorten to what is left of the
        deadline (read_timeout_sec stays above it)."""
        raw = getattr(proto, "get_command_output_raw", None) or proto._raw_get_command_output
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperationTimeout(f"{op} on {self.host.name} did not finish within its deadline; "
                                   "it may still be running there", op=op, host=self.host.name)
        proto.operation_timeout_sec = max(1, min(OPERATION_TIMEOUT_S, int(left + 0.999)))
        try:
            o, e, rc, done = raw(shell_id, command_id)
        except WinRMOperationTimeoutError:
            return 0, b"", b"", False
        return rc, o, e, done

    def _receive(self, proto: Protocol, shell_id: str, command_id: str, op: str,
                 deadline: float) -> tuple[int, bytes, bytes]:
        out, err = [], []
        while True:
            rc, o, e, done = self._receive_once(proto, shell_id, command_id, op, deadline)
            out.append(o)
            err.append(e)
            if done:
                return rc, b"".join(out), b"".join(err)

    @contextlib.contextmanager
    def _faults_mapped(self, op: str) -> Iterator[None]:
        """Transport faults of `op` raised as this package's errors (TransportError, ...)."""
        try:
            yield
        except HyperVError:
            raise
        except Exception as e:
            mapped = self._transport_error(op, e)
            if mapped is None:
                raise
            raise mapped from e

    def _transport_error(self, op: str, e: Exception) -> HyperVError | None:
        where = f"{op} on {self.host.name} ({self._endpoint})"
        if isinstance(e, InvalidCredentialsError):
            return TransportError(f"{where}: the WinRM credentials were rejected (HTTP 401)", op=op,
                                  host=self.host.name)
        if isinstance(e, WSManFaultError):
            # By the fault's codes, never its reason text (in the host's display language):
            # the WSManFault code 5 is ERROR_ACCESS_DENIED, the subcode w:AccessDenied is the
            # WS-Management protocol's own.
            reason = " ".join(str(e.reason).split())
            denied = e.wsman_fault_code == WSMAN_ACCESS_DENIED or \
                str(e.fault_subcode or "").rsplit(":", 1)[-1] == "AccessDenied"
            cls = AccessDenied if denied else TransportError
            return cls(f"{where}: WS-Management fault: {reason}", op=op, host=self.host.name)
        if isinstance(e, WinRMTransportError):
            return TransportError(f"{where}: HTTP {e.code} from the WinRM service", op=op, host=self.host.name)
        if isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
            return TransportError(f"{where}: cannot reach the WinRM service: {type(e).__name__}: {e}",
                                  op=op, host=self.host.name)
        if isinstance(e, (ET.ParseError, StopIteration)):
            return TransportError(f"{where}: malformed WinRM response ({type(e).__name__})", op=op,
                                  host=self.host.name)
        if isinstance(e, WinRMError):  # e.g. an auth library that is not installed
            return HyperVError(f"{where}: {e}", op=op, host=self.host.name)
        return None

    def _cleanup(self, proto: Protocol, shell_id: str | None, command_id: str | None) -> None:
        """Terminate the command and delete the shell; never hides the operation's own outcome."""
        proto.operation_timeout_sec = OPERATION_TIMEOUT_S
        if shell_id is not None and command_id is not None:
            try:
                proto.cleanup_command(shell_id, command_id)
            except Exception as e:  # noqa: BLE001 - clean-up must not hide the operation's outcome
                log.warning("hyperv host=%s: could not signal command end: %s", self.host.name, type(e).__name__)
        if shell_id is not None:
            try:
                proto.close_shell(shell_id, close_session=True)
                return
            except Exception as e:  # noqa: BLE001 - as above; the host drops an idle shell by itself
                log.warning("hyperv host=%s: could not delete WinRM shell: %s", self.host.name, type(e).__name__)
        try:
            proto.transport.close_session()
        except Exception:  # noqa: BLE001 - the session is being thrown away either way
            pass

    # -- one thin method per operation (results as in docs/hyperv-operations.md) -----

    def list_vms(self) -> dict:
        return self.run("list_vms", {})

    def describe_vm(self, name: str | None = None, vm_id: str | None = None) -> dict:
        if (name is None) == (vm_id is None):
            raise ValueError("describe_vm needs exactly one of name or vm_id")
        return self.run("describe_vm", {"name": name} if vm_id is None else {"vm_id": vm_id})

    def host_info(self) -> dict:
        return self.run("host_info", {})

    def checkpoint_vm(self, vm_id: str, snapshot_name: str) -> dict:
        return self.run("checkpoint_vm", {"vm_id": vm_id, "snapshot_name": snapshot_name})

    def save_vm(self, vm_id: str, automatic_start_action: str | None = None) -> dict:
        """Save-VM; with automatic_start_action, Set-VM it first (while the VM still runs)."""
        return self.run("save_vm", _with_action({"vm_id": vm_id}, automatic_start_action))

    def start_vm(self, vm_id: str, automatic_start_action: str | None = None) -> dict:
        """Start-VM; with automatic_start_action, Set-VM it once the VM runs."""
        return self.run("start_vm", _with_action({"vm_id": vm_id}, automatic_start_action))

    def stop_vm(self, vm_id: str, automatic_start_action: str | None = None) -> dict:
        """Discard a saved state (Remove-VMSavedState) or turn a running VM off; with
        automatic_start_action, Set-VM it once the VM is Off."""
        return self.run("stop_vm", _with_action({"vm_id": vm_id}, automatic_start_action))

    def wait_heartbeat(self, vm_id: str, timeout_s: float) -> dict:
        return self.run("wait_heartbeat", {"vm_id": vm_id, "timeout_s": timeout_s})

    def compare_vm(self, config_path: str, vm_root: str | None = None) -> dict:
        return self.run("compare_vm", {"config_path": config_path, "vm_root": vm_root or self.host.vm_root})

    def import_vm(self, config_path: str, disk_paths: dict[str, str], iso_paths: dict[str, str],
                  parent_fixes: list[dict]) -> dict:
        return self.run("import_vm", {"config_path": config_path, "disk_paths": dict(disk_paths),
                                      "iso_paths": dict(iso_paths), "parent_fixes": list(parent_fixes),
                                      "roots": self.host.roots})

    def remove_snapshots(self, vm_id: str, snapshot_ids: list[str]) -> dict:
        return self.run("remove_snapshots", {"vm_id": vm_id, "snapshot_ids": list(snapshot_ids)})

    def remove_vm(self, vm_id: str, config_path: str, turn_off: bool = False, delete_paths: list[str] = ()) -> dict:
        """Remove the VM with this id if its configuration is `config_path` (else it is left as
        it is), then delete `delete_paths` no VM refers to; all confined to this host's roots."""
        return self.run("remove_vm", {"vm_id": vm_id, "config_path": self.host.confine(config_path),
                                      "turn_off": bool(turn_off), "roots": self.host.roots,
                                      "delete_paths": [self.host.confine(p) for p in delete_paths]})

    def delete_files(self, paths: list[str]) -> dict:
        return self.run("delete_files", {"paths": [self.host.confine(p) for p in paths], "roots": self.host.roots})

    def reparent_disks(self, parent_fixes: list[dict]) -> dict:
        """Set-VHD -ParentPath for each {path, parent_path}, all confined to this host's roots."""
        fixes = [{"path": self.host.confine(f["path"]), "parent_path": self.host.confine(f["parent_path"])}
                 for f in parent_fixes]
        return self.run("reparent_disks", {"parent_fixes": fixes, "roots": self.host.roots})

    def file_hash(self, path: str, scheme: str = "sha256-chunks-8MiB") -> str:
        """The digest (lowercase hex) of a file on this host, read by the host itself: by
        default the copy engine's sha256-chunks-8MiB (workers.model.chunks.SCHEME), or
        "sha256" (the whole file's SHA-256)."""
        return self.run("file_hash", {"path": path, "scheme": scheme})["digest"]

    def chunk_digests(self, path: str, first: int, count: int, warm: WarmProcess | None = None) -> list[str]:
        """SHA-256s (lowercase hex) of the 8 MiB chunks first .. first+count-1 of a file on
        this host, read by the host (`file_hash` for a range; fewer when the file ends
        sooner): the copy engine checks what landed while the rest is still copying."""
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (first, count)) or first < 0 \
                or not 1 <= count <= chunks.MAX_RANGE:
            raise ValueError(f"chunk_digests needs first >= 0 and count 1..{chunks.MAX_RANGE}, "
                             f"not {first!r} and {count!r}")
        return self.run("file_hash", {"path": path, "scheme": chunks.SCHEME, "first": first,
                                      "count": count}, warm=warm)["chunks"]
