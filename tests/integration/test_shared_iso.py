"""ISO images several migrated VMs share on a destination (workers.coord.shared_files), in a lab
of its own: two migrations bringing the same new image at once, and rollbacks of the
migration that copied an image, of one that shared it, and of its last user."""
import time

import pytest

from lab.emulator.lifecycle import ISO_NAME

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def iso_lab(own_lab):
    with own_lab("isolab") as lab:
        yield lab


def start(lab, vm: str, source: str, destination: str, **options) -> str:
    from producer.migrations import MigrationRequest
    return lab.producer.enqueue(MigrationRequest(vm, source, destination, options))["id"]


def iso_on(lab, host: str):
    return lab.dir / "hosts" / host / "share" / "ISO" / ISO_NAME


def iso_entry(rec: dict) -> dict:
    return next(c for c in rec["copied"] if c["path"].endswith(ISO_NAME))


def wait_until(lab, mid: str, ok, bound_s: float = 120) -> dict:
    deadline = time.monotonic() + bound_s
    while True:
        rec = lab.producer.get(mid)
        if ok(rec):
            return rec
        assert time.monotonic() < deadline, f"{mid}: {rec['state']} after {bound_s}s"
        time.sleep(0.1)


def held_before_its_window(lab, vm: str, source: str, destination: str) -> str:
    """A migration that copies everything, then waits an hour for its cutover window."""
    opens = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600)) + "Z"
    mid = start(lab, vm, source, destination, not_before=opens, window="10m")
    wait_until(lab, mid, lambda r: any(c["path"].endswith(ISO_NAME) for c in r.get("copied", [])))
    return mid


def ended(lab, mid: str) -> dict:
    return lab.producer.wait(mid, timeout_s=180)


def test_two_migrations_bringing_the_same_new_image_copy_it_once_and_both_complete(iso_lab):
    lab = iso_lab
    for vm in ("iso-a", "iso-b"):
        lab.add_vm(vm, "hv1", disk_mb=8)
    assert not iso_on(lab, "hv3").exists()
    mids = [start(lab, vm, "hv1", "hv3") for vm in ("iso-a", "iso-b")]
    recs = [ended(lab, m) for m in mids]
    assert [r["state"] for r in recs] == ["completed", "completed"], [r["error"] for r in recs]
    isos = sorted((r["copied_by_kind"]["iso"] for r in recs), key=lambda k: k["shared"])
    assert isos[0]["files"] == 1 and isos[0]["bytes"] == iso_on(lab, "hv3").stat().st_size and not isos[0]["shared"]
    assert isos[1]["files"] == isos[1]["shared"] == 1 and isos[1]["bytes"] == 0, isos  # found there, verified
    for vm in ("iso-a", "iso-b"):
        check = lab.verify(vm)
        assert check["integrity"] == "ok" and check["running_on"] == ["hv3"], check


def test_a_rollback_keeps_an_image_another_vm_uses_and_the_last_user_removes_it(iso_lab):
    lab = iso_lab
    for vm in ("iso-c", "iso-d", "iso-e"):
        lab.add_vm(vm, "hv1", disk_mb=8)
    assert not iso_on(lab, "hv2").exists()
    creator = held_before_its_window(lab, "iso-c", "hv1", "hv2")  # copies the image to hv2
    assert not iso_entry(lab.producer.get(creator)).get("shared")
    sharer = held_before_its_window(lab, "iso-d", "hv1", "hv2")  # finds it there
    assert iso_entry(lab.producer.get(sharer)).get("shared") is True

    lab.producer.cancel(creator)  # the one that copied it rolls back: iso-d still needs it
    assert ended(lab, creator)["state"] == "rolled_back"
    assert iso_on(lab, "hv2").exists()

    lab.producer.cancel(sharer)  # the last user rolls back: the image quickmig brought goes
    assert ended(lab, sharer)["state"] == "rolled_back"
    assert not iso_on(lab, "hv2").exists()
    for vm in ("iso-c", "iso-d"):
        check = lab.verify(vm)
        assert check["integrity"] == "ok" and check["running_on"] == ["hv1"], check

    # a migration that completes keeps its image through a later sharer's rollback
    done = ended(lab, start(lab, "iso-e", "hv1", "hv2"))
    assert done["state"] == "completed", done["error"]
    again = held_before_its_window(lab, "iso-c", "hv1", "hv2")
    lab.producer.cancel(again)
    assert ended(lab, again)["state"] == "rolled_back"
    assert iso_on(lab, "hv2").exists()
    assert lab.verify("iso-e")["integrity"] == "ok"


def test_an_image_that_was_there_before_quickmig_is_never_removed(iso_lab):
    lab = iso_lab
    lab.add_vm("iso-native", "hv3", disk_mb=8)  # hv3 has its own image now (or already had)
    lab.add_vm("iso-f", "hv2", disk_mb=8)
    # hv3's image came with test 1 (quickmig's) or add_vm; make it one quickmig did not bring
    r = lab.redis()
    for k in r.scan_iter("quickmig:iso:hv3:*"):
        r.delete(k)
    mid = held_before_its_window(lab, "iso-f", "hv2", "hv3")
    assert iso_entry(lab.producer.get(mid)).get("shared") is True
    lab.producer.cancel(mid)
    assert ended(lab, mid)["state"] == "rolled_back"
    assert iso_on(lab, "hv3").exists()
