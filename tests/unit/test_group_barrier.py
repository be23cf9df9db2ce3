"""A together group's barriers (workers.coord.group_barrier) against a real redis-server: the
last member in is told so exactly once, an abort wins over every later arrival, and none is
possible past the point of no return."""
import threading
import time

from workers.coord.group_barrier import IMPORTED, PREPARED, GroupBarrier


def test_the_last_member_in_is_told_so_once_and_later_arrivals_go(r):
    b = GroupBarrier(r, "p1", "app", 3)
    assert [b.arrive(PREPARED, m, 60).what for m in ("a", "b")] == ["wait", "wait"]
    assert b.arrive(PREPARED, "a", 60).what == "wait"  # an arrival again (a re-sent step) counts once
    assert b.arrive(PREPARED, "c", 60).what == "last"
    assert b.arrive(PREPARED, "a", 60).what == "go"
    st = b.state()
    assert st[PREPARED] == ["a", "b", "c"] and "go_at" in st and "start_at" not in st
    assert b.arrive(IMPORTED, "a", 60).what == "wait"


def test_members_arriving_at_once_make_exactly_one_last(r):
    b = GroupBarrier(r, "p1", "app", 8)
    got: list[str] = []
    threads = [threading.Thread(target=lambda m=m: got.append(b.arrive(PREPARED, m, 60).what))
               for m in "abcdefgh"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["last"] + ["wait"] * 7


def test_an_abort_rolls_every_member_back_until_the_point_of_no_return(r):
    b = GroupBarrier(r, "p1", "app", 2)
    assert b.arrive(PREPARED, "a", 60).what == "wait"
    assert b.abort("app/b: cutover: import broke") == 1
    assert b.abort("again") == 0  # the first reason stays
    v = b.arrive(PREPARED, "b", 60)
    assert (v.what, v.why) == ("abort", "app/b: cutover: import broke")
    assert b.arrive(IMPORTED, "a", 60).what == "abort"
    # another group: both imported is its point of no return, an abort comes too late
    g = GroupBarrier(r, "p1", "db", 2)
    for m in ("a", "b"):
        g.arrive(PREPARED, m, 60)
    assert g.arrive(IMPORTED, "a", 60).what == "wait"
    assert g.arrive(IMPORTED, "b", 60).what == "last"
    assert g.abort("too late") == -1 and "abort" not in g.state()


def test_a_group_waits_no_longer_than_its_bound(r):
    b = GroupBarrier(r, "p1", "app", 2)
    assert b.arrive(PREPARED, "a", 0.2).what == "wait"
    assert b.overdue(time.time(), 0.2, 60) is None
    time.sleep(0.3)
    assert "1 of 2" in (b.overdue(time.time(), 0.2, 60) or "")
    v = b.arrive(PREPARED, "b", 0.2)  # the last one, but too late: the group rolls back
    assert v.what == "abort" and "waited more than 0.2 s" in v.why
    assert b.arrive(PREPARED, "a", 0.2).what == "abort"
