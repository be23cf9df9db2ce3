"""The driver against a fake pywinrm Protocol: what it sends, how it waits, what it raises."""
from __future__ import annotations

import base64
import json
import logging
import time

import pytest
import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from lab.emulator.clixml import format_clixml_error, format_clixml_progress
from workers.hyperv import driver as driver_mod
from workers.hyperv import scripts
from workers.hyperv.driver import POWERSHELL_COMMAND, HyperVDriver
from workers.hyperv.errors import (
    AccessDenied,
    HyperVError,
    InvalidVMState,
    OperationTimeout,
    TransportError,
    VMNotFound,
)
from workers.model import lease_deadline
from workers.model.config import ConfigError, Credentials, Host

PASSWORD = "s3cret-Pa55word"
CREDS = Credentials("admin", PASSWORD, "smbuser", "smbpass")


def make_host(endpoint="https://hv1.example:5986/wsman", transport="ntlm", validation="validate"):
    return Host(name="hv1", winrm_endpoint=endpoint, winrm_transport=transport, vm_root="D:\\VMs\\hv1",
                smb_server="hv1.example", smb_port=445, smb_share="hv1", winrm_cert_validation=validation)


class FakeTransport:
    def __init__(self):
        self.closed = 0

    def close_session(self):
        self.closed += 1


class FakeProtocol:
    """Records the WS-Man calls; `replies` are what successive Receives return or raise."""

    def __init__(self, replies, fail_open=None, fail_cleanup=False):
        self.replies = list(replies)
        self.fail_open = fail_open
        self.fail_cleanup = fail_cleanup
        self.transport = FakeTransport()
        self.operation_timeout_sec = 20
        self.calls = []
        self.stdin = []
        self.timeouts_seen = []

    def open_shell(self, codepage=437, noprofile=False, **kw):
        self.calls.append(("open_shell", codepage, noprofile))
        if self.fail_open:
            raise self.fail_open
        return "SHELL-1"

    def run_command(self, shell_id, command, arguments=(), console_mode_stdin=True, skip_cmd_shell=False):
        self.calls.append(("run_command", shell_id, command, tuple(arguments), console_mode_stdin))
        return "CMD-1"

    def send_command_input(self, shell_id, command_id, stdin_input, end=False):
        self.stdin.append((stdin_input, end))

    def get_command_output_raw(self, shell_id, command_id):
        self.timeouts_seen.append(self.operation_timeout_sec)
        reply = self.replies.pop(0) if self.replies else WinRMOperationTimeoutError()
        if isinstance(reply, float):
            time.sleep(reply)
            raise WinRMOperationTimeoutError()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def cleanup_command(self, shell_id, command_id):
        self.calls.append(("cleanup_command", shell_id, command_id))
        if self.fail_cleanup:
            raise requests.exceptions.ConnectionError("gone")

    def close_shell(self, shell_id, close_session=True):
        self.calls.append(("close_shell", shell_id, close_session))
        if self.fail_cleanup:
            raise requests.exceptions.ConnectionError("gone")

    def sent_text(self) -> str:
        return b"".join(chunk for chunk, _ in self.stdin).decode("utf-8")


def driver_with(proto: FakeProtocol, **kw) -> HyperVDriver:
    d = HyperVDriver(make_host(), CREDS, **kw)
    d._new_protocol = lambda: proto
    return d


def ok(doc, stderr=b"") -> tuple:
    return (json.dumps(doc).encode(), stderr, 0, True)


