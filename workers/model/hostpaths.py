"""Windows host paths as quickmig accepts them: a plain file path strictly inside one of a
host's configured roots, or nothing.

Paths reach quickmig from hosts (a VM's disk chain, save_vm's answer, a disk brought back
after a failed switchover) and from the migration record (the files a migration created).
Every path quickmig deletes, overwrites or grants rights on goes through `confine` at the
moment of use, here and again in the host's script (`scripts/include/hostpaths.ps1`), so
a forged or garbled path can never reach `Remove-Item`, `Set-VHD` or `icacls`.

The rules follow Windows' "Naming Files, Paths, and Namespaces" (MicrosoftDocs/win32
desktop-src/FileIO/naming-a-file.md) and "File Streams" (file-streams.md); each one refuses
a spelling under which Windows would act on something other than the plain file the path
seems to name:

- fully qualified (`D:\\...`): a drive-relative `D:x` or a rooted `\\x` depends on the
  process's current folder; no UNC (`\\\\server\\share`), no `\\\\?\\` (which turns off all
  parsing, so `..` and `.` are taken literally), no `\\\\.\\` (the device namespace);
- backslashes only (the Windows API converts `/` to `\\`, so `a/../b` is a way up);
- no empty, `.` or `..` component;
- none of the reserved characters `< > : " / \\ | ? *` nor 0-31 in a component: a colon names
  an NTFS alternate data stream (`disk.vhdx:s` is a stream of disk.vhdx, `dir::$INDEX_ALLOCATION`
  is the folder itself);
- no component ending in a space or a period (Windows drops them, so `disk.vhdx.` would be
  `disk.vhdx`);
- no reserved device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9 and the superscript-digit
  COM/LPT names), with or without an extension (`NUL.txt` is NUL);
- at most MAX_CHARS characters.

Comparisons ignore case, as Windows does ("Do not assume case sensitivity").
"""
from __future__ import annotations

import re

from workers.model.errors import QuickmigError

MAX_CHARS = 1024
_RESERVED_CHARS = frozenset('<>:"/\\|?*') | frozenset(chr(i) for i in range(32))
_DEVICE = re.compile(r"^(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])$",
                     re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:\\")


class HostPathError(QuickmigError, ValueError):
    """A host path that is not a plain file path inside the host's configured roots."""


def component_problem(part: str) -> str | None:
    """Why one path component is refused, or None."""
    if part in ("", ".", ".."):
        return f"it has an empty, '.' or '..' component ({part!r})"
    bad = sorted({c for c in part if c in _RESERVED_CHARS})
    if bad:
        what = "a colon (an NTFS alternate data stream)" if ":" in bad else "a character Windows reserves"
        return f"component {part!r} has {what}: {', '.join(repr(c) for c in bad)}"
    if part != part.rstrip(" ."):
        return f"component {part!r} ends in a space or a period, which Windows drops"
    if _DEVICE.match(part.split(".", 1)[0].rstrip(" ")):
        return f"component {part!r} is a reserved device name"
    return None


def path_problem(path: object) -> str | None:
    """Why `path` is not a plain, fully qualified local Windows path, or None."""
    if not isinstance(path, str) or not path:
        return "it is not a non-empty string"
    if len(path) > MAX_CHARS:
        return f"it is longer than {MAX_CHARS} characters"
    if path.startswith(("\\\\", "\\??\\")):
        return "it is a UNC or device-namespace path (\\\\server, \\\\?\\, \\\\.\\)"
    if not _DRIVE.match(path):
        return "it is not a fully qualified path (a drive letter, a colon and a backslash)"
    for part in path[3:].split("\\"):
        problem = component_problem(part)
        if problem:
            return problem
    return None


def unc_problem(path: object) -> str | None:
    """Why `path` is not a plain UNC file path `\\\\server\\share\\...\\file`, or None: a server
    and a share present, no `\\\\?\\` or `\\\\.\\` namespace, and every component (the server's
    and the share's too) passing the rules above (so no `..`). Read, never written: quickmig
    only leaves such a path where it is."""
    if not isinstance(path, str) or not path:
        return "it is not a non-empty string"
    if len(path) > MAX_CHARS:
        return f"it is longer than {MAX_CHARS} characters"
    if not path.startswith("\\\\") or path.startswith(("\\\\?\\", "\\\\.\\")):
        return "it is not a UNC path (\\\\server\\share\\...)"
    parts = path[2:].split("\\")
    if len(parts) < 3:
        return "it names no file below a server and a share (\\\\server\\share\\file)"
    for part in parts:
        problem = component_problem(part)
        if problem:
            return problem
    return None


def unc_share(path: str) -> str:
    """The `\\\\server\\share` of a UNC path that passed `unc_problem`."""
    return "\\\\" + "\\".join(path[2:].split("\\")[:2])


def root_problem(root: object) -> str | None:
    """Why `root` cannot confine anything (it must name a folder below a drive's root)."""
    if not isinstance(root, str):
        return "it is not a string"
    if re.fullmatch(r"[A-Za-z]:\\*", root):
        return "it is a whole drive; name a folder on it"
    return path_problem(root.rstrip("\\"))


def relative(path: object, root: str) -> str:
    """`path` relative to `root` (backslashes, no leading one); HostPathError unless it is a
    plain path strictly inside root."""
    problem = root_problem(root)
    if problem:
        raise HostPathError(f"root {root!r} cannot confine paths: {problem}")
    base = root.rstrip("\\") + "\\"
    problem = path_problem(path)
    if problem:
        raise HostPathError(f"{path!r} is refused: {problem}")
    assert isinstance(path, str)
    if not path.lower().startswith(base.lower()) or len(path) == len(base):
        raise HostPathError(f"{path!r} is not inside {root!r}")
    return path[len(base):]


def confine(path: object, roots: list[str]) -> str:
    """`path` as it is (already normalised: nothing in it may be resolved away) if it lies
    strictly inside one of `roots`; HostPathError otherwise."""
    problem = path_problem(path)
    if problem:
        raise HostPathError(f"{path!r} is refused: {problem}")
    for root in roots:
        try:
            relative(path, root)
        except HostPathError:
            continue
        return path  # type: ignore[return-value]
    raise HostPathError(f"{path!r} is outside the configured root(s) {', '.join(map(repr, roots))}")


def same(a: str, b: str) -> bool:
    """Whether two host paths name the same file (Windows compares without case)."""
    return a.lower() == b.lower()
