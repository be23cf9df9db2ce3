"""Load: many small migrations across many lab hosts under a per-host migration limit.

    python bench/load.py [--migrations 200] [--hosts 10] [--limit 2] [--dir DIR] [--timeout-s 900]

Brings up a lab of --hosts hosts with max_migrations = --limit, migrates --migrations tiny
VMs all enqueued at once (every host both source and destination), and prints the report
of lab/load.py: wall time, migrations/min, the most migrations at once per host from the
emulated hosts' own record and from the admission log, overlaps, integrity, and Redis
memory per finished migration record. The same scenario is the CI load test
(tests/integration/test_load.py). Exit status 0 when every migration completed within the
limit with integrity intact.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from lab import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--migrations", type=int, default=200)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--limit", type=int, default=2, help="each host's max_migrations")
    ap.add_argument("--timeout-s", type=float, default=900)
    ap.add_argument("--dir", help="lab folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="also print the report as JSON")
    a = ap.parse_args()
    lab_dir = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="quickmig-load-"))
    rep = load.run(lab_dir, a.migrations, a.hosts, a.limit, a.timeout_s, say=lambda m: print(m, file=sys.stderr))
    print(load.format_report(rep))
    if a.json:
        print(json.dumps(rep, sort_keys=True))
    return 0 if not load.violations(rep) else 1


if __name__ == "__main__":
    sys.exit(main())
