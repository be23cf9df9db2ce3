"""One exception hierarchy for the Hyper-V driver, and the CLIXML that carries PowerShell errors.

powershell.exe started with -EncodedCommand and a redirected stderr (as over WinRM) writes
its error stream as CLIXML: a `#< CLIXML` line, then `<Objs>` documents in which every
line of the formatted error is one `<S S="Error">` string (line breaks escaped as
`_x000D__x000A_`), and progress records as `<Obj S="progress">` objects that mean nothing
for success or failure. `parse_clixml` reads that; `error_from_stderr` turns it into a
typed exception (the table in docs/hyperv-operations.md). The lab's emulator writes the
same text (`lab.emulator.clixml`), so the parser is tested against the shape Windows
PowerShell 5.1 really writes.

Nothing here reads the words of a message. A host shows its messages, and the line that
says where an error happened ("At line:1 char:1", "In Zeile:1 Zeichen:1"), in its own
display language; the CategoryInfo category and the FullyQualifiedErrorId are the same in
every language, so the exception class comes from those alone, and the message is kept
for people to read.
"""
from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from workers.model.errors import QuickmigError, Retryable

PS_NAMESPACE = "http://schemas.microsoft.com/powershell/2004/04"
CLIXML_MARKER = "#< CLIXML"
# Windows PowerShell formats an error for a host whose buffer is this wide (the width a
# WinRM shell's console host reports); each output line then holds at most width-1 chars,
# and a word too long for a line is cut there.
HOST_WIDTH = 120


class HyperVError(QuickmigError):
    """A Hyper-V operation failed. `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, op: str | None = None, host: str | None = None,
                 category: str | None = None, fqid: str | None = None,
                 lines: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.op = op
        self.host = host
        self.category = category          # CategoryInfo category, e.g. "ObjectNotFound"
        self.fqid = fqid                  # FullyQualifiedErrorId, e.g. "InvalidState,Microsoft...SaveVM"
        self.lines = list(lines or [])    # every error line PowerShell wrote


class VMNotFound(HyperVError):
    """No virtual machine with that name or id on this host."""


class AccessDenied(HyperVError):
    """The account may not do this (Hyper-V Administrators, file ACLs, WinRM permissions)."""


class AlreadyExists(HyperVError):
    """The object exists already (e.g. Import-VM -Register of a VM id the host has)."""


class InvalidVMState(HyperVError):
    """The VM is in a state that does not allow the operation (Save-VM of an Off VM, ...)."""


class ScriptMismatch(QuickmigError, ValueError):
    """A script text is not one of the shipped scripts with only its arguments line filled in
    (raised by workers.hyperv.scripts.parse, which the lab's emulator uses to refuse any
    other text)."""


class TransportError(HyperVError, Retryable):
    """WinRM could not carry the operation: connection refused or dropped, HTTP 401/5xx, WS-Man fault."""


class OperationTimeout(TransportError):
    """Our per-operation deadline passed before the host answered; the operation may still run there."""


# -- reading CLIXML -------------------------------------------------------------------

_ESCAPE_RE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_OBJS_RE = re.compile(r"<Objs\b.*?</Objs>", re.S)
_S_ERROR_RE = re.compile(r"""<S\s+S\s*=\s*["']Error["']\s*>(.*?)</S>""", re.S | re.I)


def _decode(s: str) -> str:
    """Undo PowerShell's serializer escapes: _x000D_ -> CR, _x005F_ -> '_', surrogate pairs joined."""
    out = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), s)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in out):
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return out


def _strip_eol(s: str) -> str:
    return s.rstrip("\r\n")


def _errors_in_doc(doc: str) -> list[str]:
    try:
        root = ET.fromstring(doc)
    except ET.ParseError:
        return [_strip_eol(_decode(html.unescape(m))) for m in _S_ERROR_RE.findall(doc)]
    found = []
    for el in root:
        tag = el.tag.rsplit("}", 1)[-1]
        if (el.get("S") or "").lower() != "error":
            continue  # progress, warning, verbose, information, output
        if tag == "S":
            found.append(_strip_eol(_decode(el.text or "")))
        elif tag == "Obj":  # a whole ErrorRecord object: use its ToString
            ts = el.find(f"{{{PS_NAMESPACE}}}ToString")
            if ts is None:
                ts = el.find("ToString")
            if ts is not None and ts.text:
                found.extend(_decode(ts.text).splitlines())
    return found


def parse_clixml(stderr: str | bytes) -> list[str]:
    """The error lines in a stderr text, in order: one string per `<S S="Error">` (line end removed).

    Progress, warning and verbose records are ignored, so progress-only stderr gives [].
    Plain text outside the CLIXML documents (a native command's own stderr) follows the
    CLIXML error lines, one entry per non-blank line.
    """
    if isinstance(stderr, (bytes, bytearray)):
        stderr = bytes(stderr).decode("utf-8", "replace")
    errors: list[str] = []
    rest = []
    pos = 0
    for m in _OBJS_RE.finditer(stderr):
        rest.append(stderr[pos:m.start()])
        errors.extend(_errors_in_doc(m.group(0)))
        pos = m.end()
    rest.append(stderr[pos:])
    other = []
    for chunk in rest:
        start = chunk.find("<Objs")
        if start >= 0:  # a document cut short (output lost mid-way): take what error strings it has
            errors.extend(_strip_eol(_decode(html.unescape(m))) for m in _S_ERROR_RE.findall(chunk[start:]))
            chunk = chunk[:start]
        for line in chunk.replace(CLIXML_MARKER, "").splitlines():
            if line.strip():
                other.append(line.rstrip())
    return errors + other


