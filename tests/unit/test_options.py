import pytest

from workers.model import options
from workers.steps import precopy

NOW = 1_800_000_000.0


def test_durations_and_times_parse_to_base_units():
    o = options.parse(max_downtime="1.5", on_exceed="proceed", max_rounds="2", window="15m",
                      not_before="2027-01-15T08:00:00Z", keep_source_hours="6", now=NOW)
    assert o == {"max_downtime_s": 1.5, "on_exceed": "proceed", "max_rounds": 2, "window_s": 900.0,
                 "not_before": options.moment("2027-01-15T08:00:00Z"),
                 "keep_source_hours": 6.0}
    assert o["not_before"] == options.moment("2027-01-15T08:00:00+00:00")
    assert options.parse(window="2h", now=NOW) == {"window_s": 7200.0, "not_before": NOW}
    assert options.of({"options": o}).window_end() == o["not_before"] + 900


@pytest.mark.parametrize("raw, says", [
    ({"max_downtime": "soon"}, "--max-downtime"),
    ({"max_downtime": "0"}, "--max-downtime"),
    ({"max_downtime": "2", "on_exceed": "retry"}, "--on-exceed"),
    ({"on_exceed": "abort"}, "only means something with --max-downtime"),
    ({"max_rounds": "-1"}, "--max-rounds"),
    ({"max_rounds": "21"}, "--max-rounds"),
    ({"not_before": "tomorrow"}, "--not-before"),
    ({"window": "1x"}, "--window"),
    ({"not_before": "2020-01-01T00:00:00Z", "window": "1h"}, "already closed"),
    ({"keep_source_hours": "forever"}, "--keep-source"),
    ({"keep_source_hours": "0"}, "--keep-source"),
])
def test_bad_options_are_refused_with_the_option_named(raw, says):
    with pytest.raises(options.OptionError, match=says):
        options.parse(now=NOW, **raw)


def test_prediction_is_save_plus_bytes_at_copy_rate_plus_register_and_start():
    costs = {"save_bps": 100e6, "register_start_s": 0.4}
    p = precopy.predict_s(100_000_000, 50_000_000, 50e6, costs)
    assert p == pytest.approx(1.0 + (150_000_000 + precopy.STATE_FILES_BYTES) / 50e6 + 0.4)


def test_a_round_pays_only_when_the_guest_writes_less_than_it_saves():
    MiB = 2**20
    assert precopy.pays(64 * MiB, write_bps=1e6, copy_rate=50e6)
    assert not precopy.pays(64 * MiB, write_bps=60e6, copy_rate=50e6)  # writes outrun the copy
    assert not precopy.pays(MiB // 2, write_bps=0, copy_rate=50e6)      # too small to be worth a round
    # a Standard checkpoint's memory is copied with the round's leaf: it makes the round longer
    assert precopy.pays(8 * MiB, write_bps=4e6, copy_rate=50e6)
    assert not precopy.pays(8 * MiB, write_bps=4e6, copy_rate=50e6, extra_bytes=512 * MiB)
