"""Load (issue #5 item 6): 200 small migrations across 10 lab hosts with max_migrations 2.

The scenario is lab/load.py (also `python bench/load.py`). Every migration must complete;
neither the emulated hosts' own record nor the admission log may show a host in more than
2 migrations at once, and at least one host must reach 2 (else the limit was never
exercised); no VM ran on two hosts at once and no acknowledged write was lost. The report
is printed and written to the test's tmp dir.
"""
import pytest

from lab import load

pytestmark = pytest.mark.integration

MIGRATIONS, HOSTS, LIMIT = 200, 10, 2


def test_200_migrations_across_10_hosts_never_exceed_2_per_host(tmp_path):
    rep = load.run(tmp_path / "lab", MIGRATIONS, HOSTS, LIMIT, timeout_s=900)
    text = load.format_report(rep)
    print("\n" + text)
    (tmp_path / "load-report.txt").write_text(text + "\n")
    assert load.violations(rep) == []
    assert max(rep["max_per_host_emulator"].values()) == LIMIT, rep["max_per_host_emulator"]
    assert max(rep["max_per_host_admission"].values()) == LIMIT, rep["max_per_host_admission"]
    assert set(rep["max_per_host_emulator"]) == {f"hv{i}" for i in range(1, HOSTS + 1)}
