"""What the emulator reads in the PowerShell it is sent, to fail where a real host would.

The emulator does not run PowerShell: it carries out each operation on its model. Where the
outcome on a real host depends on how a script does something, not only on what it asks
for, the emulator looks at the shipped script's text (`workers.hyperv.scripts.load`, the
only text it accepts) and at the command line powershell.exe was started with:

- `ScriptFacts.get_vm_by_id`: the script looks up the VM it was asked about with
  `Get-VM -Id`. For an id the host does not have, Get-VM throws its own error (category
  InvalidArgument, FullyQualifiedErrorId `InvalidParameter,...GetVM`, worded in the host's
  language) under `$ErrorActionPreference = 'Stop'`, before any "not found" branch of the
  script could run.
- `ScriptFacts.managed_sha256`: the script makes a SHA-256 that .NET Framework may implement
  as SHA256Managed (`[SHA256]::Create()`, `SHA256Managed`, `Get-FileHash`): a host that
  enforces FIPS-validated algorithms refuses it (hostprops `fips`).
- `start_facts(command_line).script_end`: the command line's -EncodedCommand reads the
  script from stdin only up to that line and leaves the rest of stdin to the script, as
  requests (the hash_stream process).
- `writes_utf8(command_line)`: the command line's -EncodedCommand sets
  [Console]::OutputEncoding to UTF-8; otherwise powershell.exe writes its stdout and stderr
  in the host's OEM code page.

Comments are not code: the text is read without them.
"""
from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass

from workers.hyperv import scripts

# Get-VM -Id applied to the id the script was asked about (the request's vm_id, or the $Id
# parameter of a lookup helper), not to the id of a VM the script already holds.
_GET_VM_BY_REQUESTED_ID = re.compile(
    r"\bGet-VM\s+-Id\s+(?:\$Id\b|\(\s*\[string\]\s*\$Req\.vm_id\s*\)|\[string\]\s*\$Req\.vm_id|\$Req\.vm_id)", re.I)
# (pattern, the .NET method that throws, as PowerShell names it in its error)
_MANAGED_SHA256 = (
    (re.compile(r"\[(?:System\.)?(?:Security\.)?(?:Cryptography\.)?SHA256\]::Create\(\s*\)", re.I), "Create"),
    (re.compile(r"\bSHA256Managed\b", re.I), ".ctor"),
    (re.compile(r"\bGet-FileHash\b", re.I), ".ctor"),
)
_ENCODED_COMMAND = re.compile(r"(?:^|\s)-(?:EncodedCommand|enc|ec|e)\s+([A-Za-z0-9+/=]+)", re.I)
_UTF8_OUTPUT = re.compile(
    r"\[(?:System\.)?Console\]::OutputEncoding\s*=\s*(?:\[(?:System\.)?Console\]::\w+Encoding\s*=\s*)*"
    r"(?:New-Object\s+(?:-TypeName\s+)?(?:System\.)?Text\.UTF8Encoding\b|\[(?:System\.)?Text\.Encoding\]::UTF8\b)",
    re.I)


def strip_comments(text: str) -> str:
    """PowerShell text without its line comments (a `#` outside quotes to the end of the line)."""
    out = []
    for line in text.split("\n"):
        quote = None
        for i, c in enumerate(line):
            if quote:
                if c == quote:
                    quote = None
            elif c in "'\"":
                quote = c
            elif c == "#":
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class ScriptFacts:
    get_vm_by_id: bool           # the requested VM is looked up with Get-VM -Id
    managed_sha256: str | None   # the .NET method that a FIPS host refuses, if the script calls one


def facts_of_text(text: str) -> ScriptFacts:
    code = strip_comments(text)
    managed = next((method for pattern, method in _MANAGED_SHA256 if pattern.search(code)), None)
    return ScriptFacts(get_vm_by_id=bool(_GET_VM_BY_REQUESTED_ID.search(code)), managed_sha256=managed)


@functools.cache
def of(op: str) -> ScriptFacts:
    """The facts of the shipped script of `op`."""
    return facts_of_text(scripts.load(op))


def _bootstrap(command_line: str) -> str:
    """The text powershell.exe runs from this command line's -EncodedCommand ('' if none)."""
    m = _ENCODED_COMMAND.search(command_line or "")
    if not m:
        return ""
    try:
        return strip_comments(base64.b64decode(m.group(1), validate=True).decode("utf-16-le"))
    except (binascii.Error, UnicodeDecodeError):
        return ""


def writes_utf8(command_line: str) -> bool:
    """Whether powershell.exe started with this command line writes its output in UTF-8."""
    return bool(_UTF8_OUTPUT.search(_bootstrap(command_line)))


_READS_STDIN = re.compile(r"\$input\b", re.I)
_IMPORTS_HYPERV = re.compile(r"\bImport-Module\s+(?:-Name\s+)?Hyper-V\b", re.I)
_WRITES_LINE = re.compile(r"\[(?:System\.)?Console\]::Out\.WriteLine\(\s*'([^']*)'\s*\)", re.I)


# The streaming bootstrap: the script is read line by line from $input up to an end line, and
# the rest of stdin is left to the script as $qmRequests (workers.hyperv.driver.STREAM_BOOTSTRAP).
_READS_SCRIPT_UNTIL = re.compile(
    r"\$input\.MoveNext\(\)\s*-and\s*\[string\]\s*\$input\.Current\s+-cne\s+'([^']+)'", re.I)
_LEAVES_REQUESTS = re.compile(r"\$qmRequests\s*=\s*\$input\b", re.I)


@dataclass(frozen=True)
class StartFacts:
    imports_hyperv: bool       # the Hyper-V module is loaded before the script is read
    ready_line: str | None     # a line written to stdout before the script is read
    script_end: str | None = None  # the script ends at this line; the lines after it are its requests


def start_facts(command_line: str) -> StartFacts:
    """What powershell.exe does with this command line before it reads its script from stdin."""
    boot = _bootstrap(command_line)
    m = _READS_STDIN.search(boot)
    before = boot[:m.start()] if m else boot
    line = _WRITES_LINE.search(before)
    until = _READS_SCRIPT_UNTIL.search(boot)
    streams = until is not None and _LEAVES_REQUESTS.search(boot) is not None
    return StartFacts(imports_hyperv=bool(_IMPORTS_HYPERV.search(before)),
                      ready_line=line.group(1) if line else None,
                      script_end=until.group(1) if streams and until else None)
