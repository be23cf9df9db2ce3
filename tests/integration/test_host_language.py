"""A lab whose hosts speak German (`quickmig lab up --locale de-DE`): every message a host
writes is German, only categories, error ids, message ids and fault codes stay as they are.
quickmig must read nothing else: a migration completes, a failed one rolls back, and every
refusal still names its cause (docs/hyperv-rules.md, "Errors and languages")."""
from __future__ import annotations

import time

import pytest
from winrm.exceptions import WSManFaultError
from winrm.protocol import Protocol

from tests.integration.test_migration import migrate, migrate_refused
from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError, InvalidVMState, VMNotFound
from workers.model.record import Store

pytestmark = pytest.mark.integration

NO_VM = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture(scope="module")
def de_lab(own_lab):
    with own_lab("lab-de", locale="de-DE") as lab:
        yield lab


def driver(lab, host: str) -> HyperVDriver:
    return HyperVDriver(lab.cfg.host(host), lab.cfg.credentials(host), default_timeout_s=30)


def test_the_hosts_speak_german_and_quickmig_still_knows_what_they_say(de_lab):
    assert de_lab.emulator("hv1").ping()["locale"] == "de-DE"
    with pytest.raises(VMNotFound) as e:  # what prepare, finish and the copy-back ask
        driver(de_lab, "hv2").describe_vm(vm_id=NO_VM)
    assert str(e.value) == f"Auf diesem Host gibt es keinen virtuellen Computer mit der ID {NO_VM}."
    vm = de_lab.add_vm("de-aus", "hv1", start=False)
    with pytest.raises(InvalidVMState) as e:
        driver(de_lab, "hv1").save_vm(vm["id"])
    # German words, umlauts intact: the host wrote UTF-8, and quickmig kept the message whole
    assert str(e.value).startswith("'de-aus' konnte den Zustand nicht ändern. Der Vorgang kann im aktuellen "
                                   "Zustand des Objekts nicht ausgeführt werden."), str(e.value)
    assert "In Zeile" not in str(e.value) and e.value.category == "InvalidOperation"


def test_a_migration_on_a_german_lab_completes_and_keeps_every_write(de_lab):
    de_lab.add_vm("de-basic", "hv1", write_rate_kbps=128)
    time.sleep(1)
    res, rec = migrate(de_lab, "de-basic", "hv1", "hv2")
    assert rec["state"] == "completed", (rec.get("error"), res.stderr)
    check = de_lab.verify("de-basic")
    assert check["running_on"] == ["hv2"] and check["integrity"] == "ok", check
    assert check["state_by_host"].get("hv1") in (None, "Absent", "absent")


def test_a_failed_import_on_a_german_lab_rolls_back_and_the_vm_runs_on(de_lab):
    de_lab.add_vm("de-rollback", "hv1", write_rate_kbps=64)
    de_lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        res, rec = migrate(de_lab, "de-rollback", "hv1", "hv3")
    finally:
        de_lab.emulator("hv3").clear_faults()
    assert rec["state"] == "rolled_back", rec.get("error")
    assert "import refused" in rec["error"]
    check = de_lab.verify("de-rollback")
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    vm = next(v for v in de_lab.emulator("hv1").state()["vms"] if v["name"] == "de-rollback")
    assert vm["snapshots"] == [] and vm["state"] == "Running"


def test_refusals_on_a_german_lab_still_name_their_cause(de_lab):
    res = de_lab.cli("migrate", "de-nobody", "--from", "hv1", "--to", "hv2")
    assert res.returncode == 2 and "unknown VM 'de-nobody'" in res.stderr, res.stderr
    de_lab.add_vm("de-switch", "hv1", switches=["prod-net"])
    rec = migrate_refused(de_lab, "de-switch", "hv1", "hv2")
    assert "pre-flight refused" in rec["error"] and "'prod-net'" in rec["error"], rec["error"]


def test_a_german_hosts_heartbeat_status_words_do_not_decide_a_refusal(de_lab):
    """The Heartbeat service's status text is in the host's language ("Kein Kontakt"):
    pre-flight reads its status code, so a guest without the service is refused, and one with
    it is not, on a German host as anywhere."""
    de_lab.add_vm("de-no-heartbeat", "hv1", write_rate_kbps=64, heartbeat=False)
    rec = migrate_refused(de_lab, "de-no-heartbeat", "hv1", "hv2")
    assert rec["state"] == "rolled_back" and rec.get("save_started_at") is None, rec
    assert "pre-flight refused" in rec["error"] and "'Kein Kontakt', not OK" in rec["error"], rec["error"]
    assert de_lab.verify("de-no-heartbeat")["running_on"] == ["hv1"]


def test_a_compare_vm_refusal_on_a_german_lab_names_the_switch_and_its_message_id(de_lab):
    """Phase 3: the destination loses the VM's switch after pre-flight passed; Compare-VM's
    German message reaches the record whole, with its MessageId."""
    de_lab.add_vm("de-compare", "hv1", write_rate_kbps=64)
    dst = de_lab.emulator("hv3")
    dst.inject_fault(op="compare_vm", action="delay", seconds=5, times=1)
    store = Store(de_lab.redis())
    try:
        res = de_lab.cli("migrate", "de-compare", "--from", "hv1", "--to", "hv3")
        assert res.returncode == 0, res.stderr
        mid = res.stdout.strip()
        deadline = time.monotonic() + 120
        while store.get(mid)["state"] not in ("preparing", "rolled_back", "failed", "completed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dst.set_host(switches=["anderer-switch"])
        while store.get(mid)["state"] not in ("rolled_back", "failed", "completed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rec = store.get(mid)
    finally:
        dst.clear_faults()
        dst.reset_host()
    assert rec["state"] == "rolled_back", rec["error"]
    assert "33012: Der Ethernet-Switch 'lab-switch' wurde nicht gefunden." in rec["error"], rec["error"]
    assert de_lab.verify("de-compare")["running_on"] == ["hv1"]


def test_an_error_quickmig_cannot_classify_still_says_what_the_host_said(de_lab):
    with pytest.raises(HyperVError) as e:
        driver(de_lab, "hv1").run("file_hash", {"path": "D:\\VMs\\hv1\\nicht-da.vhdx", "scheme": "sha256"})
    assert type(e.value) is HyperVError and e.value.fqid == "NotAFile"
    assert str(e.value) == "file_hash berechnet Hashwerte nur für Dateien; D:\\VMs\\hv1\\nicht-da.vhdx ist keine Datei."


def test_a_ws_man_fault_keeps_its_codes_and_gives_its_reason_in_german(de_lab):
    creds = de_lab.cfg.credentials("hv1")
    p = Protocol(de_lab.cfg.host("hv1").winrm_endpoint, transport="basic", username=creds.winrm_username,
                 password=creds.winrm_password, operation_timeout_sec=5, read_timeout_sec=10, proxy=None)
    with pytest.raises(WSManFaultError) as e:
        p.get_command_output_raw("F00D0000-0000-0000-0000-000000000000", "C0DE")
    assert e.value.wsman_fault_code == 2150858843 and e.value.fault_subcode == "w:InvalidSelectors"
    assert "Shell auf dem Server nicht gefunden" in e.value.reason, e.value.reason


def test_every_message_the_german_hosts_wrote_had_its_translation(de_lab):
    # runs last in this module: nothing the hosts said above went out in English
    logs = sorted((de_lab.dir / "logs").glob("emulator-*.log"))
    assert logs
    untranslated = [line for log in logs for line in log.read_text(errors="replace").splitlines()
                    if "no translation for the message" in line]
    assert untranslated == []
