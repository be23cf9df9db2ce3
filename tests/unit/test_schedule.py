"""producer.schedule: the plan's predicted schedule follows the admission rules."""
import pytest

from producer.schedule import GroupSpec, HostLimits, Job, simulate

MB = 1e6


def job(key, src="a", dst="b", group="g", mb=100, bps=10 * MB, down=2.0, setup=1.0, gate=3.0, fin=1.0, **kw):
    return Job(key=key, group=group, source=src, destination=dst, copy_bytes=mb * MB, copy_bps=bps,
               downtime_s=down, setup_s=setup, gate_s=gate, finish_s=fin, **kw)


def hosts(names="abcdef", max_migrations=2, max_copies=2):
    return {h: HostLimits(max_migrations, max_copies) for h in names}


def by_key(res):
    return {j.key: j for j in res.jobs}


def test_one_member_runs_its_phases_one_after_another():
    res = simulate([job("x")], [GroupSpec("g", (), False)], hosts(), 4, start=1000.0)
    x = res.jobs[0]
    assert (x.start, x.copy_start, x.copy_end, x.cutover_start, x.finish) == pytest.approx(
        (1000, 1001, 1011, 1014, 1017))
    assert res.finish == pytest.approx(1017)
    assert res.problems == []


def test_the_plans_concurrency_makes_members_of_disjoint_hosts_wait():
    jobs = [job("x", "a", "b"), job("y", "c", "d"), job("z", "e", "f")]
    res = by_key(simulate(jobs, [GroupSpec("g", (), False)], hosts(), 2))
    assert res["x"].start == res["y"].start == 0
    assert res["z"].start == pytest.approx(min(res["x"].finish, res["y"].finish))


def test_max_migrations_counts_source_and_destination_and_a_later_member_with_free_hosts_goes_first():
    # a is source of x and destination of y: with max_migrations 2, z (a->c) waits; w (d->e) does not
    jobs = [job("x", "a", "b"), job("y", "c", "a"), job("z", "a", "c"), job("w", "d", "e")]
    res = by_key(simulate(jobs, [GroupSpec("g", (), False)], hosts(max_migrations=2), 10))
    assert res["x"].start == res["y"].start == res["w"].start == 0
    assert res["z"].start == pytest.approx(min(res["x"].finish, res["y"].finish))


def test_copy_slots_make_admitted_members_copy_in_turn():
    jobs = [job("x", "a", "b"), job("y", "a", "c")]
    res = by_key(simulate(jobs, [GroupSpec("g", (), False)], hosts(max_migrations=4, max_copies=1), 10))
    assert res["x"].start == res["y"].start == 0
    assert res["y"].copy_start == pytest.approx(res["x"].copy_end)


def test_a_bandwidth_limit_is_shared_by_the_copies_running_then():
    jobs = [job("x", "a", "b", mb=100), job("y", "c", "d", mb=100)]
    alone = by_key(simulate(jobs[:1], [GroupSpec("g", (), False)], hosts(), 10, global_bps=10 * MB))
    both = by_key(simulate([job("x", "a", "b"), job("y", "c", "d")], [GroupSpec("g", (), False)], hosts(), 10,
                           global_bps=10 * MB))
    assert alone["x"].copy_end - alone["x"].copy_start == pytest.approx(10)
    assert both["x"].copy_end - both["x"].copy_start == pytest.approx(20)
    # a pair's limit touches only that pair's copies
    pair = by_key(simulate([job("x", "a", "b"), job("y", "c", "d")], [GroupSpec("g", (), False)], hosts(), 10,
                           pair_bps={("a", "b"): 5 * MB}))
    assert pair["x"].copy_end - pair["x"].copy_start == pytest.approx(20)
    assert pair["y"].copy_end - pair["y"].copy_start == pytest.approx(10)


def test_a_freed_share_speeds_up_the_copy_still_running():
    jobs = [job("x", "a", "b", mb=50), job("y", "c", "d", mb=100)]
    res = by_key(simulate(jobs, [GroupSpec("g", (), False)], hosts(), 10, global_bps=10 * MB))
    # both at 5 MB/s for 10 s (x done), then y alone at 10 MB/s for its last 50 MB
    assert res["x"].copy_end - res["x"].copy_start == pytest.approx(10)
    assert res["y"].copy_end - res["y"].copy_start == pytest.approx(15)