VM = {"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "name": "web01", "state": "Running"}


def test_a_call_sends_the_rendered_script_on_stdin_of_the_fixed_command():
    proto = FakeProtocol([(b"", b"", 0, False), ok({"vm": VM})])
    res = driver_with(proto).describe_vm(name="web01")
    assert res == {"vm": VM}
    assert proto.calls[0] == ("open_shell", 65001, True)
    assert proto.calls[1] == ("run_command", "SHELL-1", POWERSHELL_COMMAND, (), False)
    assert proto.sent_text() == scripts.render("describe_vm", {"name": "web01"})
    assert scripts.parse(proto.sent_text()) == ("describe_vm", {"name": "web01"})
    assert proto.stdin[-1][1] is True
    assert proto.calls[-2:] == [("cleanup_command", "SHELL-1", "CMD-1"), ("close_shell", "SHELL-1", True)]


def test_the_command_line_is_short_and_runs_all_of_stdin_as_one_script_block():
    assert len(POWERSHELL_COMMAND) < 1000
    assert POWERSHELL_COMMAND.startswith("powershell.exe -NoProfile -NonInteractive -EncodedCommand ")
    boot = base64.b64decode(POWERSHELL_COMMAND.rsplit(" ", 1)[1]).decode("utf-16-le")
    assert boot == driver_mod.BOOTSTRAP
    assert "$input" in boot and "[scriptblock]::Create" in boot
    assert "-Command -" not in POWERSHELL_COMMAND


def test_the_bootstrap_makes_powershell_write_utf_8_before_the_script_runs():
    # powershell.exe writes stdout/stderr in [Console]::OutputEncoding, else the host's OEM
    # code page: a non-ASCII VM name would come back as '?' or broken bytes.
    boot = driver_mod.BOOTSTRAP
    set_enc = boot.index("[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false")
    assert "[Console]::InputEncoding = [Console]::OutputEncoding" in boot
    assert set_enc < boot.index("& ([scriptblock]::Create($qmScript))")


def test_large_arguments_go_in_several_send_messages():
    paths = [f"D:\\VMs\\hv1\\vm\\Virtual Hard Disks\\disk-{i:05d}.avhdx" for i in range(3000)]
    proto = FakeProtocol([ok({"deleted": []})])
    driver_with(proto).delete_files(paths)
    assert len(proto.stdin) > 1
    assert [end for _, end in proto.stdin] == [False] * (len(proto.stdin) - 1) + [True]
    assert all(len(chunk) <= driver_mod.SEND_CHUNK_BYTES for chunk, _ in proto.stdin)
    assert scripts.parse(proto.sent_text()) == ("delete_files", {"paths": paths, "roots": ["D:\\VMs\\hv1"]})


def test_success_is_the_exit_code_even_with_progress_on_stderr_and_noise_on_stdout():
    out = b"\xef\xbb\xbfWARNING-ish line\r\n" + json.dumps({"vm": {"name": "\u00dcberweisung"}}).encode() + b"\r\n"
    proto = FakeProtocol([(out, format_clixml_progress().encode(), 0, True)])
    assert driver_with(proto).run("start_vm", {"vm_id": VM["id"]}) == {"vm": {"name": "\u00dcberweisung"}}


def test_a_failed_script_raises_the_typed_error_and_still_cleans_up():
    stderr = format_clixml_error('Hyper-V was unable to find a virtual machine with ID "x".', "ObjectNotFound",
                                 "VMNotFound,Get-QmVM", command="Get-QmVM", progress=1).encode()
    proto = FakeProtocol([(b"", stderr, 1, True)])
    with pytest.raises(VMNotFound) as ei:
        driver_with(proto).save_vm("x")
    assert ei.value.host == "hv1" and ei.value.op == "save_vm" and not ei.value.retryable
    assert ("close_shell", "SHELL-1", True) in proto.calls

    stderr = format_clixml_error("The operation cannot be performed while the object is in its current state.",
                                 "InvalidOperation", "InvalidState,Microsoft.HyperV.PowerShell.Commands.SaveVM",
                                 command="Save-VM").encode()
    with pytest.raises(InvalidVMState):
        driver_with(FakeProtocol([(b"", stderr, 1, True)])).save_vm("x")


def test_our_own_deadline_ends_a_receive_that_never_finishes():
    proto = FakeProtocol([0.05] * 100)
    t0 = time.monotonic()
    with pytest.raises(OperationTimeout) as ei:
        driver_with(proto).run("save_vm", {"vm_id": "x"}, timeout_s=0.3)
    assert time.monotonic() - t0 < 2
    assert ei.value.retryable
    assert min(proto.timeouts_seen) == 1  # the WS-Man timeout shrinks to what is left
    assert ("cleanup_command", "SHELL-1", "CMD-1") in proto.calls


@pytest.mark.parametrize("exc,words", [
    (requests.exceptions.ConnectionError("refused"), "cannot reach"),
    (requests.exceptions.ReadTimeout("slow"), "cannot reach"),
    (InvalidCredentialsError("the specified credentials were rejected by the server"), "401"),
    (WinRMTransportError("http", 503, ""), "HTTP 503"),
])
def test_transport_failures_are_retryable_transport_errors(exc, words):
    proto = FakeProtocol([], fail_open=exc)
    with pytest.raises(TransportError) as ei:
        driver_with(proto).list_vms()
    assert ei.value.retryable and words in str(ei.value)
    assert PASSWORD not in str(ei.value)
    assert proto.transport.closed == 1


@pytest.mark.parametrize("reason", ["Access is denied.", "Zugriff verweigert",
                                    "\u30a2\u30af\u30bb\u30b9\u304c\u62d2\u5426"])
def test_a_ws_man_access_denied_is_known_by_its_code_in_any_language(reason):
    fault = WSManFaultError(500, "Bad HTTP response", "<s:Envelope/>", reason, fault_code="s:Sender",
                            fault_subcode="w:AccessDenied", wsman_fault_code=5)
    with pytest.raises(AccessDenied) as ei:
        driver_with(FakeProtocol([], fail_open=fault)).list_vms()
    assert reason in str(ei.value) and not ei.value.retryable
    other = WSManFaultError(500, "Bad HTTP response", "<s:Envelope/>", "access is denied, says the text",
                            fault_code="s:Receiver", fault_subcode="w:QuotaLimit", wsman_fault_code=2150859174)
    with pytest.raises(TransportError):
        driver_with(FakeProtocol([], fail_open=other)).list_vms()


def test_a_dropped_connection_while_receiving_is_a_transport_error():
    proto = FakeProtocol([requests.exceptions.ConnectionError("reset by peer")])
    with pytest.raises(TransportError):
        driver_with(proto).list_vms()


def test_a_cleanup_failure_does_not_undo_a_success():
    proto = FakeProtocol([ok({"vms": []})], fail_cleanup=True)
    assert driver_with(proto).list_vms() == {"vms": []}
    assert proto.transport.closed == 1


def test_output_that_is_not_a_json_object_is_a_permanent_error():
    for out in (b"", b"hello\r\n", b"[1, 2]\r\n"):
        with pytest.raises(HyperVError) as ei:
            driver_with(FakeProtocol([(out, b"", 0, True)])).list_vms()
        assert not ei.value.retryable and type(ei.value) is HyperVError


def test_unknown_operations_and_bad_arguments_never_reach_the_host():
    proto = FakeProtocol([])
    d = driver_with(proto)
    with pytest.raises(ValueError):
        d.run("format_disk", {})
    with pytest.raises(TypeError):
        d.run("list_vms", ["x"])
    with pytest.raises(ValueError):
        d.describe_vm()
    assert proto.calls == []


def test_each_operation_logs_one_line_without_secrets_or_script(caplog):
    caplog.set_level(logging.INFO, logger="workers.hyperv.driver")
    driver_with(FakeProtocol([ok({"vms": []})])).list_vms()
    stderr = format_clixml_error("boom", "InvalidOperation", "X").encode()
    with pytest.raises(HyperVError):
        driver_with(FakeProtocol([(b"", stderr, 1, True)])).run("describe_vm", {"name": "secret-ish"})
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.hyperv.driver"]
    assert len(lines) == 2
    assert "op=list_vms host=hv1" in lines[0] and "outcome=ok" in lines[0]
    assert "op=describe_vm" in lines[1] and "outcome=HyperVError" in lines[1]
    for line in lines:
        assert PASSWORD not in line and "quickmig-op" not in line and "secret-ish" not in line
    assert PASSWORD not in repr(driver_with(FakeProtocol([])))


def test_deadlines_per_operation():
    d = HyperVDriver(make_host(), CREDS, default_timeout_s=60, op_timeouts_s={"save_vm": 5})
    assert d.timeout_for("describe_vm", {}) == 60
    assert d.timeout_for("save_vm", {}) == 5
    assert d.timeout_for("remove_snapshots", {}) == driver_mod.OP_TIMEOUT_S["remove_snapshots"]
    assert d.timeout_for("wait_heartbeat", {"timeout_s": 120}) >= 120 + driver_mod.HEARTBEAT_MARGIN_S


# -- transports ----------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["http://hv1.example:5985/wsman", "http://10.0.0.5:5985/wsman",
                                      "http://localhost:5985/wsman"])
