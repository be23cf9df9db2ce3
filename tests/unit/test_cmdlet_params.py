"""Every Hyper-V cmdlet call in the shipped scripts fits Microsoft's documented parameter sets.

tests/data/hyperv_cmdlets.json holds the documented parameter sets of the 39 Hyper-V cmdlets
and the 2 HgsClient cmdlets quickmig uses (Windows Server 2022 docs). A small PowerShell tokenizer below finds every
call of one of them in each script (through backtick line continuations, pipelines,
parentheses, subexpressions, script blocks and hashtables) and checks it:

- parameters are written in full or as a documented alias (no abbreviations), no splatting,
  no positional arguments: the checker must see every parameter;
- every parameter exists for that cmdlet (common parameters such as -ErrorAction are fine);
- one documented parameter set holds all of them, and all of that set's mandatory
  parameters (mandatory, or a switch with required_in_parameters_section) are given;
- nothing is piped into a Hyper-V cmdlet: the json does not say which parameter takes
  pipeline input, so such a call could not be checked;
- no other Hyper-V-looking cmdlet (Verb-VM*, Verb-VHD*) appears, and no "$(...)" hides
  inside a double-quoted string.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workers.hyperv import scripts

DATA = Path(__file__).resolve().parents[1] / "data" / "hyperv_cmdlets.json"
# SHA-256 of the file as taken from the documentation (tests/data/README.md): it is refreshed
# from there, never edited by hand
DATA_SHA256 = "093421133e6e6b5c4ef32e418bc38f3ddd68630d774bc241aba8145f2341a041"
CMDLETS: dict = json.loads(DATA.read_text(encoding="utf-8"))["cmdlets"]
BY_LOWER = {name.lower(): name for name in CMDLETS}
HYPERV_LIKE = re.compile(r"^(?:hyper-v\\)?[a-z]+-(?:vm|vhd)[a-z]*$", re.I)

COMMON = {  # about_CommonParameters: name -> aliases
    "Verbose": ["vb"], "Debug": ["db"], "ErrorAction": ["ea"], "WarningAction": ["wa"],
    "InformationAction": ["infa"], "ErrorVariable": ["ev"], "WarningVariable": ["wv"],
    "InformationVariable": ["iv"], "OutVariable": ["ov"], "OutBuffer": ["ob"], "PipelineVariable": ["pv"],
}
COMMON_SWITCHES = {"Verbose", "Debug"}


# -- a PowerShell tokenizer, enough for the shipped scripts ---------------------------------

@dataclass
class Tok:
    kind: str     # word param var splat str num op nl open close
    text: str
    line: int
    spaced: bool  # whitespace (or a line start) before it


@dataclass
class Group:
    opener: str   # "(" "$(" "@(" "{" "@{" "[" or "" for the whole script
    line: int
    spaced: bool
    items: list = field(default_factory=list)


CLOSER = {"(": ")", "$(": ")", "@(": ")", "{": "}", "@{": "}", "[": "]"}
_VAR = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z_][\w]*(?::[A-Za-z_]\w*)?|[?$^_])")
_WORD = re.compile(r"[A-Za-z_][\w\-\\.]*")
_PARAM = re.compile(r"-[A-Za-z_]\w*:?")
_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:[kKmMgGtTpP][bB])?")
_MEMBER = re.compile(r"\.[A-Za-z_]\w*")
_OPS2 = ("+=", "-=", "::", "..", "||", "&&", "2>", "*>")


def tokenize(src: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n, line, spaced = 0, len(src), 1, True

    def add(kind: str, text: str) -> None:
        nonlocal spaced
        toks.append(Tok(kind, text, line, spaced))
        spaced = False

    while i < n:
        c = src[i]
        if c in " \t":
            i += 1
            spaced = True
        elif c == "`" and src[i + 1:i + 2] in ("\n", "\r"):  # line continuation
            i += 2 if src[i + 1] == "\n" else 3
            line += 1
            spaced = True
        elif c == "\r":
            i += 1
        elif c == "\n":
            add("nl", "\n")
            line += 1
            i += 1
            spaced = True
        elif src.startswith("<#", i):
            j = src.index("#>", i)
            line += src.count("\n", i, j)
            i = j + 2
            spaced = True
        elif c == "#":
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith(("@'\n", '@"\n', "@'\r\n", '@"\r\n'), i):  # here-string
            q = src[i + 1]
            j = src.index("\n" + q + "@", i)
            add("str", src[i:j + 3])
            line += src.count("\n", i, j + 1)
            i = j + 3
        elif c == "'":
            j = i + 1
            while True:
                k = src.index("'", j)
                if src[k + 1:k + 2] == "'":
                    j = k + 2
                    continue
                break
            add("str", src[i:k + 1])
            line += src.count("\n", i, k)
            i = k + 1
        elif c == '"':
            j = i + 1
            while src[j] != '"' or src[j + 1:j + 2] == '"':
                j += 2 if src[j] == "`" or src[j] == '"' else 1
            add("dqstr", src[i:j + 1])
            line += src.count("\n", i, j)
            i = j + 1
        elif src.startswith(("$(", "@(", "@{"), i):
            add("open", src[i:i + 2])
            i += 2
        elif c in "({[":
            add("open", c)
            i += 1
        elif c in ")}]":
            add("close", c)
            i += 1
        elif c == "$":
            m = _VAR.match(src, i)
            if not m:
                raise SyntaxError(f"line {line}: cannot read variable at {src[i:i + 20]!r}")
            add("var", m.group(0))
            i = m.end()
        elif c == "@" and re.match(r"@[A-Za-z_]", src[i:i + 2]):
            m = re.compile(r"@\w+").match(src, i)
            add("splat", m.group(0))
            i = m.end()
        elif c == "-" and re.match(r"-[A-Za-z_]", src[i:i + 2]):
            m = _PARAM.match(src, i)
            text = m.group(0)
            if text.endswith(":") and src[m.end():m.end() + 1] == ":":
                text = text[:-1]
            add("param", text)
            i += len(text)
        elif c.isdigit() or (c == "-" and src[i + 1:i + 2].isdigit() and spaced):
            m = _NUM.match(src, i)
            add("num", m.group(0))
            i = m.end()
        elif c == "." and not spaced and _MEMBER.match(src, i):
            m = _MEMBER.match(src, i)
            add("member", m.group(0))
            i = m.end()
        elif c.isalpha() or c == "_":
            m = _WORD.match(src, i)
            text = m.group(0).rstrip(".")
            add("word", text)
            i += len(text)
        else:
            op = src[i:i + 2] if src.startswith(_OPS2, i) else c
            add("op", op)
            i += len(op)
    return toks


def build(toks: list[Tok]) -> Group:
    root = Group("", 0, True)
    stack = [root]
    for t in toks:
        if t.kind == "open":
            g = Group(t.text, t.line, t.spaced)
            stack[-1].items.append(g)
            stack.append(g)
        elif t.kind == "close":
            if len(stack) == 1 or CLOSER[stack[-1].opener] != t.text:
                raise SyntaxError(f"line {t.line}: unbalanced {t.text!r}")
            stack.pop()
        else:
            stack[-1].items.append(t)
    if len(stack) != 1:
        raise SyntaxError(f"line {stack[-1].line}: {stack[-1].opener!r} is never closed")
    return root


# -- finding and checking Hyper-V cmdlet calls ------------------------------------------------

@dataclass
class Call:
    cmdlet: str
    params: list[str]
    line: int


def is_tok(node, kind: str, text: str | None = None) -> bool:
    return isinstance(node, Tok) and node.kind == kind and (text is None or node.text == text)


def split_statements(items: list) -> list[list]:
    out: list[list] = [[]]
    for it in items:
        if is_tok(it, "nl") or is_tok(it, "op", ";"):
            cur = out[-1]
            if is_tok(it, "nl") and cur and isinstance(cur[-1], Tok) and cur[-1].kind == "op" \
                    and cur[-1].text in ("|", ",", "=", "+="):
                continue  # the statement goes on on the next line
            if cur:
                out.append([])
            continue
        out[-1].append(it)
    return [s for s in out if s]


def split_pipeline(statement: list) -> list[list]:
    out: list[list] = [[]]
    for it in statement:
        if is_tok(it, "op", "|"):
            out.append([])
        else:
            out[-1].append(it)
    return out


def units(nodes: list) -> list[list]:
    """Arguments as PowerShell sees them: runs of nodes with no whitespace between them."""
    out: list[list] = []
    for nd in nodes:
        if not out or nd.spaced:
            out.append([nd])
        else:
            out[-1].append(nd)
    return out


def _names(cmdlet: str) -> dict[str, str]:
    """lowercase spelling -> canonical parameter name: full names and documented aliases only."""
    info = CMDLETS[cmdlet]
    names: dict[str, str] = {}
    for s in info["parameter_sets"]:
        for p in s["parameters"]:
            names[p["name"].lower()] = p["name"]
            for a in p.get("aliases", []):
                names[a.lower()] = p["name"]
    for alias, target in info.get("aliases", {}).items():
        names.setdefault(alias.lower(), target)
    for name, aliases in COMMON.items():
        names[name.lower()] = name
        for a in aliases:
            names[a] = name
    return names


def _switches(cmdlet: str) -> set[str]:
    return {p["name"] for s in CMDLETS[cmdlet]["parameter_sets"] for p in s["parameters"]
            if p["type"] == "switch"} | COMMON_SWITCHES


def _mandatory(pset: dict) -> set[str]:
    return {p["name"] for p in pset["parameters"]
            if p["mandatory"] or (p["type"] == "switch" and p.get("required_in_parameters_section"))}


def check_call(cmdlet: str, args: list, line: int, problems: list[str]) -> Call:
    where = f"line {line}: {cmdlet}"
    names, switches = _names(cmdlet), _switches(cmdlet)
    given: list[str] = []
    us = units(args)
    k = 0
    while k < len(us):
        u = us[k]
        first = u[0]
        k += 1
        if is_tok(first, "splat"):
            problems.append(f"{where}: splatting ({first.text}) hides its parameters; name each one")
            continue
        if not is_tok(first, "param"):
            shown = first.text if isinstance(first, Tok) else first.opener + "...)"
            problems.append(f"{where}: positional argument {shown!r}; name the parameter")
            continue
        raw = first.text[1:].rstrip(":")
        canon = names.get(raw.lower())
        if canon is None:
            problems.append(f"{where}: -{raw} is not a documented parameter or alias "
                            "(abbreviations are not allowed)")
            if k < len(us) and not is_tok(us[k][0], "param"):
                k += 1  # skip what was probably its value
            continue
        given.append(canon)
        if first.text.endswith(":"):
            if len(u) == 1:
                problems.append(f"{where}: -{raw}: has no value")
            continue
        if len(u) > 1:
            problems.append(f"{where}: write a space after -{raw}")
            continue
        if canon in switches:
            continue
        if k >= len(us) or is_tok(us[k][0], "param"):
            problems.append(f"{where}: -{raw} needs a value")
            continue
        k += 1
        while True:  # a comma-separated array value
            if is_tok(us[k - 1][-1], "op", ",") and k < len(us):
                k += 1
            elif k < len(us) and is_tok(us[k][0], "op", ","):
                k += 2 if len(us[k]) == 1 else 1
            else:
                break
    dupes = sorted({p for p in given if given.count(p) > 1})
    if dupes:
        problems.append(f"{where}: parameters given twice: {dupes}")
    specific = set(given) - set(COMMON)
    sets = CMDLETS[cmdlet]["parameter_sets"]
    fits = [s for s in sets if specific <= {p["name"] for p in s["parameters"]} and _mandatory(s) <= specific]
    if not fits:
        detail = "; ".join(f"{s['name']} needs {sorted(_mandatory(s))}" for s in sets)
        problems.append(f"{where} with {sorted(specific)}: no documented parameter set takes exactly these "
                        f"with all its mandatory parameters ({detail})")
    return Call(cmdlet, given, line)


def analyze(group: Group, calls: list[Call], problems: list[str]) -> None:
    for statement in split_statements(group.items):
        for ei, element in enumerate(split_pipeline(statement)):
            for idx, node in enumerate(element):
                if not is_tok(node, "word"):
                    continue
                lower = node.text.lower()
                bare = lower[len("hyper-v\\"):] if lower.startswith("hyper-v\\") else lower
                if bare not in BY_LOWER:
                    if HYPERV_LIKE.match(node.text):
                        problems.append(f"line {node.line}: {node.text} is not one of the documented cmdlets "
                                        "in hyperv_cmdlets.json")
                    continue
                cmdlet = BY_LOWER[bare]
                prev = element[idx - 1] if idx else None
                if ei > 0 and idx == 0:
                    problems.append(f"line {node.line}: something is piped into {cmdlet}; the docs data cannot "
                                    "say which parameter takes it, so pass it as a named parameter")
                elif not (idx == 0 or is_tok(prev, "op", "=") or is_tok(prev, "op", "+=")
                          or is_tok(prev, "word", "return")):
                    problems.append(f"line {node.line}: {cmdlet} is not at the start of a command")
                calls.append(check_call(cmdlet, element[idx + 1:], node.line, problems))
                break  # the rest of the element is that call's arguments
        for node in statement:
            if isinstance(node, Group):
                analyze(node, calls, problems)
            elif is_tok(node, "dqstr") and "$(" in node.text:
                problems.append(f"line {node.line}: $(...) inside a double-quoted string is not checked; "
                                "build the string with + instead")


def check_script(text: str) -> tuple[list[Call], list[str]]:
    calls: list[Call] = []
    problems: list[str] = []
    analyze(build(tokenize(text)), calls, problems)
    return calls, problems


# -- the shipped scripts -------------------------------------------------------------------

EXPECTED = {  # cmdlets each script must be seen to call: proves the checker really looked
    "list_vms": {"Get-VM"},
    "describe_vm": {"Get-VM", "Get-VMHardDiskDrive", "Get-VHD", "Get-VMDvdDrive", "Get-VMSnapshot",
                    "Get-VMNetworkAdapter", "Get-VMIntegrationService", "Get-VMProcessor", "Get-VMSecurity",
                    "Get-VMKeyProtector", "ConvertTo-HgsKeyProtector", "Get-VMReplication", "Get-VMAssignableDevice",
                    "Get-VMGpuPartitionAdapter", "Get-VMFibreChannelHba"},
    "host_info": {"Get-VMHost", "Get-VMHostSupportedVersion", "Get-VMSwitch", "Get-VMHostNumaNode", "Get-HgsGuardian"},
    "checkpoint_vm": {"Checkpoint-VM", "Get-VMSnapshot", "Get-VM"},
    "save_vm": {"Set-VM", "Save-VM", "Get-VM"},
    "start_vm": {"Start-VM", "Set-VM", "Get-VM"},
    "wait_heartbeat": {"Get-VMIntegrationService", "Get-VM"},
    "compare_vm": {"Compare-VM", "Get-VMHardDiskDrive", "Set-VMHardDiskDrive", "Get-VMDvdDrive", "Set-VMDvdDrive",
                   "Set-VM"},
    "import_vm": {"Set-VHD", "Compare-VM", "Get-VMHardDiskDrive", "Set-VMHardDiskDrive", "Get-VMDvdDrive",
                  "Set-VMDvdDrive", "Import-VM", "Get-VM", "Get-VHD"},
    "remove_snapshots": {"Get-VMSnapshot", "Remove-VMSnapshot", "Get-VM"},
    "remove_vm": {"Get-VM", "Stop-VM", "Remove-VM", "Get-VMSnapshot", "Remove-VMSnapshot", "Get-VMHardDiskDrive",
                  "Get-VHD", "Get-VMDvdDrive"},
    "delete_files": {"Get-VM", "Get-VMSnapshot", "Get-VMHardDiskDrive", "Get-VHD", "Get-VMDvdDrive"},
    "reparent_disks": {"Set-VHD"},
    "stop_vm": {"Get-VM", "Remove-VMSavedState", "Stop-VM", "Set-VM"},
    "file_hash": set(),
    "hash_stream": set(),
}


def test_the_cmdlet_data_is_the_documented_file_unchanged():
    data = json.loads(DATA.read_text(encoding="utf-8"))
    assert len(data["cmdlets"]) == 41
    assert "winserver2022-ps/Hyper-V" in data["source"]
    assert hashlib.sha256(DATA.read_bytes()).hexdigest() == DATA_SHA256


@pytest.mark.parametrize("op", scripts.ops())
def test_every_hyperv_call_fits_a_documented_parameter_set(op):
    calls, problems = check_script(scripts.load(op))
    assert problems == [], f"{op}.ps1:\n" + "\n".join(problems)
    assert {c.cmdlet for c in calls} >= EXPECTED[op]


def test_the_scripts_use_only_documented_cmdlets_and_call_several():
    used = set()
    for op in scripts.ops():
        used |= {c.cmdlet for c in check_script(scripts.load(op))[0]}
    assert used <= set(CMDLETS)
    assert len(used) >= 20


def test_calls_with_a_compatibility_report_use_the_register_set_and_fix_the_planned_vm():
    """Validation compares exactly as the cutover's import does (Register, the fixes through the
    report, the report again); only the import realizes the planned VM."""
    def sequence(op):
        return [(c.cmdlet, sorted(c.params)) for c in check_script(scripts.load(op))[0]
                if c.cmdlet in ("Compare-VM", "Import-VM", "Set-VM")]
    fixes = [("Set-VM", ["SmartPagingFilePath", "SnapshotFileLocation", "VM"])]
    assert sequence("compare_vm") == fixes + [
        ("Compare-VM", ["Path", "Register"]),
        ("Compare-VM", ["CompatibilityReport"]),
    ]
    assert sequence("import_vm") == fixes + [
        ("Compare-VM", ["Path", "Register"]),
        ("Compare-VM", ["CompatibilityReport"]),
        ("Import-VM", ["CompatibilityReport"]),
    ]


# -- the checker itself: it must fail loudly on a violation --------------------------------

BAD = {
    "unknown parameter": ("Start-VM -VM $vm -Bogus", "-Bogus is not a documented"),
    "abbreviated parameter": ("Stop-VM -VM $vm -Turn", "-Turn is not a documented"),
    "missing mandatory parameter": ("Set-VHD -Path $p", "no documented parameter set"),
    "missing required switch": ("Compare-VM -Path $p -GenerateNewId", "no documented parameter set"),
    "parameters of two sets": ("Compare-VM -Path $p -Register -Copy", "no documented parameter set"),
    "name and object together": ("Save-VM -Name 'a' -VM $vm", "no documented parameter set"),
    "piped input": ("$vm | Start-VM", "piped into Start-VM"),
    "piped input after a newline": ("Get-VM -Id $i |\n    Remove-VM -Force", "piped into Remove-VM"),
    "splatting": ("$p = @{ VM = $vm }\nSave-VM @p", "splatting"),
    "positional argument": ("Start-VM $vm", "positional argument"),
    "value missing": ("Checkpoint-VM -VM $vm -SnapshotName", "-SnapshotName needs a value"),
    "bad parameter after a backtick continuation": ("Set-VHD -Path $p `\n    -ParentPath $q `\n    -Parent $r",
                                                    "-Parent is not a documented"),
    "inside parentheses": ("$x = (Get-VHD -Path $p -Recurse).ParentPath", "-Recurse is not a documented"),
    "inside a subexpression in a hashtable": ("$r = [ordered]@{ a = $(Get-VM -Id $i -Name 'x') }",
                                              "no documented parameter set"),
    "inside a script block": ("if ($x) {\n    foreach ($d in @(Get-VMDvdDrive -VMName)) { }\n}",
                              "-VMName needs a value"),
    "undocumented Hyper-V cmdlet": ("Resume-VM -VM $vm", "Resume-VM is not one of the documented"),
    "cmdlet as an argument": ("Write-Output Save-VM -VM $vm", "not at the start of a command"),
    "parameter given twice": ("Remove-VM -VM $vm -Force -Force", "given twice"),
    "subexpression in a double-quoted string": ('$m = "id $(Get-VM -Id $i)"', "double-quoted"),
    "module-qualified name is still checked": ("Hyper-V\\Stop-VM -VM $vm -Kill", "-Kill is not a documented"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_checker_reports_a_deliberate_violation(case):
    snippet, expected = BAD[case]
    calls, problems = check_script(snippet + "\n")
    assert problems, f"{case}: no problem found in {snippet!r}"
    assert any(expected in p for p in problems), problems


GOOD = [
    "Get-VM",
    "$vms = @(Get-VM | Where-Object { $_.Name -ceq $n })",
    "Get-VM -VMName 'web01'",
    "Stop-VM -VM $vm -TurnOff -Force:$true -ErrorAction Stop",
    "Set-VHD -Path $p `\n    -ParentPath $q",
    "Checkpoint-VM -VM $vm -CheckpointName $n -Passthru -WarningAction SilentlyContinue",
    "$r = Compare-VM -Path $p -Copy -GenerateNewId -VhdDestinationPath (Join-Path -Path $a -ChildPath 'b')",
    "foreach ($d in @(Get-VMHardDiskDrive -VM $report.VM)) { "
    "Set-VMHardDiskDrive -VMHardDiskDrive $d -Path $m[$d.Path] }",
    "$x = [string](Get-VHD -Path $p).ParentPath",
    "function f { return Get-VM -Id $i }",
    "<# Remove-VM -Bogus #> Get-VMSwitch # Save-VM -Nope\n$s = 'Start-VM -Wrong'",
    "$h = @'\nRemove-VM -Bogus\n'@",
]


@pytest.mark.parametrize("snippet", GOOD)
def test_the_checker_accepts_correct_calls(snippet):
    calls, problems = check_script(snippet + "\n")
    assert problems == []