def test_a_group_starts_only_after_the_groups_it_names_have_completed():
    jobs = [job("x", "a", "b", group="db", mb=300), job("y", "c", "d", group="db"), job("z", "e", "f", group="web")]
    groups = [GroupSpec("db", (), False), GroupSpec("web", ("db",), False)]
    res = simulate(jobs, groups, hosts(), 10)
    j = by_key(res)
    assert j["z"].start == pytest.approx(max(j["x"].finish, j["y"].finish))
    assert res.groups["web"]["start"] == pytest.approx(res.groups["db"]["finish"])


def test_a_together_group_cuts_over_at_once_when_its_slowest_member_is_ready():
    jobs = [job("x", "a", "b", group="app", mb=10), job("y", "c", "d", group="app", mb=300, down=4.0)]
    res = simulate(jobs, [GroupSpec("app", (), True)], hosts(), 10)
    j = by_key(res)
    assert j["x"].ready < j["y"].ready
    assert j["x"].cutover_start == j["y"].cutover_start == j["y"].ready
    assert res.groups["app"]["switchover_span"] == pytest.approx(4.0)
    indep = by_key(simulate([job("x", "a", "b", mb=10), job("y", "c", "d", mb=300)],
                            [GroupSpec("g", (), False)], hosts(), 10))
    assert indep["x"].cutover_start < indep["y"].cutover_start


def test_a_together_group_whose_members_are_ready_further_apart_than_it_waits_is_a_problem():
    # 10 MB and 36.01 GB at 10 MB/s: ready an hour apart
    jobs = [job("x", "a", "b", group="app", mb=10), job("y", "c", "d", group="app", mb=36_010)]
    apart = by_key(simulate(jobs, [GroupSpec("app", (), True)], hosts(), 10))
    gap = apart["y"].ready - apart["x"].ready
    assert 3590 < gap < 3610

    def problems(wait_s):
        fresh = [job("x", "a", "b", group="app", mb=10), job("y", "c", "d", group="app", mb=36_010)]
        return simulate(fresh, [GroupSpec("app", (), True, wait_s)], hosts(), 10).problems
    said = problems(1800.0)
    assert len(said) == 1 and said[0].startswith("group app switches over together but its members are "
                                                 "predicted ready 1h00m apart, more than the 30m00s it waits")
    assert problems(2 * 3600.0) == [] and problems(None) == []


def test_a_together_group_larger_than_the_hosts_allow_is_reported_not_waited_for():
    jobs = [job(f"m{i}", "a", "bcd"[i], group="app") for i in range(3)]
    res = simulate(jobs, [GroupSpec("app", (), True)], hosts(max_migrations=2), 10)
    assert res.finish is None
    assert any("a would need 3 migrations at once" in p for p in res.problems)
    assert sum(j.finish is None for j in res.jobs) == 3


def test_the_cutover_waits_for_its_window_and_a_missed_window_is_a_problem():
    res = simulate([job("x", not_before=100.0, window_end=200.0)], [GroupSpec("g", (), False)], hosts(), 4)
    assert res.jobs[0].cutover_start == pytest.approx(100)
    assert res.problems == []
    late = simulate([job("x", mb=1000, window_end=50.0)], [GroupSpec("g", (), False)], hosts(), 4)
    assert "window" in late.problems[0]


def test_the_predicted_finish_is_not_the_sum_of_the_members():
    jobs = [job(f"m{i}", "abc"[i % 3], "def"[i % 3]) for i in range(6)]
    res = simulate(jobs, [GroupSpec("g", (), False)], hosts(max_migrations=1), 3)
    one = 1 + 10 + 3 + 2 + 1
    assert res.finish == pytest.approx(2 * one)


def test_at_unix_times_a_copy_still_ends_where_its_rate_says():
    # at 1.79e9 s a float resolves only 2.4e-7 s: a copy's last bytes must not loop for ever
    t0 = 1_790_000_000.0
    jobs = [job(f"m{i}", "abc"[i % 3], "def"[i % 3], mb=16.7 + i, bps=47.3 * MB) for i in range(9)]
    res = simulate(jobs, [GroupSpec("g", (), False)], hosts(), 4, global_bps=61 * MB, start=t0)
    assert res.finish is not None and res.problems == []
    assert all(j.copy_end - j.copy_start >= j.copy_bytes / j.copy_bps - 1e-6 for j in res.jobs)
