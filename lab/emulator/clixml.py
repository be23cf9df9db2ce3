"""CLIXML as Windows PowerShell 5.1 writes it to a redirected stderr over WinRM: the error
text of a failed operation and the progress records of a successful one.

The emulated hosts answer with exactly this text, so the driver's parser
(`workers.hyperv.errors`) is tested against the shape real hosts write, wrapped lines,
escapes and cut identifiers included.
"""
from __future__ import annotations

import re

from workers.hyperv.errors import CLIXML_MARKER, HOST_WIDTH, PS_NAMESPACE

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
                       width: int = HOST_WIDTH, position: str = "At line:{line} char:{char}") -> list[str]:
    """The lines of a terminating error as powershell.exe formats it (no CLIXML yet).
    `position` is the "where" line in the host's language ("In Zeile:{line} Zeichen:{char}");
    the CategoryInfo and FullyQualifiedErrorId labels are the same in every language."""
    cols = width - 1
    out: list[str] = []
    for i, msg_line in enumerate(message.split("\n") or [""]):
        if i == 0 and command:
            msg_line = f"{command} : {msg_line}"
        out.extend(_host_wrap(msg_line.rstrip("\r"), cols))
    code = snippet or command or "throw $_"
    out.extend(_host_wrap(position.format(line=line, char=char), cols))
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
                        width: int = HOST_WIDTH, progress: int = 0,
                        position: str = "At line:{line} char:{char}") -> str:
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
    position: the "At line:{line} char:{char}" line as the host's language words it.
    """
    lines = format_error_lines(message, category, fqid, target, command=command, exception=exception,
                               snippet=snippet, target_type=target_type, line=line, char=char, width=width,
                               position=position)
    objs = "".join(_progress_obj(i, "Preparing modules for first use.") for i in range(progress))
    strings = "".join(f'<S S="Error">{_encode(ln + chr(13) + chr(10))}</S>' for ln in lines)
    return f"{CLIXML_MARKER}\r\n{_OBJS_OPEN}{objs}{strings}</Objs>"
