"""One exception hierarchy for the Hyper-V driver, and the CLIXML that carries PowerShell errors.

powershell.exe started with -EncodedCommand and a redirected stderr (as over WinRM) writes
its error stream as CLIXML: a `#< CLIXML` line, then `<Objs>` documents in which every
line of the formatted error is one `<S S="Error">` string (line breaks escaped as
`_x000D__x000A_`), and progress records as `<Obj S="progress">` objects that mean nothing
for success or failure. `parse_clixml` reads that; `error_from_stderr` turns it into a
typed exception (the table in OPERATIONS.md). `format_clixml_error` and
`format_clixml_progress` write the same text, for the lab emulator, so the parser is
tested against the shape Windows PowerShell 5.1 really writes.
"""
from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from workers.hyperv.scripts import ScriptMismatch  # noqa: F401  (re-exported)

PS_NAMESPACE = "http://schemas.microsoft.com/powershell/2004/04"
CLIXML_MARKER = "#< CLIXML"
# Windows PowerShell formats an error for a host whose buffer is this wide (the width a
# WinRM shell's console host reports); each output line then holds at most width-1 chars.
HOST_WIDTH = 120


class HyperVError(Exception):
    """A Hyper-V operation failed. `retryable` says whether trying again may help."""

    retryable = False

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


class TransportError(HyperVError):
    """WinRM could not carry the operation: connection refused or dropped, HTTP 401/5xx, WS-Man fault."""

    retryable = True


class OperationTimeout(TransportError):
    """Our per-operation deadline passed before the host answered; the operation may still run there."""

    retryable = True


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

_AT_RE = re.compile(r"^At (line:\d+|.*:\d+) char:\d+")
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
        if _AT_RE.match(line) or _INFO_LINE_RE.match(line):
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


def classify(message: str, category: str | None, fqid: str | None) -> type[HyperVError]:
    """The exception class for an error, by the table in OPERATIONS.md (first match wins)."""
    text = " ".join(message.split()).lower()
    if category == "ObjectNotFound" or "unable to find a virtual machine" in text:
        return VMNotFound
    if category == "PermissionDenied" or "access is denied" in text:
        return AccessDenied
    if category == "ResourceExists" or "already exists" in text:
        return AlreadyExists
    if category == "InvalidOperation" and (fqid or "").startswith("InvalidState"):
        return InvalidVMState
    return HyperVError


def error_from_stderr(stderr: str | bytes, op: str, *, host: str | None = None,
                      exit_code: int | None = None) -> HyperVError:
    """The typed exception for a failed operation, from its stderr (CLIXML or plain text)."""
    message, category, fqid, lines = describe_stderr(stderr)
    if not message:
        code = "" if exit_code is None else f" (exit code {exit_code})"
        message = f"{op} failed{code} and PowerShell wrote no error text"
    cls = classify(message, category, fqid)
    return cls(message, op=op, host=host, category=category, fqid=fqid, lines=lines)


# -- writing CLIXML, as Windows PowerShell 5.1 does (for the lab emulator) --------------

_NEEDS_ESCAPE_RE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)|[\x00-\x1f]")


