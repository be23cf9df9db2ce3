"""`quickmig watch` against the lab: it shows a running migration and follows one to its end."""
import re
import time

import pytest

pytestmark = pytest.mark.integration


def test_watch_id_follows_a_migration_to_completed_and_exits_0(lab):
    lab.add_vm("watch-ok", "hv1")
    # a copy slow enough (~3 s) that watch, a process started after migrate returns, sees it
    # move however busy the machine is
    assert lab.cli("throttle", "--pair", "hv1", "hv2", "8M").returncode == 0
    try:
        res = lab.cli("migrate", "watch-ok", "--from", "hv1", "--to", "hv2")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        res = lab.cli("watch", mid, "--interval", "0.2", timeout=240)
    finally:
        lab.cli("throttle", "--pair", "hv1", "hv2", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "\x1b" not in res.stdout  # not a terminal: plain lines
    lines = res.stdout.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d " + mid, ln) for ln in lines[:2]), lines
    assert f"migration {mid}: 'watch-ok' hv1 -> hv2: completed" in res.stdout


def test_watch_id_exits_1_for_a_rolled_back_migration_and_2_for_an_unknown_id(lab):
    lab.add_vm("watch-rb", "hv1")
    lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        mid = lab.cli("migrate", "watch-rb", "--from", "hv1", "--to", "hv3").stdout.strip()
        res = lab.cli("watch", mid, "--interval", "0.2", timeout=240)
    finally:
        lab.emulator("hv3").clear_faults()
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rolled_back" in res.stdout
    res = lab.cli("watch", "0000000000000000")
    assert res.returncode == 2 and "no migration" in res.stderr


def test_watch_shows_an_active_migration_with_its_downtime_so_far(lab):
    lab.add_vm("watch-live", "hv1")
    # hold the VM down a few seconds inside Save-VM so the view can catch it there
    lab.emulator("hv1").inject_fault(op="save_vm", action="delay", seconds=4, times=1)
    try:
        mid = lab.cli("migrate", "watch-live", "--from", "hv1", "--to", "hv2").stdout.strip()
        deadline = time.monotonic() + 120
        while True:
            out = lab.cli("watch", "--once").stdout
            row = next((ln for ln in out.splitlines() if ln.startswith(mid)), "")
            if "cutover" in row and re.search(r"down +\d+\.\ds", row):
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.3)
    finally:
        lab.emulator("hv1").clear_faults()
    assert "watch-live" in row and "hv1->hv2" in row
    assert re.search(r"\d+ active", out)
    res = lab.cli("watch", mid, "--interval", "0.5", timeout=240)
    assert res.returncode == 0, res.stdout


def test_escape_sequences_in_a_hosts_error_reach_no_terminal(lab):
    """A host's error text carrying escape sequences (retitle, clear the screen, a bidi
    override) is shown by status, watch and --json as visible escapes, never raw."""
    lab.add_vm("watch-esc", "hv1")
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202eimport refused\x9b1A"
    lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message=hostile, times=1)
    try:
        mid = lab.cli("migrate", "watch-esc", "--from", "hv1", "--to", "hv3").stdout.strip()
        res = lab.cli("watch", mid, "--interval", "0.2", timeout=240)
    finally:
        lab.emulator("hv3").clear_faults()
    assert res.returncode == 1, res.stdout + res.stderr
    status = lab.cli("status", mid)
    as_json = lab.cli("status", mid, "--json")
    listed = lab.cli("list")
    for out in (res.stdout, status.stdout, as_json.stdout, listed.stdout):
        assert not any(c in out for c in ("\x1b", "\x07", "\x9b", "\u202e")), repr(out)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202eimport refused" in status.stdout, status.stdout
    import json
    assert hostile in json.loads(as_json.stdout)["error"]  # --json keeps the text, escaped as JSON