def test_basic_auth_over_plain_http_is_refused(endpoint):
    with pytest.raises(ConfigError, match="basic"):
        HyperVDriver(make_host(endpoint, "basic"), CREDS)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:15985/wsman", "http://127.3.4.5:5985/wsman",
                                      "https://hv1.example:5986/wsman"])
def test_basic_auth_is_allowed_over_https_and_on_loopback(endpoint):
    d = HyperVDriver(make_host(endpoint, "basic"), CREDS)
    assert d._protocol_kwargs["transport"] == "basic"
    p = d._new_protocol()  # builds without touching the network
    assert p.read_timeout_sec > p.operation_timeout_sec


@pytest.mark.parametrize("transport", ["ntlm", "kerberos", "credssp"])
def test_negotiated_transports_encrypt_messages_over_http(transport):
    d = HyperVDriver(make_host("http://hv1.example:5985/wsman", transport), CREDS)
    assert d._protocol_kwargs["message_encryption"] == "always"
    d = HyperVDriver(make_host("https://hv1.example:5986/wsman", transport), CREDS)
    assert d._protocol_kwargs["message_encryption"] == "auto"


def test_certificate_validation_comes_from_the_host():
    assert HyperVDriver(make_host(), CREDS)._protocol_kwargs["server_cert_validation"] == "validate"
    assert HyperVDriver(make_host(validation="ignore"), CREDS)._protocol_kwargs["server_cert_validation"] == "ignore"
    kw = HyperVDriver(make_host(validation="/etc/quickmig/ca.pem"), CREDS)._protocol_kwargs
    assert kw["server_cert_validation"] == "validate" and kw["ca_trust_path"] == "/etc/quickmig/ca.pem"
    with pytest.raises(ConfigError):
        HyperVDriver(make_host(validation="maybe"), CREDS)