def _encode(s: str) -> str:
    """PowerShell's string serialization: control characters and look-alike escapes as _xHHHH_."""
    s = _NEEDS_ESCAPE_RE.sub(lambda m: f"_x{ord(m.group(0)):04X}_", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _host_wrap(text: str, cols: int) -> list[str]:
    """Cut a line as the console host does: at the last space that fits (kept), else hard."""
    out = []
    while len(text) > cols:
        cut = text.rfind(" ", 0, cols)
        if cut <= 0:
            out.append(text[:cols])
            text = text[cols:]
        else:
            out.append(text[:cut + 1])
            text = text[cut + 1:]
    out.append(text)
    return out


def _ellipsize(s: str) -> str:
    """CategoryInfo shortens a long target name to its first and last 15 characters."""
    return s if len(s) <= 40 else s[:15] + "..." + s[-15:]


def _info_lines(label: str, value: str, width: int) -> list[str]:
    # PowerShell 5.1's error view cuts "+ <label> : <value>" into pieces of width-6 chars,
    # indents each by four spaces without a line break between them, and the host then
    # wraps the result like any other line.
    text = f"+ {label} : {value}"
    piece = width - 6
    joined = "".join("    " + text[i:i + piece] for i in range(0, len(text), piece))
    return _host_wrap(joined, width - 1)


def format_error_lines(message: str, category: str, fqid: str, target: str = "", *,
                       command: str = "", exception: str = "", snippet: str = "",
                       target_type: str = "String", line: int = 1, char: int = 1,
                       width: int = HOST_WIDTH) -> list[str]:
    """The lines of a terminating error as powershell.exe formats it (no CLIXML yet)."""
    cols = width - 1
    out: list[str] = []
    for i, msg_line in enumerate(message.split("\n") or [""]):
        if i == 0 and command:
            msg_line = f"{command} : {msg_line}"
        out.extend(_host_wrap(msg_line.rstrip("\r"), cols))
    code = snippet or command or "throw $_"
    out.extend(_host_wrap(f"At line:{line} char:{char}", cols))
    out.extend(_host_wrap("+ " + code, cols))
    out.append("+ " + " " * (char - 1) + "~" * max(1, min(len(code) - char + 1, cols - 2 - char)))
    if not exception:
        exception = "VirtualizationException" if command else "RuntimeException"
    shown_target = f"{_ellipsize(target)}:{target_type}" if target else ":"
    where = f"[{command}]" if command else "[]"
    out.extend(_info_lines("CategoryInfo         ", f"{category}: ({shown_target}) {where}, {exception}", width))
    out.extend(_info_lines("FullyQualifiedErrorId", fqid, width))
    out.append(" ")
    return out


_OBJS_OPEN = f'<Objs Version="1.1.0.1" xmlns="{PS_NAMESPACE}">'
_PROGRESS_TN = ('<TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
                '<T>System.Object</T></TN>')


def _progress_obj(ref: int, activity: str) -> str:
    tn = _PROGRESS_TN if ref == 0 else '<TNRef RefId="0" />'
    return (f'<Obj S="progress" RefId="{ref}">{tn}<MS><I64 N="SourceId">1</I64>'
            f'<PR N="Record"><AV>{_encode(activity)}</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC>'
            f'<T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>')


def format_clixml_progress(activity: str = "Preparing modules for first use.", count: int = 1) -> str:
    """stderr holding only progress records, as a successful command over WinRM often has."""
    objs = "".join(_progress_obj(i, activity) for i in range(count))
    return f"{CLIXML_MARKER}\r\n{_OBJS_OPEN}{objs}</Objs>"


def format_clixml_error(message: str, category: str, fqid: str, target: str = "", *,
                        command: str = "", exception: str = "", snippet: str = "",
                        target_type: str = "String", line: int = 1, char: int = 1,
                        width: int = HOST_WIDTH, progress: int = 0) -> str:
    """The exact stderr powershell.exe writes for a terminating error over WinRM (exit code 1).

    message: the error text (may hold "\\n", as Hyper-V's two-line messages do);
    category: the ErrorCategory name (ObjectNotFound, InvalidOperation, ...);
    fqid: the FullyQualifiedErrorId (e.g. "InvalidState,Microsoft.HyperV.PowerShell.Commands.SaveVM");
    target: the target object's text, shown in CategoryInfo (shortened past 40 characters);
    command: the cmdlet ("Save-VM"), which prefixes the message and names the activity;
    exception: the exception type name (default VirtualizationException for a command,
    else RuntimeException); snippet/line/char: the "At line:" position and code line;
    progress: how many progress records come first in the same document, as when a module
    was loaded on first use. width: the host's buffer width (lines hold width-1 chars).
    """
    lines = format_error_lines(message, category, fqid, target, command=command, exception=exception,
                               snippet=snippet, target_type=target_type, line=line, char=char, width=width)
    objs = "".join(_progress_obj(i, "Preparing modules for first use.") for i in range(progress))
    strings = "".join(f'<S S="Error">{_encode(ln + chr(13) + chr(10))}</S>' for ln in lines)
    return f"{CLIXML_MARKER}\r\n{_OBJS_OPEN}{objs}{strings}</Objs>"
