"""A migration's marker on its destination: the host's own copy of what the migration made there.

The record in Redis says which files a migration created on its destination
(`created_files`, written before the first byte of each). A Redis that loses the record (a
failover that lost the last writes, a FLUSHALL) would leave those files with nothing to say
whose they are, and quickmig deletes only what it can show it made. So every time
`created_files` grows, the same list goes to a small JSON file on the destination, in
`quickmig-markers\\<migration id>.json` under the host's first storage folder; an ended
migration (completed or rolled back) removes it. The orphan sweep
(`workers.steps.orphans`) reads the markers of migrations that have no record left.
"""
from __future__ import annotations

import json
import time

from workers.engine import context
from workers.smb import file_copy
from workers.smb.endpoint import SmbEndpoint
from workers.smb.errors import SmbError, SmbFileNotFoundError

MARKER_DIR = "quickmig-markers"
MARKER_SUFFIX = ".json"


def _where(host: str) -> tuple[SmbEndpoint, str]:
    """The SMB endpoint of the host's first storage folder, and that folder's host path."""
    storage = context.config().host(host).storage[0]
    return context.smb_endpoint(host).on_share(storage.share), storage.path


def rel_path(mid: str) -> str:
    return f"{MARKER_DIR}\\{mid}{MARKER_SUFFIX}"


def host_path(host: str, mid: str) -> str:
    return _where(host)[1].rstrip("\\") + "\\" + rel_path(mid)


def _listed(ep: SmbEndpoint, mid: str, lg=None) -> list[str]:
    """The files this migration's marker lists ([] when it has none, or one that is not its)."""
    try:
        doc = json.loads(file_copy.read_small(ep, rel_path(mid)))
    except SmbFileNotFoundError:
        return []
    except (ValueError, UnicodeDecodeError):
        if lg is not None:
            lg.warning("the marker %s is not a quickmig marker: not read", rel_path(mid))
        return []
    files = doc.get("files") if isinstance(doc, dict) and doc.get("mid") == mid else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return []
    return files


def write(rec: dict) -> None:
    """Put the record's identity and created_files on its destination, with every file the
    marker listed already: a Redis failover can hand a running copy back a record without the
    files it noted last, and the marker must still name them (it only grows)."""
    ep, _ = _where(rec["destination"])
    files = list(dict.fromkeys(_listed(ep, rec["id"]) + list(rec.get("created_files", []))))
    doc = {"mid": rec["id"], "vm": rec["vm"], "vm_id": rec["vm_id"], "source": rec["source"],
           "destination": rec["destination"], "created_at": rec["created_at"], "written_at": time.time(),
           "files": files}
    file_copy.write_small(ep, rel_path(rec["id"]), json.dumps(doc).encode())


def recover(rec: dict, lg) -> dict:
    """`created_files` again with what this migration's marker lists and the record does not:
    after a Redis failover lost the last notes, the copy would otherwise find its own files in
    the way and the rollback leave them on the destination. Returns the record."""
    try:
        listed = _listed(_where(rec["destination"])[0], rec["id"], lg)
    except SmbError as e:  # the rollback must not wait on it: what it leaves, the orphan sweep finds
        lg.warning("could not read this migration's marker on %s: %s", rec["destination"], e)
        return rec
    lost = [f for f in listed if f not in rec.get("created_files", [])]
    if not lost:
        return rec
    lg.warning("the record had lost %d of the files this migration made on %s (its marker lists them): "
               "noted again", len(lost), rec["destination"])

    def change(r):
        known = r.setdefault("created_files", [])
        known += [f for f in lost if f not in known]
    return context.store().update(rec["id"], change)


def remove(rec: dict) -> None:
    ep, _ = _where(rec["destination"])
    file_copy.delete_file(ep, rel_path(rec["id"]))


def read_all(host: str) -> tuple[list[dict], list[str]]:
    """The markers on a host, and the names of those that could not be read as one (said, never
    acted on: a marker quickmig cannot read proves nothing)."""
    ep, _ = _where(host)
    found, unreadable = [], []
    for name in file_copy.list_files(ep, MARKER_DIR, "*" + MARKER_SUFFIX):
        try:
            doc = json.loads(file_copy.read_small(ep, f"{MARKER_DIR}\\{name}"))
            if not (isinstance(doc, dict) and doc.get("mid") == name[:-len(MARKER_SUFFIX)]
                    and isinstance(doc.get("files"), list) and all(isinstance(f, str) for f in doc["files"])
                    and all(isinstance(doc.get(k), str) for k in ("vm", "vm_id", "source", "destination"))):
                raise ValueError("not a quickmig marker")
        except SmbFileNotFoundError:
            continue  # its migration ended meanwhile
        except (ValueError, UnicodeDecodeError):
            unreadable.append(name)
            continue
        found.append(doc)
    return found, unreadable
