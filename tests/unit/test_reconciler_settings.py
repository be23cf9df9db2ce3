import types

import pytest

from workers import states
from workers.reconciler import DEFAULT_DEADLINES_S, DEFAULT_MAX_NUDGES, settings
from workers.pipeline import STEP_OF


def cfg(raw):
    return types.SimpleNamespace(raw=raw)


def test_every_active_state_has_a_deadline_and_a_step_to_resend():
    assert set(DEFAULT_DEADLINES_S) == set(states.ACTIVE) == set(STEP_OF)


def test_defaults_apply_without_a_reconciler_table():
    assert settings(cfg({})) == (DEFAULT_DEADLINES_S, DEFAULT_MAX_NUDGES)


def test_a_reconciler_table_overrides_some_deadlines_and_the_nudges():
    deadlines, nudges = settings(cfg({"reconciler": {"max_nudges": 5, "deadlines_s": {"copying": 7}}}))
    assert nudges == 5 and deadlines["copying"] == 7.0
    assert deadlines["queued"] == DEFAULT_DEADLINES_S["queued"]


def test_an_unknown_state_in_the_deadlines_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown state 'copy'"):
        settings(cfg({"reconciler": {"deadlines_s": {"copy": 7}}}))
