"""A copy worker killed with SIGKILL mid-copy: the task is redelivered and the copy resumes
from its Redis checkpoint, re-copying at most one window (one chunk per stream). Also the
progress fields the record carries while a copy runs. Real lab: Redis, smbd, Celery."""
from __future__ import annotations

import itertools
import json
import os
import signal
import time

import pytest

from lab.orchestrator import read_lab
from workers.coord.throttle import Throttle
from workers.model import chunks, keys
from workers.smb.file_copy import DEFAULT_STREAMS

pytestmark = pytest.mark.integration

RATE = 12_000_000
PROGRESS_FIELDS = {"file", "bytes_done", "bytes_total", "rate_bps", "eta_seconds", "at"}


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _wait(what, fn, timeout_s=120, every_s=0.1):
    deadline = time.time() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def test_a_copy_worker_killed_mid_copy_resumes_and_recopies_at_most_one_window(lab):
    vm = lab.add_vm("resume-big", "hv1", disk_mb=160, write_rate_kbps=32)
    store_r = lab.redis()
    throttle = Throttle(store_r)
    # long enough a copy (~14 s) to kill it in the middle even when the machine is loaded and
    # the checks below take seconds
    throttle.set(RATE, pair=("hv1", "hv2"))
    try:
        res, rec = lab.cli_json("migrate", "resume-big", "--from", "hv1", "--to", "hv2", "--json")
        assert res.returncode == 0, res.stderr
        mid = rec["id"]
        samples = []

        def copying_far_enough():
            r = json.loads(store_r.get(keys.migration(mid)))
            prog = r.get("progress") or {}
            if r["state"] == "copying" and prog:
                samples.append((time.time(), prog))
            return r["state"] == "copying" and prog.get("bytes_done", 0) >= 5 * chunks.CHUNK_BYTES and r

        rec = _wait("the base disk copy to pass 40 MiB", copying_far_enough, every_s=0.05)
        # progress: the agreed field names, the planned total, updated at least once a second
        prog = rec["progress"]
        assert set(prog) == PROGRESS_FIELDS
        assert prog["bytes_total"] == rec["bytes_total"] >= 160 * 2**20
        assert prog["rate_bps"] and prog["rate_bps"] <= RATE * 1.5
        assert prog["eta_seconds"] is not None and prog["eta_seconds"] > 0
        status = lab.cli("status", mid)
        assert "progress" in status.stdout and "MB/s" in status.stdout and "ETA" in status.stdout
        stamps = sorted({p["at"] for _, p in samples})
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        assert len(gaps) >= 3, stamps
        assert gaps[len(gaps) // 2] <= 1.0 and gaps[-1] < 2.5, gaps  # generous: the machine is shared

        # the base disk is frozen now: its digest is what the destination must end up with
        src_disk = next(p for p in (lab.dir / "hosts" / "hv1" / "share").rglob("*.vhdx") if vm["id"] in str(p))
        expected = chunks.digest_of_bytes(src_disk.read_bytes())

        pool = read_lab(lab.dir)["processes"]["worker-copy"]["pid"]
        killed = _children(pool)
        assert killed
        for pid in killed:  # each by pid; the pool's main process stays and redelivers
            os.kill(pid, signal.SIGKILL)

        seen: dict[str, dict] = {}

        def ended():
            r = json.loads(store_r.get(keys.migration(mid)))
            # every file's entry is in the record while it runs; an ended one sums them per kind
            seen.update((c["path"].lower(), c) for c in r.get("copied", []))
            return r["state"] in ("completed", "rolled_back", "failed")

        _wait("the migration to end", ended, timeout_s=240, every_s=0.05)
        final = lab.cli_json("status", mid, "--json")[1]
    finally:
        throttle.set(0, pair=("hv1", "hv2"))

    assert final["state"] == "completed", final.get("error")
    assert not set(_children(pool)) & set(killed)  # the killed children are really gone
    assert final["copied_by_kind"]["disk"]["bytes_reused"] >= 4 * chunks.CHUNK_BYTES
    entry = next(c for p, c in seen.items() if p.endswith(src_disk.name.lower()))
    # the digest the destination host's file_hash matched (the destination's file
    # itself has since taken the merged checkpoint, so it is no longer comparable)
    assert entry["digest"] == expected
    assert entry["bytes_reused"] >= 4 * chunks.CHUNK_BYTES  # resumed, not restarted
    copied_twice = entry["bytes_sent"] - entry["bytes"]
    assert 0 <= copied_twice <= DEFAULT_STREAMS * chunks.CHUNK_BYTES, copied_twice
    check = lab.verify("resume-big")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check


def test_the_throttle_command_sets_shows_and_refuses_bad_limits(lab):
    res, out = lab.cli_json("throttle", "--global", "150M", "--pair", "hv1", "hv3", "2000000", "--json")
    try:
        assert res.returncode == 0, res.stderr
        assert out == {"global": 150_000_000, "pairs": {"hv1->hv3": 2_000_000}}
        bad = lab.cli("throttle", "--global", "fast")
        assert bad.returncode == 2 and "not a rate" in bad.stderr
        unknown = lab.cli("throttle", "--global", "1M", "--pair", "hv1", "nohost", "1M")
        assert unknown.returncode == 2 and "nohost" in unknown.stderr
        _, after = lab.cli_json("throttle", "--json")
        assert after == out  # refused requests changed nothing
        shown = lab.cli("throttle")
        assert "150000000 B/s" in shown.stdout and "hv1->hv3" in shown.stdout
    finally:
        lab.cli("throttle", "--global", "0", "--pair", "hv1", "hv3", "0")
    _, cleared = lab.cli_json("throttle", "--json")
    assert cleared == {"global": None, "pairs": {}}
