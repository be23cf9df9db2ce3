"""The emulated Hyper-V host as a real process, driven over WinRM by pywinrm's Protocol."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError
from winrm.protocol import Protocol

from lab.emulator.client import EmulatorClient, EmulatorClientError
from lab.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "labadmin", "lab-Passw0rd!"


def scripts_module():
    try:
        mod = importlib.import_module("workers.hyperv.scripts")
    except ImportError:
        return None
    return mod if hasattr(mod, "render") and hasattr(mod, "parse") else None


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lab = tmp_path_factory.mktemp("emulab")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/wsman"
    (lab / "quickmig.toml").write_text(f"""redis_url = "redis://127.0.0.1:1/0"
credentials_file = "credentials.toml"
[hosts.hv1]
winrm_endpoint = "{endpoint}"
winrm_transport = "basic"
vm_root = 'D:\\VMs\\hv1'
smb_server = "127.0.0.1"
smb_share = "hv1"
""")
    (lab / "credentials.toml").write_text(f"""[default]
winrm_username = "{USER}"
winrm_password = "{PASSWORD}"
smb_username = "root"
smb_password = "unused"
""")
    (lab / "credentials.toml").chmod(0o600)
    log = open(lab / "hv1.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lab.emulator", "--lab-dir", str(lab), "--host", "hv1"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    client = EmulatorClient(endpoint, USER, PASSWORD)
    try:
        try:
            client.wait_ready(10)
        except TimeoutError:
            pytest.fail("emulator did not start:\n" + (lab / "hv1.log").read_text()[-3000:])
        yield {"endpoint": endpoint, "client": client, "lab": lab, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def protocol(endpoint: str, password: str = PASSWORD, op_timeout: int = 2) -> Protocol:
    return Protocol(endpoint, transport="basic", username=USER, password=password,
                    operation_timeout_sec=op_timeout, read_timeout_sec=op_timeout + 5,
                    ca_trust_path=None, proxy=None)


def run_text(p: Protocol, text: str, command: str | None = None) -> tuple[int, str, str]:
    """Run `text` as the driver does: powershell.exe with the driver's bootstrap on the
    command line (which makes it write UTF-8), or with `command`."""
    from workers.hyperv.driver import POWERSHELL_COMMAND
    shell = p.open_shell(codepage=65001)
    try:
        cid = p.run_command(shell, command or POWERSHELL_COMMAND)
        p.send_command_input(shell, cid, text.encode("utf-8"), end=True)
        out, err, code = p.get_command_output(shell, cid)
        p.cleanup_command(shell, cid)
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    finally:
        p.close_shell(shell)


def run_op(p: Protocol, op: str, args: dict) -> tuple[int, dict | None, str]:
    scripts = scripts_module()
    code, out, err = run_text(p, scripts.render(op, args))
    return code, (json.loads(out) if code == 0 else None), err


needs_scripts = pytest.mark.skipif(scripts_module() is None, reason="workers.hyperv.scripts is not there yet")


def test_wrong_password_is_refused_with_401(emulator):
    with pytest.raises(InvalidCredentialsError):
        protocol(emulator["endpoint"], password="wrong").open_shell()
    with pytest.raises(EmulatorClientError) as e:
        EmulatorClient(emulator["endpoint"], USER, "wrong").ping()
    assert e.value.status == 401


def test_receive_times_out_with_the_fault_pywinrm_retries(emulator):
    p = protocol(emulator["endpoint"], op_timeout=1)
    shell = p.open_shell(codepage=65001)
    cid = p.run_command(shell, "powershell -NoProfile -NonInteractive -Command -")
    with pytest.raises(WinRMOperationTimeoutError):  # stdin never closed: the command is still running
        p.get_command_output_raw(shell, cid)
    p.cleanup_command(shell, cid)
    p.close_shell(shell)


def test_lab_api_creates_a_running_vm_and_reports_state(emulator):
    client: EmulatorClient = emulator["client"]
    vm = client.create_vm("api vm", memory_mb=1, disk_mb=1, write_rate_kbps=64)
    assert vm["state"] == "Running"
    state = client.state()
    assert state["host"] == "hv1" and vm["id"] in [v["id"] for v in state["vms"]]
    with pytest.raises(EmulatorClientError) as e:
        client.create_vm("", memory_mb=1)
    assert e.value.status == 400


@needs_scripts
def test_list_and_describe_round_trip_with_any_name(emulator):
    client: EmulatorClient = emulator["client"]
    name = "db 'prod'; Remove-VM * -Force; # ünïcødé"
    vm = client.create_vm(name, memory_mb=1, disk_mb=1, write_rate_kbps=0)
    p = protocol(emulator["endpoint"])
    code, res, _ = run_op(p, "list_vms", {})
    assert code == 0 and {"id": vm["id"], "name": name, "state": "Running", "quickmig_checkpoints": []} in res["vms"]
    code, res, _ = run_op(p, "describe_vm", {"name": name})
    assert code == 0 and res["vm"]["id"] == vm["id"] and res["vm"]["name"] == name
    code, res, err = run_op(p, "describe_vm", {"vm_id": "00000000-0000-4000-8000-000000000000"})
    assert code == 1 and "#< CLIXML" in err and "ObjectNotFound" in err


@needs_scripts
def test_powershell_not_told_to_write_utf_8_writes_the_oem_code_page(emulator):
    # the harm the driver's bootstrap prevents: a non-ASCII name comes back as bytes a
    # UTF-8 reader cannot read, even in a shell opened with code page 65001
    client: EmulatorClient = emulator["client"]
    name = "Prüfstand Ü"
    client.create_vm(name, memory_mb=1, disk_mb=1, write_rate_kbps=0)
    p = protocol(emulator["endpoint"])
    text = scripts_module().render("describe_vm", {"name": name})
    code, out, _ = run_text(p, text, command="powershell -NoProfile -NonInteractive -Command -")
    assert code == 0 and json.loads(out)["vm"]["name"] == "Pr\ufffdfstand \ufffd"
    code, out, _ = run_text(p, text)
    assert code == 0 and json.loads(out)["vm"]["name"] == name


@needs_scripts
def test_a_tampered_script_is_refused(emulator):
    text = scripts_module().render("list_vms", {})
    tampered = text.replace("$ErrorActionPreference", "Remove-VM * -Force; $ErrorActionPreference", 1)
    assert tampered != text
    code, out, err = run_text(protocol(emulator["endpoint"]), tampered)
    assert code == 1 and out == "" and "#< CLIXML" in err


@needs_scripts
def test_faults_fail_delay_and_drop(emulator):
    client: EmulatorClient = emulator["client"]
    p = protocol(emulator["endpoint"], op_timeout=1)
    client.inject_fault("host_info", "fail", message="injected: no host info")
    code, _, err = run_op(p, "host_info", {})
    assert code == 1 and "injected: no host info" in err
    client.inject_fault("host_info", "delay", seconds=1.5)  # longer than OperationTimeout: polled again
    code, res, _ = run_op(p, "host_info", {})
    assert code == 0 and res["switches"] == ["lab-switch"]
    client.inject_fault("host_info", "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        run_op(p, "host_info", {})
    assert client.clear_faults() == 0
    assert run_op(protocol(emulator["endpoint"]), "host_info", {})[0] == 0


@needs_scripts
def test_an_outage_drops_every_wsman_request_while_the_control_api_answers(emulator):
    from workers.hyperv.driver import HyperVDriver
    from workers.hyperv.errors import TransportError
    from workers.model.config import load_config
    client: EmulatorClient = emulator["client"]
    cfg = load_config(emulator["lab"] / "quickmig.toml")
    driver = HyperVDriver(cfg.host("hv1"), cfg.credentials("hv1"), default_timeout_s=10)
    with pytest.raises(EmulatorClientError) as bad:
        client.outage(-1)
    assert bad.value.status == 400 and client.outage_remaining() == 0
    assert client.outage(30) > 29
    try:
        assert client.ping()["ok"] and 0 < client.outage_remaining() <= 30
        with pytest.raises(requests.exceptions.ConnectionError):
            run_op(protocol(emulator["endpoint"]), "host_info", {})
        with pytest.raises(TransportError) as e:
            driver.host_info()
        assert e.value.retryable
    finally:
        assert client.end_outage() == 0
    assert driver.host_info()["switches"] == ["lab-switch"]
    client.outage(1.5)
    deadline = time.monotonic() + 20
    while client.outage_remaining() > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert run_op(protocol(emulator["endpoint"]), "host_info", {})[0] == 0


def free_shells(endpoint: str) -> int:
    """How many more shells the host gives the account now (it allows MaxShellsPerUser)."""
    from winrm.exceptions import WSManFaultError
    p = protocol(endpoint)
    shells = []
    try:
        while len(shells) < 64:
            try:
                shells.append(p.open_shell(codepage=65001))
            except WSManFaultError:
                break
        return len(shells)
    finally:
        for sid in shells:
            p.close_shell(sid)


def test_a_warm_process_runs_its_operation_once_and_an_unused_one_is_ended(emulator):
    from workers.hyperv.driver import HyperVDriver
    from workers.model.config import load_config

    cfg = load_config(emulator["lab"] / "quickmig.toml")
    d = HyperVDriver(cfg.host("hv1"), cfg.credentials("hv1"))
    free = free_shells(emulator["endpoint"])
    assert 0 < free <= 30
    cold = d.run("list_vms")
    warm = d.warm("list_vms")
    assert warm.early == b""  # the ready line is not the operation's output
    assert d.run("list_vms", warm=warm) == cold
    with pytest.raises(ValueError, match="used already"):
        d.run("list_vms", warm=warm)
    other = d.warm("list_vms")
    with pytest.raises(ValueError, match="cannot run describe_vm"):
        d.run("describe_vm", {"name": "x"}, warm=other)
    other.close()
    unused = d.warm("file_hash")
    unused.close()
    unused.close()  # once is enough
    assert free_shells(emulator["endpoint"]) == free  # every shell used or warmed is gone
