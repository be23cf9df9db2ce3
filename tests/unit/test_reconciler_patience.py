"""When the reconciler counts a migration as stuck: not while a step's countdown is still to come."""
from workers.engine.reconciler import _recently_active

NOW = 10_000.0


def test_a_record_changed_within_the_deadline_is_active():
    assert _recently_active({"updated_at": NOW - 50}, NOW, 60)
    assert not _recently_active({"updated_at": NOW - 70}, NOW, 60)


def test_a_retry_in_backoff_or_a_window_look_to_come_is_not_stuck():
    old = NOW - 500
    assert _recently_active({"updated_at": old, "retry": {"next_at": NOW + 5}}, NOW, 60)
    assert _recently_active({"updated_at": old, "resume_at": NOW + 20}, NOW, 60)
    # ... but one whose countdown passed long ago (the worker holding it died) is
    assert not _recently_active({"updated_at": old, "resume_at": NOW - 100}, NOW, 60)
