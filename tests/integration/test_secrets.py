"""After migrations in the lab (one completed, one rolled back by a host's error), no
secret appears anywhere quickmig writes or shows: Redis (records, queues, every key), the
log files, the metrics, the command lines and the environments of the lab's processes and
their children. The lab's secrets come from credentials.toml (the WinRM password) and from
a secret file of its own (the SMB password, `smb_password_file`)."""
import json
import os
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, grew = set(pids), True
    while grew:
        more = {p for p, pp in parent.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def test_no_secret_in_redis_logs_metrics_command_lines_or_environments(lab):
    creds = lab.cfg.credentials("hv1")
    secrets = {creds.winrm_password, creds.smb_password}
    assert "smb_password_file" in (lab.dir / "credentials.toml").read_text()  # the file source is in play
    lab.add_vm("secret-ok", "hv1")
    lab.add_vm("secret-rb", "hv2")
    lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        done = lab.cli_json("migrate", "secret-ok", "--from", "hv1", "--to", "hv2", "--wait", "--json")[1]
        failed = lab.cli_json("migrate", "secret-rb", "--from", "hv2", "--to", "hv3", "--wait", "--json")[1]
    finally:
        lab.emulator("hv3").clear_faults()
    assert (done["state"], failed["state"]) == ("completed", "rolled_back"), (done, failed)

    places: dict[str, bytes] = {}
    r = lab.redis()
    canary = "canary-" + creds.winrm_username + "-" + os.urandom(8).hex()
    r.set("quickmig:test:canary", canary)  # shows the scan would see a secret in Redis
    try:
        for key in r.scan_iter("*"):
            places[f"redis {key}"] = r.dump(key) or b""
    finally:
        r.delete("quickmig:test:canary")
    assert [w for w, data in places.items() if canary.encode() in data] == ["redis quickmig:test:canary"]
    for log in (lab.dir / "logs").glob("*.log"):
        places[f"log {log.name}"] = log.read_bytes()
    endpoints = json.loads((lab.dir / "endpoints.json").read_text())
    for m in endpoints["metrics"]:
        places[f"metrics {m['url']}"] = urllib.request.urlopen(m["url"], timeout=10).read()
    lab_pids = {e["pid"] for e in json.loads((lab.dir / "lab.json").read_text())["processes"].values()}
    pids = descendants(lab_pids)
    assert len(pids) > len(lab_pids)  # the pools' children are scanned too
    for pid in pids:
        for what in ("cmdline", "environ"):
            try:
                places[f"pid {pid} {what}"] = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue  # gone meanwhile
    assert len(places) > 20
    for secret in secrets:
        hits = [where for where, data in places.items() if secret.encode() in data]
        assert not hits, f"a secret appears in: {hits}"
