import threading

import pytest

from workers.model import options
from workers.steps import precopy, transfer

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
    ({"start": "yes"}, "--start"),
    ({"eject_unmovable_isos": "yes"}, "--eject-unmovable-isos"),
])
def test_bad_options_are_refused_with_the_option_named(raw, says):
    with pytest.raises(options.OptionError, match=says):
        options.parse(now=NOW, **raw)


def test_start_is_kept_only_when_asked_for():
    assert options.parse(now=NOW, start=True) == {"start": True}
    assert options.parse(now=NOW, start=False) == {} == options.parse(now=NOW)
    assert options.Options(**options.parse(now=NOW, start=True)).start is True


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


def test_the_downtime_copy_rate_leaves_out_the_waits_for_the_bandwidth_limits():
    mib = precopy.MiB
    rec = {"copied": [{"bytes": 80 * mib, "seconds": 10.0, "throttled_s": 9.0},
                      {"bytes": 20 * mib, "seconds": 2.0},                    # copied before any limit
                      {"bytes": 1000, "seconds": 1.0, "throttled_s": 0.0}]}   # too small to tell a rate
    assert precopy.copy_bps(rec) == pytest.approx(100 * mib / 12.0)
    assert precopy.unlimited_copy_bps(rec) == pytest.approx(100 * mib / 3.0)
    # a wait counted for a stream that then sat idle never promises an endless rate
    assert precopy.unlimited_copy_bps({"copied": [{"bytes": 8 * mib, "seconds": 4.0, "throttled_s": 4.0}]}) \
        == pytest.approx(8 * mib / 0.2)
    assert precopy.unlimited_copy_bps({}) == precopy.DEFAULT_COPY_BPS


def test_bandwidth_waits_count_what_the_least_held_stream_waited():
    waits = iter([0.5, 1.0, 2.0, 0.25])
    lock = threading.Lock()

    def wait(nbytes: int) -> float:
        with lock:
            return next(waits)

    counted = transfer.BandwidthWaits(wait)
    assert counted.seconds() == 0.0
    counted(1)
    counted(1)  # this stream: 1.5 s held
    other = threading.Thread(target=lambda: (counted(1), counted(1)))  # that one: 2.25 s
    other.start()
    other.join()
    assert counted.seconds() == pytest.approx(1.5)


def test_the_downtime_copy_is_predicted_at_the_rate_the_last_switchover_measured_if_there_was_one():
    rec = {"copied": [{"bytes": 80 * precopy.MiB, "seconds": 10.0, "throttled_s": 9.0}]}
    assert precopy.downtime_copy_bps(rec, {"downtime_copy_bps": 123e6}) == 123e6
    assert precopy.downtime_copy_bps(rec, {}) == precopy.unlimited_copy_bps(rec)


def test_eject_unmovable_isos_is_kept_only_when_asked_for():
    assert options.parse(now=NOW, eject_unmovable_isos=True) == {"eject_unmovable_isos": True}
    assert options.parse(now=NOW, eject_unmovable_isos=False) == {} == options.parse(now=NOW)
    assert options.Options(**options.parse(now=NOW, eject_unmovable_isos=True)).eject_unmovable_isos is True
