"""`quickmig calibrate HOST`: what a host's operations cost, measured without touching a VM.

Measured from here, over the same WinRM and SMB a worker uses, each figure the median of a
few samples:

- shell creation: a WinRS shell opened (timed) and deleted;
- process start: a process started ahead for `file_hash` (a script without Hyper-V cmdlets)
  until it says it is ready, less the shell creation; then ended unused;
- Hyper-V module load: the same for `host_info` (its process loads the module before it says
  it is ready) less the plain process;
- a read-only cmdlet's latency: `host_info` (Get-VMHost and friends) run in that process,
  from sending its script to its answer;
- hashing: `file_hash` of 1 chunk and of N chunks of a scratch file, each in a process started
  ahead; the rate is the difference of bytes over the difference of times, so the fixed
  costs of a script fall out;
- SMB: the scratch file written, then read, over the host's share of vm_root.

The scratch file is `<vm_root>\\quickmig-calibrate-<random>.tmp`: a name only quickmig makes,
inside the host's first configured folder, deleted on the way out whatever happened (over
SMB; if that fails, by the host's own `delete_files`, which keeps any file a VM refers to).
Nothing else is written on the host and no VM is looked at.
"""
from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable

from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError
from workers.model import chunks, host_profile
from workers.model.config import Config
from workers.smb import connections, files
from workers.smb.endpoint import SmbEndpoint
from workers.smb.errors import SmbError, smb_errors

SCRATCH_PREFIX = "quickmig-calibrate-"
SCRATCH_SUFFIX = ".tmp"
SCRATCH_MIB_DEFAULT = 256
SCRATCH_MIB_MIN = 16  # two chunks at least: the hash rate is a difference of two ranges
SAMPLES_DEFAULT = 3
MiB = 1024 * 1024


class CalibrationError(Exception):
    """A calibration that could not finish; the message says what failed (one line)."""


def _median(fn: Callable[[], float], samples: int) -> float:
    return statistics.median(fn() for _ in range(samples))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


