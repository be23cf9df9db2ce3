"""Admission (workers.coord.admission) against a real redis-server: the Lua step that starts
migrations only while both their hosts have room."""
import json
import time

import pytest

from workers.coord.admission import Admission, max_concurrency
from workers.model import keys
from workers.model.config import ConfigError, load_config


def line_up(adm, *routes):
    for mid, src, dst in routes:
        adm.wait(mid, src, dst)
        time.sleep(0.002)  # distinct scores: FIFO order is enqueue order


def test_a_migration_takes_places_on_both_hosts_or_none(r):
    adm = Admission(r, {"a": 1, "b": 1, "c": 1})
    line_up(adm, ("m1", "a", "b"))
    assert adm.admit() == ["m1"]
    line_up(adm, ("m2", "b", "c"))  # b is full: m2 must not take c alone
    assert adm.admit() == []
    assert adm.holders("c") == set() and adm.is_waiting("m2")
    assert adm.release("m1", ["a", "b"]) == 2
    assert adm.admit() == ["m2"]
    assert adm.holders("b") == {"m2"} and adm.holders("c") == {"m2"} and not adm.is_waiting("m2")


def test_first_in_first_admitted_and_a_blocked_one_does_not_hold_up_those_that_fit(r):
    adm = Admission(r, {"a": 1, "b": 1, "c": 1, "d": 1})
    line_up(adm, ("busy", "a", "b"))
    assert adm.admit() == ["busy"]
    line_up(adm, ("m1", "a", "c"), ("m2", "c", "d"), ("m3", "d", "b"))
    assert adm.admit() == ["m2"]  # m1 waits for a; m2 fits; m3 then finds d taken
    assert adm.waiting_ids() == ["m1", "m3"]
    adm.release("busy", ["a", "b"])
    adm.release("m2", ["c", "d"])
    assert adm.admit() == ["m1", "m3"]  # in the order they waited


def test_one_that_waited_too_long_reserves_its_hosts(r):
    adm = Admission(r, {"a": 1, "b": 1, "c": 1}, reserve_after_s=0.2)
    line_up(adm, ("busy", "a", "c"))
    assert adm.admit() == ["busy"]
    line_up(adm, ("old", "a", "b"), ("young", "b", "c"))
    adm.release("busy", ["c"])  # c free again, a still busy
    assert adm.admit() == ["young"]  # old has not waited long enough to reserve b
    adm.release("young", ["b", "c"])
    line_up(adm, ("later", "b", "c"))
    time.sleep(0.3)
    assert adm.admit() == []  # old (blocked on a) now keeps b for itself
    adm.release("busy", ["a"])
    assert adm.admit() == ["old"]


def test_the_limit_is_per_host(r):
    adm = Admission(r, {"a": 3, "b": 1, "c": 2, "d": 2})
    line_up(adm, *[(f"m{i}", "a", "c" if i < 2 else "d") for i in range(4)], ("x", "b", "c"))
    assert adm.admit() == ["m0", "m1", "m2"]  # a takes 3; c is full after 2, so x waits
    assert len(adm.holders("a")) == 3 and adm.waiting_ids() == ["m3", "x"]


def test_release_logs_only_what_was_held_and_the_log_replays_to_the_peak(r):
    adm = Admission(r, {"a": 2, "b": 2, "c": 2})
    line_up(adm, ("m1", "a", "b"), ("m2", "a", "c"), ("m3", "a", "b"))
    assert adm.admit() == ["m1", "m2"]
    assert adm.release("m1", ["a", "b"]) == 2
    assert adm.release("m1", ["a", "b"]) == 0  # twice (a redelivered end) changes nothing
    assert adm.admit() == ["m3"]
    log = adm.log()
    assert [(e["event"], e["migration"]) for e in log] == [
        ("admit", "m1"), ("admit", "m2"), ("release", "m1"), ("admit", "m3")]
    assert max_concurrency(log) == {"a": 2, "b": 1, "c": 1}


def test_a_route_without_a_known_host_waits_and_a_withdrawn_one_leaves_the_line(r):
    adm = Admission(r, {"a": 2, "b": 2})
    line_up(adm, ("gone", "a", "zz"), ("w", "a", "b"))
    adm.withdraw("w")
    assert adm.admit() == []
    assert adm.waiting_ids() == ["gone"] and not r.hexists(keys.ADMISSION_ROUTES, "w")


def test_reasons_say_which_host_is_full(r):
    adm = Admission(r, {"hv1": 2, "hv2": 2, "hv3": 2})
    line_up(adm, ("m1", "hv1", "hv2"), ("m2", "hv1", "hv3"), ("m3", "hv1", "hv2"))
    adm.admit()
    recs = [{"id": m, "state": "queued", "source": "hv1", "destination": d}
            for m, d in (("m1", "hv2"), ("m3", "hv2"))]
    assert adm.reasons(recs) == {"m3": "waiting: hv1 has 2 migrations (limit 2)"}


def test_a_migration_whose_host_left_the_inventory_says_so_while_it_waits(r):
    line_up(Admission(r, {"hv1": 2, "hv9": 2}), ("m9", "hv1", "hv9"))
    adm = Admission(r, {"hv1": 2})  # hv9 taken out of quickmig.toml meanwhile
    assert adm.admit() == []
    assert adm.reasons([{"id": "m9", "state": "queued", "source": "hv1", "destination": "hv9"}]) == {
        "m9": "waiting: hv9 is not in the inventory (quickmig.toml); it waits until the host is back, or cancel it"}


@pytest.mark.parametrize("value", ["0", "-1", "1.5", '"2"', "true"])
def test_max_migrations_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    cfg = tmp_path / "quickmig.toml"
    cfg.write_text('redis_url = "redis://127.0.0.1:1/0"\n[hosts.hv1]\nwinrm_endpoint = "http://x/wsman"\n'
                   f'vm_root = "D:\\\\VMs"\nsmb_server = "x"\nsmb_share = "s"\nmax_migrations = {value}\n')
    with pytest.raises(ConfigError, match="hv1.*max_migrations must be a whole number of at least 1"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace(f"max_migrations = {value}", "max_migrations = 5"))
    assert load_config(cfg).host("hv1").max_migrations == 5
    cfg.write_text(cfg.read_text().replace("max_migrations = 5\n", ""))
    assert load_config(cfg).host("hv1").max_migrations == 2


def test_the_log_entries_carry_redis_time_and_hosts(r):
    adm = Admission(r, {"a": 1, "b": 1})
    line_up(adm, ("m1", "a", "b"))
    adm.admit()
    e = json.loads(r.lindex(keys.ADMISSION_LOG, -1))
    assert e["hosts"] == ["a", "b"] and abs(e["at"] - time.time()) < 5 and e["waited"] >= 0
