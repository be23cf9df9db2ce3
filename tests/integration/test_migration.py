"""End to end in the lab: producer -> Redis -> the three worker pools -> emulated
Hyper-V over WinRM, disks over SMB3. Each test uses VMs of its own."""
import time

import pytest

from workers.model import keys

pytestmark = pytest.mark.integration


def migrate(lab, vm, src, dst, *extra):
    res, rec = lab.cli_json("migrate", vm, "--from", src, "--to", dst, "--wait", "--json", "--timeout", "240",
                            *extra)
    return res, rec


def migrate_refused(lab, vm, src, dst) -> dict:
    """A migration the pre-flight refuses, both ways it can be asked for. The CLI, holding the
    hosts' credentials, refuses it at submit: exit 2, one line, nothing written to Redis. A
    request that reaches the workers unchecked (as over the API or the intake) is refused by
    their pre-flight before the checkpoint: the record it ends with is returned."""
    from producer.migrations import MigrationRequest, Producer
    before = lab.redis_state()
    res = lab.cli("migrate", vm, "--from", src, "--to", dst)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "pre-flight refused: " in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr and not res.stdout.strip(), res.stdout
    assert lab.redis_state() == before
    producer = Producer(lab.cfg)
    mid = producer.enqueue(MigrationRequest(vm, src, dst, {}))["id"]
    rec = producer.wait(mid, timeout_s=240)
    assert rec["state"] == "rolled_back" and "pre-flight refused" in rec["error"], rec
    cli_reason = res.stderr.strip().split("pre-flight refused: ", 1)[1]
    assert rec["error"].endswith(cli_reason), (cli_reason, rec["error"])
    return rec


def test_a_running_vm_migrates_and_keeps_every_write(lab):
    lab.add_vm("e2e-basic", "hv1", write_rate_kbps=128)
    time.sleep(1)
    res, rec = migrate(lab, "e2e-basic", "hv1", "hv2")
    assert res.returncode == 0, (rec.get("error"), res.stderr)
    assert rec["state"] == "completed"
    for field in ("id", "vm", "source", "destination", "downtime_seconds", "bytes_copied", "phases", "error"):
        assert field in rec
    assert rec["vm"] == "e2e-basic" and rec["source"] == "hv1" and rec["destination"] == "hv2"
    assert rec["error"] is None
    assert 0 < rec["downtime_seconds"] < 60
    assert rec["bytes_copied"] >= 16 * 2**20  # at least the base disk
    for phase in ("snapshot", "copy", "prepare", "cutover", "finish"):
        span = rec["phases"][phase]
        assert span["end"] >= span["start"]
    check = lab.verify("e2e-basic")
    assert check["running_on"] == ["hv2"]
    assert check["integrity"] == "ok", check
    assert check["writes_checked"] > 0
    assert check["state_by_host"].get("hv1") in (None, "Absent", "absent")
    # the migration's lease is gone
    assert lab.redis().get(keys.vm_lock(check.get("vm_id", rec["vm_id"]))) is None


def test_a_failed_import_rolls_back_and_the_vm_keeps_running_on_the_source(lab):
    lab.add_vm("e2e-rollback", "hv1", write_rate_kbps=64)
    lab.emulator("hv3").inject_fault(op="import_vm", action="fail", message="injected: import refused", times=1)
    try:
        res, rec = migrate(lab, "e2e-rollback", "hv1", "hv3")
    finally:
        lab.emulator("hv3").clear_faults()
    assert res.returncode == 1
    assert rec["state"] == "rolled_back"
    assert "import refused" in rec["error"]
    check = lab.verify("e2e-rollback")
    assert check["running_on"] == ["hv1"]
    assert check["integrity"] == "ok", check
    # nothing of it is left on the destination, and the checkpoint was merged on the source
    state = lab.emulator("hv1").state()
    vm = next(v for v in state["vms"] if v["name"] == "e2e-rollback")
    assert vm["snapshots"] == []
    assert not list((lab.dir / "hosts" / "hv3" / "share").glob(f"{vm['id']}*"))
    # and it can be migrated again afterwards
    res, rec = migrate(lab, "e2e-rollback", "hv1", "hv3")
    assert rec["state"] == "completed", rec["error"]
    assert lab.verify("e2e-rollback")["integrity"] == "ok"


def test_a_second_migration_of_a_migrating_vm_is_refused(lab):
    lab.add_vm("e2e-busy", "hv2")
    lab.emulator("hv2").inject_fault(op="checkpoint_vm", action="delay", seconds=4, times=1)
    first = lab.cli("migrate", "e2e-busy", "--from", "hv2", "--to", "hv1")
    assert first.returncode == 0, first.stderr
    mid = first.stdout.strip()
    second = lab.cli("migrate", "e2e-busy", "--from", "hv2", "--to", "hv3")
    assert second.returncode == 2
    assert "already being migrated" in second.stderr and mid in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    res, rec = lab.cli_json("status", mid, "--json")
    deadline = time.time() + 240
    while rec["state"] not in ("completed", "failed", "rolled_back") and time.time() < deadline:
        time.sleep(0.5)
        res, rec = lab.cli_json("status", mid, "--json")
    assert rec["state"] == "completed", rec["error"]
    assert rec["destination"] == "hv1"


@pytest.mark.parametrize("args, says", [
    (("no-such-vm", "--from", "hv1", "--to", "hv2"), "unknown VM"),
    (("e2e-bad", "--from", "hv1", "--to", "hv9"), "unknown destination host"),
    (("e2e-bad", "--from", "hv0", "--to", "hv2"), "unknown source host"),
    (("e2e-bad", "--from", "hv2", "--to", "hv3"), "is not on hv2"),
    (("e2e-bad", "--from", "hv1", "--to", "hv1"), "source and destination"),
])
def test_a_bad_request_is_refused_and_changes_nothing(lab, args, says):
    if not any(v["name"] == "e2e-bad" for v in lab.emulator("hv1").state()["vms"]):
        lab.add_vm("e2e-bad", "hv1")
    r = lab.redis()
    before = lab.redis_state()
    queues = {q: r.llen(q) for q in ("snapshot", "copy", "cutover")}
    res = lab.cli("migrate", *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], res.stderr
    assert lab.redis_state() == before
    assert {q: r.llen(q) for q in ("snapshot", "copy", "cutover")} == queues
    assert lab.verify("e2e-bad")["running_on"] == ["hv1"]


@pytest.mark.parametrize("name", ["x'; Remove-VM * -Force; '", 'Überweisung "prod" 01'])
def test_names_hyper_v_accepts_migrate_like_any_other(lab, name):
    lab.add_vm(name, "hv3")
    lab.add_vm(f"bystander {len(name)}", "hv3")

    def everywhere():
        return {(h, v["name"]) for h in lab.cfg.hosts for v in lab.emulator(h).state()["vms"]}

    before = everywhere()
    res, rec = migrate(lab, name, "hv3", "hv1")
    assert rec["state"] == "completed", rec["error"]
    assert rec["vm"] == name
    check = lab.verify(name)
    assert check["running_on"] == ["hv1"] and check["integrity"] == "ok", check
    # every other VM is where it was: the name was never run as code
    assert everywhere() == (before - {("hv3", name)}) | {("hv1", name)}
