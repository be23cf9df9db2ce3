"""A finished migration's record in the lab's redis-server: small (the 4 KiB goal of
bench/overhead.py, measured the same way), and still what `quickmig status` and the API show."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from workers.model import keys

pytestmark = pytest.mark.integration

GOAL_BYTES = 4096  # bench/overhead.py GOAL_RECORD_BYTES


def redis_bytes(r, mid: str) -> int:
    """MEMORY USAGE over every key the migration left, as bench/overhead.py sums it."""
    found = [keys.migration(mid), keys.step_claim(mid)] + list(r.scan_iter(keys.copy_resume_match(mid)))
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in found)


def test_a_completed_1_disk_migration_keeps_what_status_and_the_api_show_in_under_4_kib(lab):
    lab.add_vm("fin-1disk", "hv2", write_rate_kbps=128)
    time.sleep(1)  # its guest's heartbeat answers shortly after start; pre-flight refuses a VM without one
    res, rec = lab.cli_json("migrate", "fin-1disk", "--from", "hv2", "--to", "hv3", "--wait", "--json",
                            "--timeout", "240")
    assert rec["state"] == "completed", (rec.get("error"), res.stderr)
    mid = rec["id"]
    size = redis_bytes(lab.redis(), mid)
    print(f"finished record: MEMORY USAGE {size} B, {len(json.dumps(rec))} B of JSON")
    assert 0 < size <= GOAL_BYTES, (size, len(json.dumps(rec)))
    # what `quickmig status` shows of it
    out = lab.cli("status", mid)
    assert out.returncode == 0, out.stderr
    for line in ("completed", "downtime ", "predicted ", "moved while down", "bytes copied", "throughput",
                 "files copied    ", "bytes planned", "snapshot ", "copy ", "prepare ", "cutover ", "finish ",
                 "total "):
        assert line in out.stdout, (line, out.stdout)
    _, st = lab.cli_json("status", mid, "--json")
    assert [h["state"] for h in st["history"]] == ["queued", "snapshotting", "copying", "preparing",
                                                   "cutting_over", "finishing", "completed"]
    kinds = st["copied_by_kind"]
    assert {"disk", "checkpoint", "state"} <= set(kinds), kinds
    assert sum(k["bytes"] for k in kinds.values()) == st["bytes_copied"] >= 16 * 2**20
    assert st["downtime_seconds"] > 0 and st["predicted_downtime_seconds"] > 0
    assert st["snapshot"] == {"id": st["snapshot"]["id"], "name": f"quickmig-{mid}"}
    assert not {"copied", "created_files", "planned", "progress", "downtime_paths"} & set(st)
    # the API serves the same record
    endpoints = json.loads((lab.dir / "endpoints.json").read_text())
    token = (lab.dir / "api-token").read_text().strip()
    got = httpx.get(f"{endpoints['api']}/v1/migrations/{mid}", headers={"Authorization": f"Bearer {token}"},
                    timeout=30)
    assert got.status_code == 200, got.text
    assert got.json() == st
