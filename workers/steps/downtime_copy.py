"""The switchover's copy: between Save-VM and import, only the downtime's bytes.

`ready()` runs before Save-VM, while the VM still runs, and does every lookup that does
not need the VM saved: it opens the SMB connections the copy will use (sessions and tree
connects on both hosts) and refuses destination files that are already there (before any
downtime). `copy()` runs once the VM is saved: it looks again for files in the way,
records the paths in created_files (one update), then copies every file at once, each on
its own connection lane (`SmbEndpoint.lane`), so the small files, their verification by
the destination's hash and the memory file's data all overlap. Every file may use the
configured streams (the memory's are opened ahead; a large leaf opens more while the
memory copies). No copy checkpoints, copy slots or bandwidth limits here: a cutover
interrupted in the downtime rolls back rather than resume a copy, and the VM is down
while this runs. One update records every copied file at the end.

The destination's checks of what landed are ranges of chunks hashed there, all answered by
one process (`Hasher`, a `workers.hyperv.hash_stream.HashStream`) that the cutover starts
before Save-VM and ends once the copy is done or failed: no check starts a process inside
the downtime, whatever the size of the files.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from workers.coord.progress import CopyProgress
from workers.engine import context
from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError
from workers.hyperv.hash_stream import HashStream
from workers.model.file_plan import PathMap, downtime_files
from workers.smb import connections, file_copy
from workers.steps.transfer import (
    copy_verified,
    note_copied,
    note_created,
    refuse_existing,
)

log = logging.getLogger(__name__)


class Hasher:
    """The destination's hashing process for the downtime copy's checks, started on `__enter__`
    (before Save-VM). If it cannot be started, each check runs its own `file_hash` (slower,
    never wrong). `end()` ends it once the copy is done or failed; `__exit__` makes sure."""

    def __init__(self, driver: HyperVDriver):
        self.driver = driver
        self.stream: HashStream | None = None
        self._ending: threading.Thread | None = None

    def __enter__(self) -> Hasher:
        stream = HashStream(self.driver)
        try:
            stream.start()
            self.stream = stream
        except HyperVError as e:
            log.warning("hyperv host=%s: could not start the hashing process ahead: %s", self.driver.host.name, e)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ending is not None:
            self._ending.join()
        if self.stream is not None:
            self.stream.close()

    def end(self) -> None:
        """End the process and delete its shell, without waiting: the downtime goes on meanwhile
        (`__exit__` waits for it)."""
        if self.stream is not None and self._ending is None:
            self._ending = threading.Thread(target=self.stream.close, name="hasher-end", daemon=True)
            self._ending.start()

    def digests(self, path: str, first: int, count: int) -> list[str]:
        if self.stream is None:
            return self.driver.chunk_digests(path, first, count)
        return self.stream.chunk_digests(path, first, count)


class _Abandoned(Exception):
    """Another file of the downtime failed: the cutover rolls back, stop this one too."""


def _rank(path: str | None) -> int:
    """Lane order: the saved memory first (None: the memory file Save-VM is yet to write),
    then the leaf disks, then the small .vmcx and .vmgs."""
    if path is None or path.lower().endswith(".vmrs"):
        return 0
    return 2 if path.lower().endswith((".vmcx", ".vmgs")) else 1


class DowntimeCopy:
    def __init__(self, rec: dict, lg):
        self.mid, self.lg = rec["id"], lg
        self.pm = PathMap.for_record(context.config(), rec)
        self.src_ep = context.smb_endpoint(rec["source"])
        self.dst_ep = context.smb_endpoint(rec["destination"])
        self.streams = context.config().copy.streams

    def _lanes(self, paths: list) -> list[tuple]:
        """(source path, lane): before and after Save-VM the same files get the same lanes."""
        return [(p, i) for i, p in enumerate(sorted(paths, key=_rank))]

    def _eps(self, lane: int):
        return dataclasses.replace(self.src_ep, lane=lane), dataclasses.replace(self.dst_ep, lane=lane)

    def _refuse_theirs(self, rec: dict, path: str | None, lane: int) -> str | None:
        """A file we did not create in the way of `path` on the destination (looked for on
        its lane): HardFailure. Else its destination path if it is yet to be recorded."""
        if path is None or self.pm.dest(path) in rec.get("created_files", []):
            return None
        at = self.pm.dst_place(path)
        if file_copy.exists(self._eps(lane)[1].on_share(at.share), at.rel):
            refuse_existing(rec, self.pm.dest(path))
        return self.pm.dest(path)

    def ready(self, rec: dict, paths: list[str]) -> None:
        """Before Save-VM, with `paths` the downtime's files as the running VM has them:
        open the connections, and refuse now (no downtime spent) a destination that already
        has one of the files. They are recorded in created_files only after Save-VM, after
        a second look: a file someone else puts there meanwhile must stay theirs, never be
        removed by our rollback."""
        paths = list(paths)
        if not any(p.lower().endswith(".vmrs") for p in paths):
            paths.append(None)  # the memory file Save-VM will write

        def prepare(path: str | None, lane: int) -> None:
            # The memory is the big file, with every stream warm. A leaf disk that turns out
            # large opens its further streams during the copy, side by side with the memory.
            n = self.streams if _rank(path) == 0 else 1
            for ep in self._eps(lane):
                connections.warm(ep, n)
            self._refuse_theirs(rec, path, lane)

        lanes = self._lanes(paths)
        with ThreadPoolExecutor(len(lanes), thread_name_prefix="downtime-ready") as pool:
            list(pool.map(lambda pl: prepare(*pl), lanes))

    def copy(self, rec: dict, vm: dict, hasher: Hasher | None = None) -> int:
        """Once saved: copy every downtime file of `vm` at once; returns the bytes. `hasher`:
        the process started ahead for the destination's checks, ended here when done."""
        try:
            return self._copy(rec, vm, hasher)
        finally:
            if hasher is not None:
                hasher.end()

    def _copy(self, rec: dict, vm: dict, hasher: Hasher | None) -> int:
        lanes = self._lanes([f["path"] for f in downtime_files(vm)])
        with ThreadPoolExecutor(max(1, len(lanes)), thread_name_prefix="downtime-check") as pool:
            new = [d for d in pool.map(lambda pl: self._refuse_theirs(rec, *pl), lanes) if d]
        if new:
            rec = note_created(self.mid, new)  # before the first byte of any of them
        stop = threading.Event()
        done = [0] * len(lanes)
        progress = CopyProgress(context.store(), self.mid, rec["state"])
        label = self.pm.dest(lanes[0][0]) if lanes else None  # progress names one file for them all

        with progress.file_copy(label, rec.get("bytes_copied") or 0) as on_bytes:
            lock = threading.Lock()

            def one(path: str, lane: int) -> dict:
                src, dst = self._eps(lane)

                def on_file_bytes(n: int, _total: int) -> None:
                    if stop.is_set():
                        raise _Abandoned()
                    with lock:
                        done[lane] = n
                        total = sum(done)
                    on_bytes(total, 0)
                try:
                    return copy_verified(rec, path, self.lg, src_ep=src, dst_ep=dst, progress=on_file_bytes,
                                         host_digests=hasher.digests if hasher else None)[0]
                except BaseException:
                    stop.set()
                    raise

            t0 = time.monotonic()
            with ThreadPoolExecutor(max(1, len(lanes)), thread_name_prefix="downtime-copy") as pool:
                futures = [pool.submit(one, p, lane) for p, lane in lanes]
                errors, entries = [], []
                for f in futures:
                    try:
                        entries.append(f.result())
                    except BaseException as e:  # noqa: BLE001 - the first real one is raised below
                        errors.append(e)
            if errors:
                raise next(e for e in errors if not isinstance(e, _Abandoned))
        self.lg.info("copied %d downtime files side by side in %.2fs", len(entries), time.monotonic() - t0)
        note_copied(self.mid, entries)
        return sum(e["bytes"] for e in entries)
