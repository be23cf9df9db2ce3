"""Redis under Sentinel (issue 16 item 2), in a lab of its own (`lab up --redis sentinel`: a
master, a replica, three sentinels): three concurrent migrations stay correct through a
forced failover in the middle of their copies and again in the middle of a downtime. Each
ends completed or rolled back by itself, intact, on exactly one host.

A forced failover (SENTINEL FAILOVER) promotes the replica while the old master keeps
answering until the sentinels turn it into a replica (seconds later): whatever workers write
there meanwhile is lost. The fence makes that harmless: before a destructive step it
writes and WAITs for the replica, which an old master no longer has."""
import time

import pytest
import redis

from lab import orchestrator
from workers.model import states

pytestmark = pytest.mark.integration

ENDS = (states.COMPLETED, states.FAILED, states.ROLLED_BACK)
PAIRS = (("hv1", "hv2"), ("hv2", "hv3"), ("hv3", "hv1"))


@pytest.fixture(scope="module")
def sentinel_lab(own_lab):
    with own_lab("sentinellab", redis_mode="sentinel") as lab:
        yield lab


def sentinel(lab, i: int = 0) -> redis.Redis:
    ports = orchestrator.read_lab(lab.dir)["ports"]
    return redis.Redis(port=ports["sentinels"][i], decode_responses=True, socket_timeout=5)


def failover(lab) -> tuple:
    """Force a failover and wait until every sentinel names the new master."""
    before = sentinel(lab).sentinel_get_master_addr_by_name(orchestrator.SENTINEL_SERVICE)
    sentinel(lab).execute_command("SENTINEL FAILOVER", orchestrator.SENTINEL_SERVICE)
    deadline = time.monotonic() + 30
    while True:
        now = [sentinel(lab, i).sentinel_get_master_addr_by_name(orchestrator.SENTINEL_SERVICE) for i in range(3)]
        if all(a != before for a in now):
            return before, now[0]
        assert time.monotonic() < deadline, f"no failover within 30 s: master still {before}"
        time.sleep(0.1)


def records(lab, mids: list[str]) -> list[dict | None]:
    out: list[dict | None] = []
    for mid in mids:
        try:
            out.append(lab.producer.get(mid))
        except redis.RedisError:  # the master being replaced
            out.append(None)
    return out


def wait_until(lab, mids: list[str], ok, bound_s: float, what: str) -> list[dict]:
    deadline = time.monotonic() + bound_s
    while True:
        recs = records(lab, mids)
        if all(r is not None and ok(r) for r in recs):
            return recs  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what} not within {bound_s}s: {[r and r['state'] for r in recs]}"
        time.sleep(0.1)


def wait_any(lab, mids: list[str], state: str, bound_s: float, what: str) -> None:
    """Until one of the migrations is in `state` (polled often: the moment is short)."""
    deadline = time.monotonic() + bound_s
    while not any(r and r["state"] == state for r in records(lab, mids)):
        assert time.monotonic() < deadline, f"{what} within {bound_s:.0f} s"
        time.sleep(0.01)


def migrate_three(lab, tag: str, disk_mb: int = 48) -> tuple[list[str], list[str]]:
    from producer.migrations import MigrationRequest
    vms = []
    for i, (src, _) in enumerate(PAIRS):
        vms.append(f"{tag}{i}")
        lab.add_vm(vms[-1], src, disk_mb=disk_mb, memory_mb=16)
    mids = [lab.producer.enqueue(MigrationRequest(vm, src, dst))["id"]
            for vm, (src, dst) in zip(vms, PAIRS, strict=True)]
    return vms, mids


def assert_ended_whole(lab, vms: list[str], mids: list[str]) -> list[dict]:
    recs = wait_until(lab, mids, lambda r: r["state"] in ENDS, 240, "every migration's end")
    for vm, rec in zip(vms, recs, strict=True):
        assert rec["state"] in (states.COMPLETED, states.ROLLED_BACK), (vm, rec["state"], rec["error"])
        check = lab.verify(vm)
        assert check["integrity"] == "ok" and len(check["running_on"]) == 1, check
        assert not check.get("overlaps"), check
    return recs


def test_three_migrations_stay_whole_through_a_failover_in_the_middle_of_their_copies(sentinel_lab):
    lab = sentinel_lab
    res = lab.cli("throttle", "--global", "8M")  # copies that last long enough to fail over in
    assert res.returncode == 0, res.stderr
    try:
        vms, mids = migrate_three(lab, "sc", disk_mb=96)
        recs = wait_until(lab, mids, lambda r: r["state"] not in (states.QUEUED, states.SNAPSHOTTING), 90,
                          "all three past their checkpoint")
        assert states.COPYING in [r["state"] for r in recs], [r["state"] for r in recs]
        before, after = failover(lab)
        assert after != before
        recs = assert_ended_whole(lab, vms, mids)
    finally:
        lab.cli("throttle", "--global", "0")
    assert [r["state"] for r in recs].count(states.COMPLETED) >= 1, [r["state"] for r in recs]


def test_three_migrations_stay_whole_through_a_failover_in_the_middle_of_a_downtime(sentinel_lab):
    lab = sentinel_lab
    for _, dst in PAIRS:  # each import waits 3 s: the VMs are down (saved) meanwhile
        lab.emulator(dst).inject_fault(op="import_vm", action="delay", seconds=3, times=1)
    try:
        vms, mids = migrate_three(lab, "sd")
        wait_any(lab, mids, states.CUTTING_OVER, 90, "no migration reached its downtime")
        failover(lab)
        assert_ended_whole(lab, vms, mids)
    finally:
        for _, dst in PAIRS:
            lab.emulator(dst).clear_faults()


def test_a_failover_as_the_copies_end_never_lets_an_old_master_drive_the_switchover(sentinel_lab):
    """The harshest moment: the failover is forced as a migration leaves its copy, so its
    validation, downtime and the removal of its source would all run against the old
    master, whose writes the failover then throws away. The fence's WAIT stops them there."""
    lab = sentinel_lab
    vms, mids = migrate_three(lab, "sp")
    wait_any(lab, mids, states.PREPARING, 90, "no migration finished its copy")
    failover(lab)
    assert_ended_whole(lab, vms, mids)
