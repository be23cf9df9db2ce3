"""Hosts as administrators set them up: the FIPS policy on, names and switches that are not
ASCII (docs/hyperv-rules.md, "Hashing, encodings and the WinRM shell")."""
from __future__ import annotations

import pytest

from tests.integration.test_migration import migrate, migrate_refused

pytestmark = pytest.mark.integration


def test_a_migration_between_hosts_that_enforce_fips_completes(lab):
    # The destination hashes every copied block (file_hash) while the copy runs: a
    # SHA256Managed there would refuse each one, and the migration could never complete.
    lab.add_vm("fips-vm", "hv2", write_rate_kbps=64)
    for h in ("hv2", "hv3"):
        lab.emulator(h).set_host(fips=True)
    try:
        res, rec = migrate(lab, "fips-vm", "hv2", "hv3")
    finally:
        for h in ("hv2", "hv3"):
            lab.emulator(h).reset_host()
    assert rec["state"] == "completed", rec.get("error")
    check = lab.verify("fips-vm")
    assert check["running_on"] == ["hv3"] and check["integrity"] == "ok", check


def test_non_ascii_names_reach_quickmig_whole(lab):
    # A name the host writes back comes through as it is, and a refusal names it exactly.
    name, switch = "Prüfstand Ü-1", "Büro-Netz"
    lab.add_vm(name, "hv1", switches=[switch])
    rec = migrate_refused(lab, name, "hv1", "hv3")
    assert f"hv3 has no virtual switch named '{switch}'" in rec["error"], rec["error"]
    lab.emulator("hv3").set_host(switches=["lab-switch", switch])
    try:
        res, rec = migrate(lab, name, "hv1", "hv3")
    finally:
        lab.emulator("hv3").reset_host()
    assert rec["state"] == "completed", rec.get("error")
    assert lab.verify(name)["running_on"] == ["hv3"]