class Calibration:
    """One calibration of one host (`run()`); `scratch_path` is the file it creates and deletes."""

    def __init__(self, cfg: Config, host: str, scratch_mib: int = SCRATCH_MIB_DEFAULT,
                 samples: int = SAMPLES_DEFAULT):
        if scratch_mib < SCRATCH_MIB_MIN:
            raise ValueError(f"the scratch file must be at least {SCRATCH_MIB_MIN} MiB, not {scratch_mib}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        self.host = cfg.host(host)
        creds = cfg.credentials(host)
        self.driver = HyperVDriver(self.host, creds)
        self.ep = SmbEndpoint.for_host(self.host, creds)
        self.size = scratch_mib * MiB
        self.samples = samples
        # vm_root's share root is vm_root itself (Storage(vm_root, smb_share))
        self.scratch_rel = f"{SCRATCH_PREFIX}{uuid.uuid4().hex}{SCRATCH_SUFFIX}"
        self.scratch_path = self.host.vm_root.rstrip("\\") + "\\" + self.scratch_rel

    # -- WinRM ---------------------------------------------------------------------------

    def _warm_s(self, op: str) -> float:
        """From asking for a process for `op` until it is ready; the process is ended unused."""
        t0 = time.monotonic()
        proc = self.driver.warm(op)
        took = time.monotonic() - t0
        proc.close()
        return took

    def _cmdlet_s(self) -> float:
        proc = self.driver.warm("host_info")
        try:
            return _timed(lambda: self.driver.run("host_info", {}, warm=proc))
        finally:
            proc.close()

    def _hash_s(self, count: int) -> float:
        proc = self.driver.warm("file_hash")
        try:
            return _timed(lambda: self.driver.chunk_digests(self.scratch_path, 0, count, warm=proc))
        finally:
            proc.close()

    # -- SMB ------------------------------------------------------------------------------

    def _write(self) -> float:
        block = os.urandom(chunks.CHUNK_BYTES)  # random: nothing on the way can compress it
        with smb_errors(self.ep.unc(self.scratch_rel), on_connection_error=lambda: connections.evict(self.ep)):
            fh = files.open_for_write(connections.tree(self.ep), self.scratch_rel)
            try:
                t0 = time.monotonic()
                done = 0
                while done < self.size:
                    want = min(len(block), self.size - done)
                    done += files.write_chunk(fh, done, memoryview(block)[:want])
                files.flush(fh)  # on the host's storage, not only in its cache
                return time.monotonic() - t0
            finally:
                files.close(fh)

    def _read(self) -> float:
        with smb_errors(self.ep.unc(self.scratch_rel), on_connection_error=lambda: connections.evict(self.ep)):
            fh = files.open_for_read(connections.tree(self.ep), self.scratch_rel)
            try:
                t0 = time.monotonic()
                done = 0
                while done < self.size:
                    got = len(files.read_chunk(fh, done, min(chunks.CHUNK_BYTES, self.size - done)))
                    if got == 0:
                        raise CalibrationError(f"{self.ep.unc(self.scratch_rel)} ended at {done} bytes "
                                               f"of the {self.size} written")
                    done += got
                return time.monotonic() - t0
            finally:
                files.close(fh)

    def _delete(self) -> str | None:
        """Delete the scratch file; None when it is gone, else why it could not be deleted."""
        try:
            with smb_errors(self.ep.unc(self.scratch_rel), on_connection_error=lambda: connections.evict(self.ep)):
                fh = files.open_for_delete(connections.tree(self.ep), self.scratch_rel)
                try:
                    files.mark_delete(fh)
                finally:
                    files.close(fh)
            return None
        except SmbError as e:
            if "no such file" in str(e):  # never created (the write failed before its CREATE)
                return None
            smb_problem = str(e)
        try:
            self.driver.delete_files([self.scratch_path])
            return None
        except HyperVError as e:
            return f"over SMB: {smb_problem}; by delete_files: {e}"

    # -- the whole ------------------------------------------------------------------------

    def run(self) -> dict:
        """Every figure of workers.model.host_profile.FIELDS, measured now."""
        n = self.samples
        try:
            shell = _median(self.driver.shell_create_s, n)
            plain = _median(lambda: self._warm_s("file_hash"), n)
            hyperv = _median(lambda: self._warm_s("host_info"), n)
            cmdlet = _median(self._cmdlet_s, n)
        except HyperVError as e:
            raise CalibrationError(f"calibrating {self.host.name}: {e}") from None
        out = {"shell_create_s": shell, "process_start_s": max(plain - shell, 0.0),
               "module_load_s": max(hyperv - plain, 0.0), "cmdlet_s": cmdlet}
        many = min(chunks.count(self.size), chunks.MAX_RANGE)
        problem = None
        try:
            write_s = self._write()
            read_s = self._read()
            one = _median(lambda: self._hash_s(1), n)
            all_ = _median(lambda: self._hash_s(many), n)
        except (HyperVError, SmbError, CalibrationError) as e:
            problem = str(e)
        except BaseException:
            self._delete()  # interrupted: the scratch file goes all the same
            raise
        left = self._delete()
        if left is not None:  # ours and inside vm_root: say where, so that it can be removed by hand
            problem = "; ".join(filter(None, (problem, f"could not delete the scratch file {self.scratch_path} "
                                                       f"({left})")))
        if problem is not None:
            raise CalibrationError(f"calibrating {self.host.name}: {problem}")
        out.update(smb_write_bps=self.size / write_s, smb_read_bps=self.size / read_s,
                   hash_bps=(many - 1) * chunks.CHUNK_BYTES / max(all_ - one, 1e-6),
                   measured_at=time.time())
        return out


def calibrate(cfg: Config, r, host: str, scratch_mib: int = SCRATCH_MIB_DEFAULT,
              samples: int = SAMPLES_DEFAULT) -> dict:
    """Measure `host` and store its profile in Redis (`r`); returns what was stored."""
    figures = Calibration(cfg, host, scratch_mib, samples).run()
    return {"host": host, **host_profile.save(r, host, figures)}