@pytest.mark.parametrize("endpoint,transport", [("ftp://hv1/wsman", "ntlm"), ("hv1:5985", "ntlm"),
                                                ("https://hv1.example:5986/wsman", "plaintext"),
                                                ("https://hv1.example:5986/wsman", "certificate")])
def test_unusable_endpoints_and_transports_are_config_errors(endpoint, transport):
    with pytest.raises(ConfigError):
        HyperVDriver(make_host(endpoint, transport), CREDS)


def test_file_hash_sends_the_path_and_the_copy_engines_scheme_as_json_and_returns_the_digest():
    from workers.model import chunks
    path = "D:\\VMs\\hv1\\vm\\Virtual Hard Disks\\a'b.vhdx.partial"
    proto = FakeProtocol([ok({"path": path, "scheme": chunks.SCHEME, "digest": "ab" * 32})])
    assert driver_with(proto).file_hash(path) == "ab" * 32
    assert scripts.parse(proto.sent_text()) == ("file_hash", {"path": path, "scheme": chunks.SCHEME})


def test_chunk_digests_asks_file_hash_for_a_range_and_refuses_a_bad_one_before_sending():
    from workers.model import chunks
    path = "D:\\VMs\\hv1\\vm\\d.vhdx.partial"
    proto = FakeProtocol([ok({"path": path, "scheme": chunks.SCHEME, "first": 2, "chunks": ["cd" * 32],
                              "digest": "ef" * 32})])
    driver = driver_with(proto)
    assert driver.chunk_digests(path, 2, 3) == ["cd" * 32]
    assert scripts.parse(proto.sent_text()) == ("file_hash", {"path": path, "scheme": chunks.SCHEME,
                                                              "first": 2, "count": 3})
    for first, count in ((-1, 1), (0, 0), (0, chunks.MAX_RANGE + 1), (True, 1), (0, "2")):
        with pytest.raises(ValueError, match="chunk_digests needs"):
            driver.chunk_digests(path, first, count)


def test_no_destructive_call_reaches_the_host_once_the_step_claim_could_have_lapsed():
    """The local fence: a thread whose step claim was last confirmed longer ago than its TTL
    less the margin sends no destructive script (the host acts only once stdin has come); a
    read still goes, and so does every call while the confirmation is fresh."""
    now = [100.0]
    clock = lease_deadline.LeaseClock(ttl_s=20, margin_s=3, now=lambda: now[0])
    clock.confirmed(100.0)
    fresh = FakeProtocol([ok({"vm": VM})])
    with lease_deadline.holding(clock):
        now[0] = 116.9  # 100 + 20 * (1 - 1e-3) - 3 = 116.98
        driver_with(fresh).save_vm(VM["id"])
        now[0] = 117.0
        for op, call in (("save_vm", lambda d: d.save_vm(VM["id"])),
                         ("start_vm", lambda d: d.start_vm(VM["id"])),
                         ("remove_vm", lambda d: d.remove_vm(VM["id"], "D:\\VMs\\hv1\\x.vmcx")),
                         ("delete_files", lambda d: d.delete_files(["D:\\VMs\\hv1\\a.vhdx"]))):
            late = FakeProtocol([ok({"vm": VM})])
            with pytest.raises(lease_deadline.LeaseExpired, match=f"{op} on hv1 not started"):
                call(driver_with(late))
            assert late.stdin == [], op
        read = FakeProtocol([ok({"vm": VM})])
        assert driver_with(read).describe_vm(vm_id=VM["id"]) == {"vm": VM}
    assert scripts.parse(fresh.sent_text())[0] == "save_vm"
    # outside a step (no claim held) nothing is checked
    assert driver_with(FakeProtocol([ok({"vm": VM})])).save_vm(VM["id"]) == {"vm": VM}


def test_every_operation_is_either_a_read_or_fenced_locally():
    """A new operation must be put on one side: only these leave a host as it was."""
    reads = {"list_vms", "describe_vm", "host_info", "wait_heartbeat", "file_hash", "hash_stream"}
    assert set(scripts.OPS) - driver_mod.DESTRUCTIVE_OPS == reads
    assert driver_mod.DESTRUCTIVE_OPS <= set(scripts.OPS)