# -- from error lines to an exception -------------------------------------------------

# Where the error happened: "At line:1 char:1" in English, "In Zeile:1 Zeichen:1" in
# German, "At C:\\x.ps1:3 char:5" for a script file: two "<word>:<number>" pairs, whatever
# the words. It is the line just before the first "+ <code>" line.
_POSITION_RE = re.compile(r"^\S.*:\d+\s+\S+:\d+\s*$")
_CODE_LINE_RE = re.compile(r"^\+ ")
_CATEGORY_RE = re.compile(r"^\s*\+\s*CategoryInfo\s*:\s*([A-Za-z]+)\s*:")
_FQID_RE = re.compile(r"^\s*\+\s*FullyQualifiedErrorId\s*:\s*(.*)$")
_INFO_LINE_RE = re.compile(r"^\s*\+\s*(CategoryInfo|FullyQualifiedErrorId)\s*:")


def _join_wrapped(lines: list[str]) -> str:
    """Lines of a message as the host wrapped them, joined again.

    A line cut at a space keeps that space at its end; a word too long for a line is cut
    hard, leaving a line of exactly HOST_WIDTH - 1 characters. Other line ends are real.
    """
    text = ""
    prev = None
    for line in lines:
        if prev is not None and not prev.endswith(" ") and len(prev) != HOST_WIDTH - 1:
            text += "\n"
        text += line
        prev = line
    return "\n".join(part.rstrip() for part in text.split("\n")).strip()


def describe_stderr(stderr: str | bytes) -> tuple[str, str | None, str | None, list[str]]:
    """(message, category, fqid, all error lines) of a PowerShell error in stderr."""
    lines = parse_clixml(stderr)
    category = fqid = None
    message_lines: list[str] = []
    in_message = True
    i = 0
    while i < len(lines):
        line = lines[i]
        if _INFO_LINE_RE.match(line) or _CODE_LINE_RE.match(line) or (
                _POSITION_RE.match(line) and i + 1 < len(lines) and _CODE_LINE_RE.match(lines[i + 1])):
            in_message = False
        if in_message:
            message_lines.append(line)
        m = _CATEGORY_RE.match(line)
        if m and category is None:
            category = m.group(1)
        m = _FQID_RE.match(line)
        if m and fqid is None:
            parts = [m.group(1)]
            # A long id is cut into pieces (see format_clixml_error): glue them back.
            while i + 1 < len(lines) and lines[i + 1].strip() and lines[i + 1][:1].isspace() \
                    and not _INFO_LINE_RE.match(lines[i + 1]):
                i += 1
                parts.append(lines[i])
            fqid = re.sub(r"\s+", "", "".join(parts)) or None
        i += 1
    message = _join_wrapped(message_lines)
    if not message:
        message = next((ln.strip() for ln in lines if ln.strip()), "")
    return message, category, fqid, lines


def _error_id(fqid: str | None) -> str:
    """The error's own id: the FullyQualifiedErrorId before its first comma (what follows
    names the command that raised it: `VMNotFound,Get-QmVM`, `InvalidState,Microsoft...SaveVM`)."""
    return (fqid or "").split(",", 1)[0].strip()


def classify(category: str | None, fqid: str | None) -> type[HyperVError]:
    """The exception class for an error, by the table in docs/hyperv-operations.md (first
    match wins). Only the category and the FullyQualifiedErrorId count: a message is in the
    host's display language, so its words mean nothing to us."""
    ident = _error_id(fqid)
    if ident == "VMNotFound":  # the scripts' own "no VM with that id/name" (Get-QmVM, describe_vm)
        return VMNotFound
    if category == "PermissionDenied" or ident == "UnauthorizedAccess":
        return AccessDenied
    if category == "ResourceExists":
        return AlreadyExists
    if category == "InvalidOperation" and ident == "InvalidState":
        return InvalidVMState
    return HyperVError


def error_from_stderr(stderr: str | bytes, op: str, *, host: str | None = None,
                      exit_code: int | None = None) -> HyperVError:
    """The typed exception for a failed operation, from its stderr (CLIXML or plain text)."""
    message, category, fqid, lines = describe_stderr(stderr)
    if not message:
        code = "" if exit_code is None else f" (exit code {exit_code})"
        message = f"{op} failed{code} and PowerShell wrote no error text"
    cls = classify(category, fqid)
    return cls(message, op=op, host=host, category=category, fqid=fqid, lines=lines)
