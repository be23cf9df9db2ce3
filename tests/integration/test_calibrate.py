"""`quickmig calibrate` against the lab: it measures the emulated hosts, which spend their host
profile's costs, so what it measures must be the profile it runs under; the scratch file goes
whatever happens; the downtime prediction uses the figures until a switchover measured its own.
The same `windows` lab then checks that a switchover starts no process inside its downtime."""
import json
import re

import pytest

from lab.emulator import costs
from tests.integration.test_migration import migrate
from workers.model import keys

pytestmark = pytest.mark.integration

# Each time within this much of the profile's: the round trips of WinRM on loopback (a few ms,
# tens under load) on top of what the emulator spends. Tight enough that a figure with one
# cost too many or too few fails: the shell creation (0.15 s of `windows`) is the smallest.
TOLERANCE_S = 0.08
TOLERANCE_SHARE = 0.05
HASH_TOLERANCE = 0.30  # the hash rate: a difference of two timed calls (0.3 s apart at 128 MiB)


def scratch_files(lab, host):
    share = lab.dir / "hosts" / host / "share"
    return sorted(p.name for p in share.iterdir() if p.name.startswith("quickmig-calibrate-"))


def calibrate(lab, host, *extra):
    res = lab.cli("calibrate", host, "--json", *extra, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def expected(profile: costs.HostProfile) -> dict:
    return {"shell_create_s": profile.shell_create_s, "process_start_s": profile.process_start_s,
            "module_load_s": profile.module_load_s, "cmdlet_s": profile.op_s.get("host_info", 0.0)}


def assert_reproduces(doc: dict, profile: costs.HostProfile) -> None:
    for name, want in expected(profile).items():
        assert abs(doc[name] - want) <= TOLERANCE_S + TOLERANCE_SHARE * want, (name, doc[name], want, doc)


def test_calibrate_measures_the_fast_profile_as_next_to_nothing_and_leaves_no_scratch_file(lab):
    doc = calibrate(lab, "hv3", "--scratch-mib", "32")
    assert_reproduces(doc, costs.FAST)
    # fast spends nothing: the emulator's own SHA-256 and Samba on loopback, far above the
    # `windows` figures that the test below finds
    assert doc["hash_bps"] > 100e6 and doc["smb_write_bps"] > 10e6 and doc["smb_read_bps"] > 10e6, doc
    assert scratch_files(lab, "hv3") == []
    stored = json.loads(lab.redis().get(keys.host_calibration("hv3")))
    assert stored == {k: v for k, v in doc.items() if k != "host"}


def test_a_failed_calibration_says_why_in_one_line_and_still_deletes_its_scratch_file(lab):
    before = lab.redis().get(keys.host_calibration("hv3"))
    lab.emulator("hv3").inject_fault(op="file_hash", action="fail", message="injected: the disk is gone", times=1)
    res = lab.cli("calibrate", "hv3", "--scratch-mib", "16", "--samples", "1")
    assert res.returncode == 2, (res.stdout, res.stderr)
    # the driver logs the failed operation (a warning); the refusal is one line, the last
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("quickmig: calibrating hv3: ") and "injected: the disk is gone" in last, res.stderr
    assert "Traceback" not in res.stderr
    assert scratch_files(lab, "hv3") == []
    assert lab.redis().get(keys.host_calibration("hv3")) == before  # nothing half-measured stored


@pytest.mark.parametrize("args, says", [
    (("nosuch",), "unknown host 'nosuch'"),
    (("hv3", "--scratch-mib", "8"), "--scratch-mib must be at least 16"),
    (("hv3", "--samples", "0"), "--samples at least 1"),
])
def test_bad_calibrate_requests_are_refused_in_one_line(lab, args, says):
    before = lab.redis().get(keys.host_calibration("hv3"))
    res = lab.cli("calibrate", *args)
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert lab.redis().get(keys.host_calibration("hv3")) == before


@pytest.fixture(scope="module")
def windows_lab(own_lab):
    """Two hosts under the `windows` profile, shared by this module's tests: hv1 -> hv2 is the
    calibration's pair, hv2 -> hv1 the downtime test's (the costs a switchover remembers are
    per host, so neither test sees the other's)."""
    with own_lab("calib-windows", hosts=2, host_profile="windows") as lab:
        yield lab


def test_calibrate_reproduces_the_windows_profile_and_the_prediction_uses_it_until_a_cutover(windows_lab):
    w = costs.WINDOWS
    lab = windows_lab
    # hv1 as precisely as the test can; hv2 quickly, for the prediction below
    docs = {"hv1": calibrate(lab, "hv1", "--scratch-mib", "128"),
            "hv2": calibrate(lab, "hv2", "--scratch-mib", "16", "--samples", "1")}
    assert_reproduces(docs["hv1"], w)
    assert abs(docs["hv1"]["hash_bps"] - w.hash_bps) <= HASH_TOLERANCE * w.hash_bps, docs
    assert scratch_files(lab, "hv1") == scratch_files(lab, "hv2") == []
    lab.add_vm("cal-vm", "hv1", memory_mb=16, disk_mb=16, write_rate_kbps=0)
    res, plan = lab.cli_json("migrate", "cal-vm", "--from", "hv1", "--to", "hv2", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    rates = plan["rates"]
    assert rates["sources"]["register_start_s"].startswith("calibrated ")
    assert rates["register_start_s"] == pytest.approx(3 * docs["hv2"]["cmdlet_s"])
    assert rates["sources"]["downtime_copy_bps"].startswith("calibrated ")
    want = min(docs["hv1"]["smb_read_bps"], docs["hv2"]["smb_write_bps"])
    assert rates["downtime_copy_bps"] == pytest.approx(want, abs=1)
    assert rates["sources"]["save_bps"] == "default"  # Save-VM needs a VM: never calibrated
    text = lab.cli("migrate", "cal-vm", "--from", "hv1", "--to", "hv2", "--dry-run")
    assert "register+start calibrated" in text.stdout, text.stdout

    res, rec = migrate(lab, "cal-vm", "hv1", "hv2")
    assert rec["state"] == "completed", (rec.get("error"), res.stderr)
    assert rec["prediction_sources"]["register_start_s"].startswith("calibrated "), rec["prediction_sources"]
    status = lab.cli("status", rec["id"])
    assert "predicted from  " in status.stdout and "calibrated" in status.stdout, status.stdout

    # the switchover measured the costs itself: they replace the calibration's
    lab.add_vm("cal-vm2", "hv1", memory_mb=16, disk_mb=16, write_rate_kbps=0)
    _, plan = lab.cli_json("migrate", "cal-vm2", "--from", "hv1", "--to", "hv2", "--dry-run", "--json")
    assert plan["rates"]["sources"]["register_start_s"] == "measured"
    assert plan["rates"]["sources"]["save_bps"] == "measured"
    assert plan["rates"]["sources"]["downtime_copy_bps"] == "this pair's last migration"


def _inside(entries: list[dict], t0: float, t1: float, event: str) -> list[float]:
    return [e["t"] for e in entries if e["event"] == event and t0 <= e["t"] <= t1]


def test_the_downtime_copys_checks_of_several_ranges_start_no_process_inside_the_downtime(windows_lab):
    """288 MiB of memory: 36 chunks, checked on the destination in at least two ranges (one of
    at least 16 chunks while the copy runs, the tail after it). bench/downtime.py counts the
    process starts and module loads inside a downtime from the hosts' cost logs: none here, and
    before Save-VM the destination started one process for all the checks, besides import,
    start and heartbeat's three."""
    lab = windows_lab
    lab.add_vm("hash-vm", "hv2", memory_mb=288, disk_mb=16, write_rate_kbps=0)
    res, rec = migrate(lab, "hash-vm", "hv2", "hv1", "--max-rounds", "0")
    assert rec["state"] == "completed", (rec.get("error"), res.stderr)
    t0 = rec["save_started_at"]
    t1 = t0 + rec["downtime_seconds"]
    logs = {h: costs.read_log(lab.dir / "hosts" / h / "emulator") for h in ("hv1", "hv2")}
    for host, entries in logs.items():
        assert _inside(entries, t0, t1, "process_start") == [], host
        assert _inside(entries, t0, t1, "module_load") == [], host
    events = [json.loads(line) for line in (lab.dir / "events.jsonl").read_text().splitlines()]
    checks = [e for e in events if e["host"] == "hv1" and e["event"] == "file_hash" and t0 <= e["t"] <= t1
              and re.search(r"\.vmrs(\.partial)?$", e.get("path", ""), re.I)]
    assert len(checks) >= 2, checks
    # the cutover began with the source's process for Save-VM, then its describe_vm: the last
    # two process starts on hv2 before Save-VM; the destination's started alongside
    began = sorted(t for t in _inside(logs["hv2"], 0, t0, "process_start"))[-2]
    ahead = _inside(logs["hv1"], began - 0.5, t0, "process_start")
    assert len(ahead) == 4, ahead
