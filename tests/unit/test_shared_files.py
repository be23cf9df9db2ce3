"""ISO images shared on a destination (workers.coord.shared_files) against a real redis-server:
one migration at a time decides on an image, and a rollback deletes only an image quickmig
put there, with its last user."""
import threading
import time

from workers.coord.shared_files import SharedFiles

ISO = r"C:\ISO\tools.iso"


def test_a_second_migration_waits_while_the_first_decides_and_joins_the_users_when_it_may(r):
    iso = SharedFiles(r, poll_s=0.02)
    waited, order = [], []

    def second():
        with iso.deciding("hv2", ISO, "m2", on_wait=waited.append):
            order.append("m2")

    with iso.deciding("hv2", ISO, "m1"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        assert order == [] and waited == ["m1"]  # m2 saw m1 holding the image
        assert iso.users("hv2", ISO) == {"m1"}  # m2 is not a user before it holds the lease
        order.append("m1")
    t.join(5)
    assert order == ["m1", "m2"] and iso.users("hv2", ISO) == {"m1", "m2"}


def test_the_image_is_deleted_with_its_last_user_only(r):
    iso = SharedFiles(r)
    with iso.deciding("hv2", ISO, "m1"):
        iso.mark_ours("hv2", ISO)  # m1 copies it
    with iso.deciding("hv2", ISO, "m2"):
        pass  # m2 found it there and shares it
    assert iso.leave("hv2", ISO, "m1") is False  # m1 rolls back: m2's VM still uses it
    assert iso.users("hv2", ISO) == {"m2"}
    assert iso.leave("hv2", ISO, "m2") is True  # m2 rolls back too: the last user deletes it
    assert iso.leave("hv2", ISO, "m2") is True  # and a retried rollback decides the same
    assert r.get(next(iter(r.scan_iter("quickmig:iso:*:lease")))) == "m2"  # held while deleting
    taken = threading.Event()

    def third():
        with SharedFiles(r, poll_s=0.02).deciding("hv2", ISO, "m3"):
            taken.set()
    t = threading.Thread(target=third)
    t.start()
    assert not taken.wait(0.3)  # no one decides on the image while it is deleted
    iso.deleted("hv2", ISO, "m2")
    assert taken.wait(2)
    t.join(5)
    assert iso.leave("hv2", ISO, "m3") is False  # gone, and no longer ours: nothing to delete


def test_an_image_quickmig_did_not_put_there_is_never_deleted(r):
    iso = SharedFiles(r)
    with iso.deciding("hv2", ISO, "m1"):
        pass  # it was there before: shared, not marked ours
    assert iso.leave("hv2", ISO, "m1") is False


def test_a_killed_holders_lease_lapses(r):
    iso = SharedFiles(r, ttl_s=1, poll_s=0.05)
    from workers.model import keys
    r.set(keys.iso_lease("hv2", ISO), "m-dead", ex=1)  # the heartbeat died with its worker
    t0 = time.monotonic()
    with iso.deciding("hv2", ISO, "m2"):
        assert 0.5 < time.monotonic() - t0 < 3

