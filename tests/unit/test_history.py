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
