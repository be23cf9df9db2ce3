from lab.history import overlaps


def ev(t, host, event, vm="v1"):
    return {"t": t, "host": host, "event": event, "vm_id": vm}


def test_a_handover_through_save_is_no_overlap():
    events = [ev(1, "hv1", "start"), ev(5, "hv1", "save"), ev(6, "hv2", "import"), ev(7, "hv2", "start")]
    assert overlaps(events) == []


def test_a_start_while_another_host_runs_the_vm_is_an_overlap():
    events = [ev(1, "hv1", "start"), ev(4, "hv2", "start"), ev(5, "hv1", "stop")]
    found = overlaps(events)
    assert len(found) == 1
    assert found[0]["started_on"] == "hv2" and found[0]["still_running_on"] == ["hv1"]


def test_overlaps_are_per_vm_and_in_time_order_whatever_the_file_order():
    events = [ev(4, "hv2", "start", "b"), ev(1, "hv1", "start", "a"), ev(2, "hv1", "save", "a"),
              ev(3, "hv2", "start", "a"), ev(1, "hv1", "start", "b")]
    found = overlaps(events)
    assert [o["vm_id"] for o in found] == ["b"]
    assert overlaps(events, "a") == []


def test_a_recover_on_the_same_host_is_not_an_overlap():
    assert overlaps([ev(1, "hv1", "start"), ev(2, "hv1", "recover")]) == []


def mig(t, host, event, vm="v1", snap="quickmig-m1", sid="s1"):
    e = ev(t, host, event, vm)
    if event in ("checkpoint", "merge"):
        e.update(snapshot=snap, snapshot_id=sid)
    return e


def completed(t0, src, dst, vm, snap):
    return [mig(t0, src, "checkpoint", vm, snap), mig(t0 + 1, dst, "file_hash", vm),
            mig(t0 + 2, src, "save", vm), mig(t0 + 3, dst, "import", vm), mig(t0 + 4, dst, "start", vm),
            mig(t0 + 5, dst, "merge", vm, snap), mig(t0 + 6, src, "remove", vm)]


def test_a_completed_migration_spans_checkpoint_to_source_removal_on_both_hosts():
    from lab.history import migration_spans
    [span] = migration_spans([ev(0, "hv1", "start")] + completed(10, "hv1", "hv2", "v1", "quickmig-m1")
                             + [ev(30, "hv2", "stop")])
    assert (span["start"], span["end"], span["hosts"], span["open"]) == (10, 16, ["hv1", "hv2"], False)


def test_a_rollback_ends_when_every_checkpoint_taken_for_it_is_merged_on_the_source():
    from lab.history import migration_spans
    events = [mig(1, "hv1", "checkpoint", sid="a"), mig(2, "hv1", "checkpoint", sid="b"),  # a pre-copy round
              mig(3, "hv2", "delete"), mig(4, "hv1", "merge", sid="b"), mig(5, "hv1", "merge", sid="a"),
              ev(9, "hv1", "save")]
    [span] = migration_spans(events)
    assert (span["start"], span["end"], span["hosts"], span["open"]) == (1, 5, ["hv1", "hv2"], False)


def test_concurrent_migrations_per_host_count_both_ends_and_handovers_are_not_overlaps():
    from lab.history import max_concurrent_migrations
    events = (completed(0, "hv1", "hv2", "a", "quickmig-1") + completed(2, "hv3", "hv1", "b", "quickmig-2")
              + completed(6, "hv2", "hv3", "c", "quickmig-3")  # starts as a's span (0..6) ends
              + [mig(1, "hv1", "checkpoint", "d", "not-ours")])  # a checkpoint quickmig did not take
    assert max_concurrent_migrations(events) == {"hv1": 2, "hv2": 1, "hv3": 2}
