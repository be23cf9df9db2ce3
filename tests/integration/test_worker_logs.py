"""Worker log lines carry the migration id and phase (the lab's workers log text)."""
import re

import pytest

pytestmark = pytest.mark.integration


def test_every_worker_line_about_a_migration_names_it_and_its_phase(lab):
    lab.add_vm("logs-1", "hv1")
    res, rec = lab.cli_json("migrate", "logs-1", "--from", "hv1", "--to", "hv2", "--wait", "--json")
    assert rec["state"] == "completed", rec["error"]
    mid = rec["id"]
    lines = []
    for pool in ("snapshot", "copy", "cutover"):
        lines += [ln for ln in (lab.dir / "logs" / f"worker-{pool}.log").read_text().splitlines() if mid in ln]
    assert lines
    fmt = re.compile(r"^\S+ \S+ (INFO|WARNING|ERROR|DEBUG) \d+ mid=(\S+) phase=(\S+) ")
    phases = set()
    for ln in lines:
        m = fmt.match(ln)
        assert m, ln
        assert m.group(2) == mid, ln
        phases.add(m.group(3))
    # Celery's own "received"/"succeeded" lines and the steps' lines, for every step
    assert {"snapshot", "copy", "prepare", "cutover", "finish"} <= phases, phases
    assert any("received" in ln for ln in lines) and any("succeeded" in ln for ln in lines)
    assert any("switchover" in ln and "phase=cutover" in ln for ln in lines)
