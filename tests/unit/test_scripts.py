"""The operation scripts: shipped shape, render/parse round trip, tampered text refused."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workers.hyperv import scripts
from workers.hyperv.scripts import ARGS_PLACEHOLDER, ScriptMismatch

SCRIPT_DIR = Path(scripts.__file__).parent / "scripts"
OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "hyperv-operations.md"

NASTY_NAMES = [
    "x'; Remove-VM * -Force; '",
    'Überweisung "prod" 01',
    "ends the here-string?\n'@\nRemove-VM -Name * -Force\n@'",
    "'@",
    "a'@b",
    "$(Stop-Computer -Force)",
    "`\"; Remove-Item C:\\ -Recurse #",
    "tab\tand\r\ncrlf and \u2028 line separator and \x00 nul",
    "emoji \U0001F600 and 中文",
    "*",
    "__QUICKMIG_ARGS__",
]


def test_every_operation_of_the_contract_has_a_script():
    documented = re.findall(r"^\| `([a-z_]+)` \|", OPERATIONS_MD.read_text(), re.M)
    assert sorted(documented) == sorted(scripts.ops())
    assert sorted(p.stem for p in SCRIPT_DIR.glob("*.ps1")) == sorted(scripts.ops())


@pytest.mark.parametrize("op", scripts.ops())
def test_every_script_has_the_contract_shape(op):
    text = scripts.load(op)
    lines = text.split("\n")
    assert lines[:6] == [
        f"# quickmig-op: {op}",
        "$ErrorActionPreference = 'Stop'",
        "$ProgressPreference = 'SilentlyContinue'",
        "$Req = @'",
        ARGS_PLACEHOLDER,
        "'@ | ConvertFrom-Json",
    ]
    assert text.count(ARGS_PLACEHOLDER) == 1
    assert text.rstrip("\n").split("\n")[-1] == "$result | ConvertTo-Json -Compress -Depth 8"
    assert text.isascii()
    assert "\r" not in text and "\t" not in text


@pytest.mark.parametrize("op", scripts.ops())
def test_scripts_use_literal_paths_and_no_name_wildcards(op):
    text = scripts.load(op)
    code = "\n".join(ln.split("#", 1)[0] for ln in text.split("\n")[1:])
    for cmd in ("Test-Path", "Remove-Item", "Get-ChildItem", "Get-Item", "Get-Content", "Set-Content"):
        for m in re.finditer(rf"\b{cmd}\b[^\n]*", code):
            assert "-LiteralPath" in m.group(0), f"{op}: {m.group(0).strip()} should use -LiteralPath"
    assert not re.search(r"Get-VM\s+-(Name|VMName)\b", code), f"{op}: Get-VM -Name is a wildcard pattern"
    assert "Invoke-Expression" not in code and "iex " not in code


@pytest.mark.parametrize("op", scripts.ops())
def test_no_script_silences_an_error(op):
    """An error is the answer or it is reported; a clean-up that fails says what it left."""
    code = "\n".join(ln.split("#", 1)[0] for ln in scripts.load(op).split("\n")[1:])
    assert not re.search(r"-(ErrorAction|ea)\s*:?\s*['\"]?(SilentlyContinue|Ignore|Continue|0)\b", code, re.I), op
    assert "$ErrorActionPreference = 'Stop'" in code and code.count("$ErrorActionPreference") == 1, op


@pytest.mark.parametrize("op", ["compare_vm", "import_vm"])
def test_a_planned_vm_is_destroyed_unless_it_is_imported(op):
    """Compare-VM makes a planned VM that nothing removes but DestroySystem or Import-VM."""
    text = scripts.load(op)
    register = text.index("Compare-VM -Path $configPath -Register")
    assert "Remove-QmPlannedVM $plannedId" in text[register:]
    assert _function(text, "Remove-QmPlannedVM") and "'DestroySystem'" in _function(text, "Remove-QmPlannedVM")


def _function(text: str, name: str) -> str | None:
    m = re.search(rf"^function {re.escape(name)}\b.*?^}}$", text, re.M | re.S)
    return m.group(0) if m else None


@pytest.mark.parametrize("name", ["Get-QmVM", "Get-QmVMInfo", "Remove-QmPlannedVM", "Set-QmPlannedPaths"])
def test_shared_helpers_are_identical_in_every_script(name):
    bodies = {op: _function(scripts.load(op), name) for op in scripts.ops()}
    present = {op: body for op, body in bodies.items() if body}
    assert len(present) >= 2
    assert len(set(present.values())) == 1, f"{name} differs between {sorted(present)}"


VMINFO_OPS = ["describe_vm", "checkpoint_vm", "save_vm", "start_vm", "import_vm", "remove_snapshots"]


@pytest.mark.parametrize("op", VMINFO_OPS)
def test_scripts_that_report_a_vm_build_vminfo_with_the_shared_helper(op):
    text = scripts.load(op)
    assert _function(text, "Get-QmVMInfo")
    assert re.search(r"\bvm = (\(Get-QmVMInfo |\$info\b)", text)


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_render_then_parse_gives_back_the_same_arguments(name):
    args = {"name": name, "nested": {"paths": [name, "D:\\VMs\\hv1\\x.vhdx"]}, "n": 3, "b": True, "z": None}
    text = scripts.render("describe_vm", args)
    assert scripts.parse(text) == ("describe_vm", args)
    assert scripts.parse(text.encode("ascii")) == ("describe_vm", args)


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_a_vm_name_is_one_ascii_json_line_inside_the_here_string(name):
    text = scripts.render("describe_vm", {"name": name})
    shipped = scripts.load("describe_vm")
    assert text.isascii()
    assert len(text.split("\n")) == len(shipped.split("\n"))
    lines = text.split("\n")
    i = lines.index("$Req = @'")
    assert lines[i + 2] == "'@ | ConvertFrom-Json"
    assert json.loads(lines[i + 1]) == {"name": name}
    # Only the placeholder line changed.
    assert [ln for ln in lines if ln != lines[i + 1]] == [ln for ln in shipped.split("\n") if ln != ARGS_PLACEHOLDER]


@pytest.mark.parametrize("op", scripts.ops())
def test_every_op_round_trips_empty_and_typical_arguments(op):
    for args in ({}, {"vm_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "paths": ["a", "b"]}):
        assert scripts.parse(scripts.render(op, args)) == (op, args)


def test_render_refuses_unknown_ops_and_non_dict_arguments():
    with pytest.raises(ValueError, match="unknown"):
        scripts.render("format_c", {})
    with pytest.raises(TypeError):
        scripts.render("describe_vm", ["name", "x"])
    with pytest.raises(TypeError):
        scripts.render("describe_vm", '{"name": "x"}')
    with pytest.raises(ValueError):
        scripts.render("describe_vm", {"x": float("nan")})
    with pytest.raises(ValueError):
        scripts.load("../driver")


def _good() -> str:
    return scripts.render("remove_vm", {"vm_id": "abc", "turn_off": False, "delete_paths": []})


TAMPERED = {
    "extra statement after the arguments":
        lambda t: t.replace("'@ | ConvertFrom-Json", "'@ | ConvertFrom-Json; Stop-Computer", 1),
    "changed code": lambda t: t.replace("-Force", "-Force -Confirm:$false", 1),
    "appended line": lambda t: t + "Remove-VM -Name * -Force\n",
    "prepended line": lambda t: "Remove-VM -Name * -Force\n" + t,
    "missing trailing newline": lambda t: t[:-1],
    "second arguments line": lambda t: t.replace('"delete_paths": []}\n', '"delete_paths": []}\n{"x": 1}\n', 1),
    "arguments not an object":
        lambda t: t.replace('{"vm_id": "abc", "turn_off": false, "delete_paths": []}', '["abc"]'),
    "arguments not JSON": lambda t: t.replace('"turn_off": false', "'turn_off': $false"),
    "two objects on one line": lambda t: t.replace('"delete_paths": []}', '"delete_paths": []}{}'),
    "NaN in arguments": lambda t: t.replace('"turn_off": false', '"turn_off": NaN'),
    "placeholder left in": lambda t: scripts.load("remove_vm"),
    "header of another op": lambda t: t.replace("# quickmig-op: remove_vm", "# quickmig-op: delete_files", 1),
    "unknown op": lambda t: t.replace("# quickmig-op: remove_vm", "# quickmig-op: format_disk", 1),
    "no header": lambda t: t.split("\n", 1)[1],
    "CRLF line ends": lambda t: t.replace("\n", "\r\n"),
    "CR inside the arguments": lambda t: t.replace('"abc"', '"a\rbc"'),
    "non-ASCII in the arguments": lambda t: t.replace('"abc"', '"\u00fcber"'),
    "empty text": lambda t: "",
}


@pytest.mark.parametrize("how", sorted(TAMPERED))
def test_tampered_text_is_refused(how):
    text = TAMPERED[how](_good())
    assert text != _good()
    with pytest.raises(ScriptMismatch):
        scripts.parse(text)


def test_parse_refuses_what_is_not_text():
    with pytest.raises(ScriptMismatch):
        scripts.parse(None)
    with pytest.raises(ScriptMismatch):
        scripts.parse("\u00fc".encode("utf-8"))


def test_load_is_cached_and_matches_the_file_on_disk():
    assert scripts.load("save_vm") is scripts.load("save_vm")
    plain = [op for op in scripts.ops() if "# quickmig-include:" not in (SCRIPT_DIR / f"{op}.ps1").read_text()]
    assert plain and all(scripts.load(op) == (SCRIPT_DIR / f"{op}.ps1").read_text(encoding="ascii") for op in plain)


def test_an_include_line_is_replaced_by_the_shared_text():
    on_disk = (SCRIPT_DIR / "save_vm.ps1").read_text(encoding="ascii")
    shared = (SCRIPT_DIR / "include" / "vminfo.ps1").read_text(encoding="ascii")
    assert "# quickmig-include: vminfo\n" in on_disk
    assert scripts.load("save_vm") == on_disk.replace("# quickmig-include: vminfo\n", shared)
