"""The emulated host's language, and what it reads in the PowerShell it is sent: every message
translated (docs/hyperv-rules.md, "Errors and languages"), Get-VM -Id's own error, the FIPS
policy and the output encoding ("Hashing, encodings and the WinRM shell")."""
from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from lab.emulator import messages, scriptfacts
from lab.emulator.errors import MissingVM, OpError, fips_refusal, get_vm_not_found
from lab.emulator.model import HyperVHost
from lab.emulator.wsman import clixml_error
from tests.unit import emulated
from workers.hyperv import driver, scripts
from workers.hyperv.errors import HyperVError, VMNotFound, error_from_stderr

EMULATOR = Path(messages.__file__).parent
# Not the host's words: the lab control API's own checks, test-injected faults, the client.
NOT_HOST_MESSAGES = {"hostprops.py", "faults.py", "client.py", "messages.py"}
NOT_HOST_FUNCTIONS = {"_check_new_vm", "_check_hardware"}
MESSAGE_CALLS = {"OpError": 0, "invalid_arg": 0, "WSManFault": 1, "_inc": 1, "append": 0}


# What the scripts said before (quickmig 0.1): the emulator must still answer them as a
# real host would, so a test run against that code fails the way a host would fail it.
OLD_GET_QMVM = """function Get-QmVM([string]$Id) {
    $vm = Get-VM -Id $Id
    if (-not $vm) {
        Write-Error -Message 'not found' -Category ObjectNotFound -ErrorId 'VMNotFound' -TargetObject $Id
    }
    $vm
}
"""
OLD_STOP_VM = "$vm = Get-VM -Id ([string]$Req.vm_id)\n"
OLD_HASHING = "    $outer = [System.Security.Cryptography.SHA256]::Create()\n"


def _sample(node: ast.expr) -> str | None:
    """A message expression with every value part replaced by a sample: what it can say."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else f"X{i}" for i, v in enumerate(node.values))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _sample(node.left), _sample(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, (ast.Call, ast.Attribute, ast.Name, ast.Subscript)):
        return "Xv"
    return None


def host_messages() -> list[tuple[str, int, str]]:
    """(file, line, sample) of every message the emulator's parts write as the host."""
    found = []
    for path in sorted(EMULATOR.glob("*.py")):
        if path.name in NOT_HOST_MESSAGES:
            continue
        tree = ast.parse(path.read_text())
        skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in NOT_HOST_FUNCTIONS
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in skip:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in MESSAGE_CALLS or len(node.args) <= MESSAGE_CALLS[name]:
                continue
            if name == "append" and getattr(node.func.value, "id", "") != "problems":
                continue
            arg = node.args[MESSAGE_CALLS[name]]
            if isinstance(arg, (ast.Name, ast.Attribute, ast.Call)):
                continue  # a message made elsewhere (and found there)
            text = _sample(arg)
            if text is not None:
                found.append((path.name, node.lineno, text))
    return found


def test_the_scan_finds_the_messages_it_should():
    found = {(f, t) for f, _, t in host_messages()}
    assert ("registry.py", "Cannot validate argument on parameter 'vm_id': it must be a VM id (GUID).") in found
    assert any(f == "vmimport.py" and t.startswith("Could not find Ethernet switch") for f, t in found)
    assert any(f == "wsman.py" and "OperationTimeout" in t for f, t in found)
    assert len(found) > 60


@pytest.mark.parametrize("where,line,sample", host_messages(), ids=lambda v: str(v)[:60])
def test_every_message_the_host_writes_has_its_german_words(where, line, sample):
    assert messages.known(sample), f"{where}:{line}: no entry in lab/emulator/messages.py CATALOG for {sample!r}"
    german = messages.translate(sample, "de-DE")
    assert german != sample


def test_messages_inside_messages_are_translated_too():
    text = ("Cannot register D:\\VMs\\hv2\\x.vmcx on this host: virtual hard disk 'D:\\a.vhdx' (in the chain of "
            "'D:\\b.avhdx') was not found; Ethernet switch 'Büro-Netz' was not found")
    german = messages.translate(text, "de-DE")
    assert german == ("D:\\VMs\\hv2\\x.vmcx kann auf diesem Host nicht registriert werden: die virtuelle Festplatte "
                      "'D:\\a.vhdx' (in der Kette von 'D:\\b.avhdx') wurde nicht gefunden; der Ethernet-Switch "
                      "'Büro-Netz' wurde nicht gefunden")
    state = get_vm_not_found("x").message
    assert messages.translate(state, "en-US") == state
    assert "Zustand" in messages.translate("'web' failed to change state. The operation cannot be performed while "
                                           "the object is in its current state. (Virtual machine ID 1, state Off)",
                                           "de-DE")
    assert messages.translate(MissingVM("0f8f").message, "de-DE") == \
        "Auf diesem Host gibt es keinen virtuellen Computer mit der ID 0f8f."


def test_an_unknown_message_goes_out_as_it_is_and_is_logged(caplog):
    assert messages.translate("something new", "de-DE") == "something new"
    assert "no translation" in caplog.text
    with pytest.raises(ValueError):
        messages.translate("x", "xx-XX")


