"""What a migration's end adds to the metrics, read back from the (single-process) registry."""
from prometheus_client import REGISTRY

from workers.obs import metrics


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ended(state, history, **fields):
    rec = {"state": state, "history": [{"state": s, "at": 0} for s in history],
           "phases": {"snapshot": {"start": 10.0, "end": 12.5}, "copy": {"start": 12.5}}}
    rec.update(fields)
    return rec


def test_a_completed_migration_counts_its_result_phases_switchover_and_prediction():
    before = {k: value(k) for k in ("quickmig_switchover_seconds_count", "quickmig_switchover_seconds_sum",
                                    "quickmig_predicted_switchover_seconds_count")}
    done = value("quickmig_migrations_total", result="completed")
    snap = value("quickmig_phase_duration_seconds_sum", phase="snapshot")
    copy_n = value("quickmig_phase_duration_seconds_count", phase="copy")
    metrics.observe_end(ended("completed", ["queued", "cutting_over", "finishing", "completed"],
                              downtime_seconds=3.5, predicted_downtime_seconds=3.0))
    assert value("quickmig_migrations_total", result="completed") == done + 1
    assert value("quickmig_phase_duration_seconds_sum", phase="snapshot") == snap + 2.5
    assert value("quickmig_phase_duration_seconds_count", phase="copy") == copy_n  # never ended: not observed
    assert value("quickmig_switchover_seconds_count") == before["quickmig_switchover_seconds_count"] + 1
    assert value("quickmig_switchover_seconds_sum") == before["quickmig_switchover_seconds_sum"] + 3.5
    assert value("quickmig_predicted_switchover_seconds_count") == \
        before["quickmig_predicted_switchover_seconds_count"] + 1
    assert value("quickmig_switchover_last_seconds") == 3.5


def test_a_rollback_counts_its_duration_but_is_not_a_switchover():
    n = value("quickmig_switchover_seconds_count")
    rb = value("quickmig_rollback_seconds_count")
    metrics.observe_end(ended("rolled_back", ["queued", "cutting_over", "rolling_back", "rolled_back"],
                              downtime_seconds=9.0, rollback_seconds=4.0))
    assert value("quickmig_switchover_seconds_count") == n
    assert value("quickmig_rollback_seconds_count") == rb + 1


def test_task_failures_are_labelled_by_exception_type_never_by_message():
    metrics.task_failed("copy", TimeoutError("secret path D:\\VMs\\web01"))
    text = "\n".join(f"{s.name}{s.labels}" for m in REGISTRY.collect() for s in m.samples
                     if s.name == "quickmig_task_failures_total")
    assert "TimeoutError" in text and "web01" not in text
