"""Where a rollback run inside a failed cutover goes when it fails itself (the real thing,
with a destination cut off, is tests/integration/test_infra_faults.py)."""
import pytest

from workers.hyperv.errors import InvalidVMState, TransportError
from workers.model.record import StaleState
from workers.steps import cutover


@pytest.fixture
def routed(monkeypatch):
    calls = {"transitions": [], "sent": [], "failed": []}

    class Store:
        def transition(self, mid, expect, to, **fields):
            calls["transitions"].append((mid, to))
            return {}

    monkeypatch.setattr(cutover.context, "store", lambda: Store())
    monkeypatch.setattr(cutover, "send", lambda task, mid: calls["sent"].append((task, mid)))
    monkeypatch.setattr(cutover, "fail_rollback", lambda mid, error: calls["failed"].append((mid, error)))

    def with_step(exc):
        def step(mid, lg):
            if exc is not None:
                raise exc
        monkeypatch.setattr(cutover.rollback, "__wrapped_step__", step)
        return calls
    return with_step


def test_an_unreachable_destination_hands_the_rollback_to_the_retrying_task(routed):
    calls = routed(TransportError("remove_vm on hv2: cannot reach the WinRM service"))
    cutover._rollback_now("m1", "cutover: start_vm failed")
    assert calls["transitions"] == [("m1", "rolling_back")]
    assert calls["sent"] == [("quickmig.rollback", "m1")] and calls["failed"] == []


def test_a_hard_failure_of_the_rollback_ends_the_migration_failed(routed):
    calls = routed(InvalidVMState("the VM is in an invalid state"))
    cutover._rollback_now("m2", "cutover: import_vm failed")
    assert calls["sent"] == [] and calls["failed"] == [("m2", "rollback: the VM is in an invalid state")]


def test_a_rollback_someone_else_moved_on_is_left_to_them(routed):
    calls = routed(StaleState("m3", {"rolling_back"}, "rolled_back"))
    cutover._rollback_now("m3", "x")
    assert calls["sent"] == [] and calls["failed"] == []


def test_a_rollback_that_succeeds_sends_nothing(routed):
    calls = routed(None)
    cutover._rollback_now("m4", "x")
    assert calls["sent"] == [] and calls["failed"] == []
