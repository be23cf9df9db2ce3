"""Host paths (D:\\VMs\\hv1\\...) and the rules every path from the network must pass.

Storage. A host has one or more storage folders, each the root of an SMB share: the first
(vm_root) is the folder `DIR/hosts/<host>/share/` (host path `<vm_root>\\a\\b.vhdx` <->
`share/a/b.vhdx`), each further one `DIR/hosts/<host>/shares/<share name>/`. Every path that
arrives from the network goes through `HostPaths.local`, which refuses anything outside
the storage folders (UNC, `\\\\?\\` and `\\\\.\\` paths included), `.`/`..`/empty components, characters
Windows reserves (a colon names an NTFS alternate data stream), trailing dots/spaces (Windows
drops them, so they could alias another name), reserved device names (`NUL`, `COM1.txt`) and
symlink escapes. Windows would act on something other than the plain file each of these seems
to name ("Naming Files, Paths, and Namespaces", "File Streams"); the emulator cannot show
what, so it refuses them (docs/hyperv-rules.md, "Files and paths").

Host paths compare without case, as on Windows: `HostPaths.local` matches an existing file
or folder whatever the case of the request.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lab.emulator.errors import OpError, fqid, invalid_arg

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BAD_PATH_CHARS = set('<>"/|?*:') | {chr(i) for i in range(32)}
# Reserved device names, also with an extension (NUL.txt is NUL) and with the superscript digits
_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | \
    {f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789\u00b9\u00b2\u00b3"}


def is_guid(s: object) -> bool:
    return isinstance(s, str) and bool(_GUID.match(s))


def parent_folder(host_path: str) -> str:
    return host_path.rsplit("\\", 1)[0]


def leaf_name(host_path: str) -> str:
    return host_path.rsplit("\\", 1)[-1]


def same_path(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _bad_component(p: str) -> bool:
    return p in ("", ".", "..") or any(c in _BAD_PATH_CHARS for c in p) or p != p.rstrip(" .") or \
        p.split(".", 1)[0].rstrip(" ").upper() in _DEVICE_NAMES


class HostPaths:
    """Host paths (D:\\VMs\\hv1\\...) <-> files under this host's share folders."""

    def __init__(self, vm_root: str, share: Path, more: list[tuple[str, Path]] | None = None, *,
                 library: Path | None = None, elsewhere: Path | None = None):
        """`library`: the lab's library shares (`library/<server>/<share>/...` is
        `\\\\server\\share\\...`), `elsewhere`: this host's local files outside its storage
        (`elsewhere/C/Users/x/a.iso` is `C:\\Users\\x\\a.iso`); both only for what a DVD drive
        reads (`medium`), never for anything a script writes or deletes."""
        self.storage = [(vm_root.rstrip("\\"), Path(share))] + [(r.rstrip("\\"), Path(d)) for r, d in more or []]
        self.vm_root, self.share = self.storage[0]
        self.library, self.elsewhere = library, elsewhere

    def medium(self, host_path: object, unc_shares: list[str]) -> Path | None:
        """The local file a DVD drive's image path names on this host, for reading, or None when
        this host cannot reach it: a path in the storage (`local`); a UNC path
        `\\\\server\\share\\...` (a server, a share and plain components, no `..`) on a share
        this host reaches (`unc_shares`: host property); any other fully qualified local path
        (`elsewhere`)."""
        if not isinstance(host_path, str) or not host_path or len(host_path) > 1024:
            return None
        if self.is_under(host_path):
            try:
                return self.local(host_path, "GetVMDvdDrive")
            except OpError:
                return None
        if host_path.startswith("\\\\"):
            parts = host_path[2:].split("\\")
            if len(parts) < 3 or any(_bad_component(p) for p in parts) or self.library is None:
                return None
            share = "\\\\" + "\\".join(parts[:2])
            if not any(same_path(share, s) for s in unc_shares):
                return None
            top, rest = self.library / parts[0].lower() / parts[1].lower(), parts[2:]
        elif re.match(r"^[A-Za-z]:\\", host_path) and self.elsewhere is not None:
            rest = host_path[3:].split("\\")
            if any(_bad_component(p) for p in rest):
                return None
            top = self.elsewhere / host_path[0].upper()
        else:
            return None
        local = self._existing_spelling(top, rest)
        if not os.path.realpath(local).startswith(os.path.realpath(top) + os.sep):
            return None
        return local

    def _root_of(self, host_path: object) -> tuple[str, Path] | None:
        """The storage folder `host_path` is strictly inside (the innermost), or None."""
        if not isinstance(host_path, str):
            return None
        inside = [(r, d) for r, d in self.storage if host_path.lower().startswith(r.lower() + "\\")]
        return max(inside, key=lambda rd: len(rd[0]), default=None)

    def is_under(self, host_path: str) -> bool:
        return self._root_of(host_path) is not None

    def is_root(self, host_path: object) -> bool:
        """Whether `host_path` is one of the storage folders themselves."""
        return isinstance(host_path, str) and any(same_path(host_path.rstrip("\\"), r) for r, _ in self.storage)

    def root_dir(self, host_path: str) -> Path:
        """The local folder of a storage folder (`is_root`)."""
        return next(d for r, d in self.storage if same_path(host_path.rstrip("\\"), r))

    @property
    def roots(self) -> list[str]:
        return [r for r, _ in self.storage]

    def check_roots(self, roots: object, cmdlet: str) -> list[str]:
        """The `roots` argument of a script that deletes or writes: folders inside (or equal
        to) this host's storage, each a plain path; OpError otherwise."""
        if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and r for r in roots):
            raise invalid_arg("roots must be a non-empty list of host folders.", cmdlet)
        out = []
        for r in roots:
            r = r.rstrip("\\")
            if not self.is_root(r):
                try:
                    self.local(r, cmdlet)  # inside the storage, and a plain path
                except OpError as e:
                    raise OpError(f"Refused root {r}: it is not a folder quickmig may confine paths to "
                                  f"({e.message})", "InvalidArgument", "RootRefused", r) from None
            out.append(r)
        return out

    def confined(self, host_path: object, roots: list[str], cmdlet: str) -> Path:
        """`HostPaths.local`, strictly inside one of `roots`, and no link (a reparse point on
        Windows) below that root: the script's own check (hostpaths.ps1, Assert-QmPath)."""
        local = self.local(host_path, cmdlet)
        assert isinstance(host_path, str)
        root = next((r for r in roots if host_path.lower().startswith(r.lower() + "\\")), None)
        if root is None:
            raise OpError(f"Refused path {host_path}: it is outside the configured root(s) {', '.join(roots)}.",
                          "InvalidArgument", "PathRefused", host_path)
        below = len(host_path[len(root) + 1:].split("\\"))
        for p in [local, *local.parents][:below]:
            if p.is_symlink():
                raise OpError(f"Refused path {host_path}: {self.host(p)} is a reparse point (a link elsewhere).",
                              "InvalidArgument", "PathRefused", host_path)
        return local

    def local(self, host_path: object, cmdlet: str = "GetVM") -> Path:
        """The local file for a host path; OpError for anything not strictly inside vm_root."""
        if not isinstance(host_path, str) or not host_path:
            raise invalid_arg(f"Cannot validate argument: the path {host_path!r} is not a non-empty string.", cmdlet)
        if len(host_path) > 1024:
            raise invalid_arg("Cannot validate argument: the path is longer than 1024 characters.", cmdlet)
        found = self._root_of(host_path)
        if found is None:
            raise OpError(f"Access is denied. The path '{host_path}' is outside this host's virtual machine "
                          f"storage '{', '.join(self.roots)}'.", "PermissionDenied",
                          fqid("UnauthorizedAccess", cmdlet), host_path)
        root, top = found
        parts = host_path[len(root) + 1:].split("\\")
        if any(_bad_component(p) for p in parts):
            raise invalid_arg(f"The path '{host_path}' is not a valid file path "
                              f"(empty, '.' or '..' component, a character Windows reserves, a trailing dot or "
                              f"space, or a reserved device name).", cmdlet)
        local = self._existing_spelling(top, parts)
        real = os.path.realpath(local)
        if not real.startswith(os.path.realpath(top) + os.sep):
            raise OpError(f"Access is denied. The path '{host_path}' leaves this host's storage.",
                          "PermissionDenied", fqid("UnauthorizedAccess", cmdlet), host_path)
        return local

    def _existing_spelling(self, top: Path, parts: list[str]) -> Path:
        local = top
        for p in parts:  # Windows paths compare without case: use an existing entry's spelling
            cand = local / p
            if not os.path.lexists(cand) and local.is_dir():
                low = p.lower()
                cand = next((local / e for e in sorted(os.listdir(local)) if e.lower() == low), cand)
            local = cand
        return local

    def host(self, local: Path) -> str:
        for root, top in sorted(self.storage, key=lambda rd: -len(str(rd[1]))):
            try:
                rel = Path(local).relative_to(top)
            except ValueError:
                continue
            return root + "\\" + "\\".join(rel.parts)
        raise ValueError(f"{local} is in no storage folder of this host")


def storage_dir(lab_dir: Path, host: str, index: int, share: str) -> Path:
    """The local folder of a lab host's storage folder number `index` (its share's root)."""
    base = Path(lab_dir) / "hosts" / host
    return base / "share" if index == 0 else base / "shares" / share


def for_host(lab_dir: Path, host) -> HostPaths:
    """The HostPaths of an inventory host (workers.model.config.Host) of the lab in lab_dir."""
    dirs = [(s.path, storage_dir(lab_dir, host.name, i, s.share)) for i, s in enumerate(host.storage)]
    return HostPaths(dirs[0][0], dirs[0][1], dirs[1:])
