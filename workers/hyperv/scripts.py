"""The operation scripts: load the shipped .ps1 files, fill in arguments, recognise them again.

Each operation of docs/hyperv-operations.md is one file `scripts/<op>.ps1`, shipped as package data.
`render` replaces the one line `__QUICKMIG_ARGS__` with the arguments as one line of JSON
(pure ASCII, never a newline), which lands inside a single-quoted here-string: a VM name
is data, never code. `parse` is the inverse, used by the lab emulator: it accepts only
the shipped text with that one line replaced by one JSON object, so the scripts a real
host would run are the scripts the tests send.
"""
from __future__ import annotations

import functools
import json
import re
from importlib import resources

from workers.hyperv.errors import ScriptMismatch

ARGS_PLACEHOLDER = "__QUICKMIG_ARGS__"
HEADER_PREFIX = "# quickmig-op: "
# A line `# quickmig-include: <name>` stands for the text of scripts/include/<name>.ps1:
# helpers several operations share are written once, and each host still receives one
# self-contained script.
_INCLUDE_RE = re.compile(r"^# quickmig-include: ([a-z_]+)\n", re.M)

# The operations of docs/hyperv-operations.md, in the order of its table.
OPS = (
    "list_vms",
    "describe_vm",
    "host_info",
    "checkpoint_vm",
    "save_vm",
    "start_vm",
    "wait_heartbeat",
    "compare_vm",
    "import_vm",
    "remove_snapshots",
    "remove_vm",
    "delete_files",
    "reparent_disks",
    "stop_vm",
    "file_hash",
    "hash_stream",
)

# The scripts that call no Hyper-V cmdlet: their powershell.exe never loads the module
# (tests/unit/test_host_costs.py checks this against the scripts' text).
NO_HYPERV_MODULE = frozenset({"file_hash", "hash_stream"})

_HEADER_RE = re.compile(r"# quickmig-op: ([a-z_]+)\Z")
# The lines around the placeholder: a single-quoted here-string piped to ConvertFrom-Json.
_HERE_OPEN = "$Req = @'"
_HERE_CLOSE = "'@ | ConvertFrom-Json"


def ops() -> list[str]:
    """Every operation name, one shipped script each."""
    return list(OPS)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"unknown Hyper-V operation {op!r} (known: {', '.join(OPS)})")


@functools.cache
def load(op: str) -> str:
    """The shipped text of `op`'s script (newlines are \\n, includes filled in), checked for
    the shape docs/hyperv-operations.md asks."""
    _check_op(op)
    folder = resources.files(__package__).joinpath("scripts")
    text = _INCLUDE_RE.sub(lambda m: folder.joinpath("include", f"{m.group(1)}.ps1").read_text(encoding="utf-8"),
                           folder.joinpath(f"{op}.ps1").read_text(encoding="utf-8"))
    lines = text.split("\n")
    problems = []
    if lines[0] != HEADER_PREFIX + op:
        problems.append(f"first line is not {HEADER_PREFIX + op!r}")
    if lines.count(ARGS_PLACEHOLDER) != 1 or text.count(ARGS_PLACEHOLDER) != 1:
        problems.append(f"{ARGS_PLACEHOLDER} must appear exactly once, as a line of its own")
    else:
        i = lines.index(ARGS_PLACEHOLDER)
        if lines[i - 1] != _HERE_OPEN or lines[i + 1] != _HERE_CLOSE:
            problems.append(f"{ARGS_PLACEHOLDER} must sit between {_HERE_OPEN!r} and {_HERE_CLOSE!r}")
    if not text.isascii():
        problems.append("script is not pure ASCII")
    if not text.endswith("\n"):
        problems.append("script does not end with a newline")
    if problems:
        raise RuntimeError(f"shipped script {op}.ps1 is malformed: " + "; ".join(problems))
    return text


def _split(op: str) -> tuple[str, str]:
    """(text before the placeholder line, text after it), each keeping its own newline."""
    before, after = load(op).split("\n" + ARGS_PLACEHOLDER + "\n")
    return before + "\n", "\n" + after


def render(op: str, args: dict) -> str:
    """The script for `op` with its arguments line filled in; the only text that may reach a host."""
    _check_op(op)
    if not isinstance(args, dict):
        raise TypeError(f"arguments of {op} must be a dict, not {type(args).__name__}")
    line = json.dumps(args, ensure_ascii=True, allow_nan=False)
    # json.dumps never writes a raw newline (ensure_ascii escapes U+2028/U+2029 too) and an
    # object starts with "{", so the line cannot end the here-string. Checked all the same.
    if "\n" in line or "\r" in line or not line.startswith("{"):
        raise AssertionError("JSON arguments line is not one line starting with '{'")
    before, after = _split(op)
    return before + line + after


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse(text: str | bytes) -> tuple[str, dict]:
    """(op, args) of a rendered script; raises ScriptMismatch for any other text."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise ScriptMismatch("script text is not pure ASCII") from None
    if not isinstance(text, str):
        raise ScriptMismatch(f"script text must be str or bytes, not {type(text).__name__}")
    first = text.split("\n", 1)[0]
    m = _HEADER_RE.match(first)
    if not m:
        raise ScriptMismatch(f"no '{HEADER_PREFIX}<op>' header line (first line is {first[:80]!r})")
    op = m.group(1)
    if op not in OPS:
        raise ScriptMismatch(f"unknown operation {op!r} in the header")
    before, after = _split(op)
    if len(text) < len(before) + len(after) + 2 or not text.startswith(before) or not text.endswith(after):
        raise ScriptMismatch(f"text of {op} differs from the shipped script")
    line = text[len(before):len(text) - len(after)]
    if "\n" in line or "\r" in line:
        raise ScriptMismatch(f"arguments of {op} are not exactly one line")
    if not line.isascii() or not line.startswith("{"):
        raise ScriptMismatch(f"arguments line of {op} is not one ASCII JSON object")
    try:
        args = json.loads(line, parse_constant=_reject_constant)
    except ValueError as e:
        raise ScriptMismatch(f"arguments line of {op} is not JSON: {e}") from None
    if not isinstance(args, dict):
        raise ScriptMismatch(f"arguments line of {op} is not a JSON object")
    return op, args
