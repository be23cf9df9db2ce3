import itertools

import pytest

from workers.model import states


def test_every_active_state_can_reach_an_end():
    for start in states.ACTIVE:
        seen, todo = set(), [start]
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            todo.extend(states.ALLOWED[s])
        assert seen & states.ENDS, f"{start} can never end"


def test_ends_are_final():
    for end in states.ENDS:
        assert states.ALLOWED[end] == set()
        with pytest.raises(states.IllegalTransition):
            states.check(end, states.QUEUED)


def test_failures_before_the_switchover_roll_back_and_after_it_do_not():
    for s in (states.QUEUED, states.SNAPSHOTTING, states.COPYING, states.PREPARING, states.CUTTING_OVER):
        assert states.ROLLING_BACK in states.ALLOWED[s]
    assert states.ROLLING_BACK not in states.ALLOWED[states.FINISHING]


def test_the_happy_path_is_allowed_in_order():
    path = [states.QUEUED, states.SNAPSHOTTING, states.COPYING, states.PREPARING,
            states.CUTTING_OVER, states.FINISHING, states.COMPLETED]
    for a, b in itertools.pairwise(path):
        states.check(a, b)


def test_skipping_a_phase_is_refused():
    with pytest.raises(states.IllegalTransition):
        states.check(states.COPYING, states.CUTTING_OVER)
