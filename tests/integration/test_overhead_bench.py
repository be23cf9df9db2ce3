"""The short version of bench/overhead.py: it runs (quickmig and the bare Celery chain on one
lab, the bare chain checked to have moved its VMs) and prints its figures. Not a timed test:
the ratio and the record size are for the benchmark to report, not for CI to assert."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_bench_runs_both_and_prints_the_rate_ratio_and_the_record_size(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "overhead.py"), "--migrations", "2", "--rounds", "1",
                          "--dir", str(tmp_path / "lab")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    rates = re.search(r"quickmig ([\d.]+) migrations/s, bare Celery chain ([\d.]+)/s .* ratio ([\d.]+)", res.stdout)
    assert rates, res.stdout
    ours, theirs, ratio = map(float, rates.groups())
    # each printed rounded to 0.01
    assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs, rel=0.05, abs=0.01)
    size = re.search(r"Redis per finished record: MEMORY USAGE avg (\d+) B, max (\d+) B over 2 records", res.stdout)
    assert size and 0 < int(size.group(1)) <= int(size.group(2)), res.stdout