def test_a_german_error_keeps_its_category_and_id_and_the_driver_reads_it():
    e = get_vm_not_found("0f8f")
    text = clixml_error(e.message, e.category, e.fqid, target=e.target, locale="de-DE")
    assert "In Zeile:1 Zeichen:1" in text and "At line" not in text and "unable to find" not in text
    err = error_from_stderr(text, "describe_vm")
    assert str(err) == 'Hyper-V konnte keinen virtuellen Computer mit der ID "0f8f" finden.'
    assert (err.category, err.fqid) == ("InvalidArgument",
                                        "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM")
    assert type(err) is HyperVError  # Get-VM's own error is no answer about the VM
    m = MissingVM("0f8f")
    err = error_from_stderr(clixml_error(m.message, m.category, m.fqid, m.target, locale="de-DE"), "describe_vm")
    assert type(err) is VMNotFound and "keinen virtuellen Computer" in str(err)


# -- what the scripts do ------------------------------------------------------------------

def test_get_vm_by_id_is_found_in_the_old_lookups_and_not_in_the_shipped_scripts():
    assert scriptfacts.facts_of_text(OLD_GET_QMVM).get_vm_by_id
    assert scriptfacts.facts_of_text(OLD_STOP_VM).get_vm_by_id
    assert not scriptfacts.facts_of_text("$vm = Get-VM -Id $vm.Id  # Get-VM -Id $Id\n").get_vm_by_id
    for op in scripts.ops():
        assert not scriptfacts.of(op).get_vm_by_id, op


def test_managed_sha256_is_found_in_code_but_not_in_comments():
    assert scriptfacts.facts_of_text(OLD_HASHING).managed_sha256 == "Create"
    assert scriptfacts.facts_of_text("$h = New-Object System.Security.Cryptography.SHA256Managed\n").managed_sha256
    assert scriptfacts.facts_of_text("(Get-FileHash -LiteralPath $p).Hash\n").managed_sha256
    assert scriptfacts.facts_of_text("# not [SHA256]::Create() nor Get-FileHash\n$x = 'a#b'\n").managed_sha256 is None
    for op in scripts.ops():
        assert scriptfacts.of(op).managed_sha256 is None, op


def encoded(bootstrap: str) -> str:
    return "powershell.exe -NoProfile -EncodedCommand " + base64.b64encode(bootstrap.encode("utf-16-le")).decode()


def test_utf8_output_comes_only_from_a_command_line_that_sets_it():
    assert scriptfacts.writes_utf8(driver.POWERSHELL_COMMAND)
    assert scriptfacts.writes_utf8(encoded("[Console]::InputEncoding = [Console]::OutputEncoding = "
                                           "New-Object System.Text.UTF8Encoding; & $x"))
    assert scriptfacts.writes_utf8(encoded("[Console]::OutputEncoding = [System.Text.Encoding]::UTF8"))
    assert not scriptfacts.writes_utf8(encoded("$ProgressPreference = 'SilentlyContinue'; & $x"))
    assert not scriptfacts.writes_utf8(encoded("# [Console]::OutputEncoding = [Text.Encoding]::UTF8\n& $x"))
    assert not scriptfacts.writes_utf8("powershell -NoProfile -NonInteractive -Command -")


# -- the model answers by them ------------------------------------------------------------

@pytest.fixture
def host(tmp_path, monkeypatch):
    (tmp_path / "quickmig.toml").write_text(emulated.config({"hv1": "D:\\VMs\\hv1"}))
    h = HyperVHost(tmp_path, "hv1", "D:\\VMs\\hv1", locale="de-DE")
    yield h
    h.shutdown()


def test_a_missing_vm_is_the_scripts_own_answer_or_get_vms_error_by_how_the_script_looks(host, monkeypatch):
    with pytest.raises(MissingVM) as e:
        host.run("save_vm", {"vm_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})
    assert (e.value.category, e.value.fqid) == ("ObjectNotFound", "VMNotFound,Get-QmVM")
    monkeypatch.setattr(scriptfacts, "of", lambda op: scriptfacts.facts_of_text(OLD_GET_QMVM))
    with pytest.raises(OpError) as e:
        host.run("save_vm", {"vm_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})
    assert (e.value.category, e.value.fqid) == ("InvalidArgument",
                                                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM")


def test_a_fips_host_refuses_a_script_that_makes_a_managed_sha256(host, monkeypatch):
    vm = host.create_vm("fips", memory_mb=1, disk_mb=1, write_rate_kbps=0, start=False)["vm"]
    disk = vm["disks"][0]["path"]
    host.set_props({"fips": True})
    assert host.run("file_hash", {"path": disk, "scheme": "sha256-chunks-8MiB"})["digest"]
    assert host.run("file_hash", {"path": disk, "scheme": "sha256"})["digest"]
    monkeypatch.setattr(scriptfacts, "of", lambda op: scriptfacts.facts_of_text(OLD_HASHING))
    with pytest.raises(OpError) as e:
        host.run("file_hash", {"path": disk, "scheme": "sha256"})
    assert e.value.message == fips_refusal("Create").message
    assert (e.value.category, e.value.fqid) == ("NotSpecified", "InvalidOperationException")
    host.set_props({"fips": False})
    assert host.run("file_hash", {"path": disk, "scheme": "sha256"})["digest"]
    with pytest.raises(OpError):
        host.set_props({"fips": "yes"})
