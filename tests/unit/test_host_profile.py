"""A host's calibration in Redis (workers.model.host_profile) and how the downtime prediction
takes it (workers.steps.precopy.remembered_costs): after the measured costs, before the defaults."""
import json
import uuid

import pytest
import redis

from workers.model import host_profile, keys
from workers.steps import precopy

FIGURES = {"shell_create_s": 0.15, "process_start_s": 0.6, "module_load_s": 0.5, "cmdlet_s": 0.3,
           "hash_bps": 400e6, "smb_write_bps": 120e6, "smb_read_bps": 200e6, "measured_at": 1_800_000_000.0}


@pytest.fixture
def r(redis_url):
    return redis.Redis.from_url(redis_url, decode_responses=True)


def hosts():
    tag = uuid.uuid4().hex[:8]
    return f"src-{tag}", f"dst-{tag}"


def test_a_calibration_is_stored_with_its_time_and_read_back(r):
    src, _ = hosts()
    stored = host_profile.save(r, src, FIGURES)
    assert host_profile.load(r, src) == stored == FIGURES
    assert host_profile.when(stored) == "2027-01-15T08:00:00Z"


def test_an_incomplete_calibration_is_refused_and_an_unreadable_one_is_none(r):
    src, dst = hosts()
    with pytest.raises(ValueError, match="hash_bps"):
        host_profile.save(r, src, {k: v for k, v in FIGURES.items() if k != "hash_bps"})
    assert r.get(keys.host_calibration(src)) is None
    r.set(keys.host_calibration(dst), "not json")
    assert host_profile.load(r, dst) is None
    r.set(keys.host_calibration(dst), json.dumps({"cmdlet_s": "fast"}))
    assert host_profile.load(r, dst) is None
    assert precopy.remembered_costs(r, src, dst)["sources"]["register_start_s"] == "default"


def test_the_prediction_takes_a_calibration_until_a_switchover_measured_the_costs(r):
    src, dst = hosts()
    none = precopy.remembered_costs(r, src, dst)
    assert none["register_start_s"] == precopy.DEFAULT_REGISTER_START_S and "calibrated_copy_bps" not in none
    assert precopy.downtime_copy({}, none) == (precopy.DEFAULT_COPY_BPS, "default")
    host_profile.save(r, src, FIGURES)
    host_profile.save(r, dst, {**FIGURES, "cmdlet_s": 0.4, "smb_write_bps": 90e6})
    cal = precopy.remembered_costs(r, src, dst)
    assert cal["register_start_s"] == pytest.approx(precopy.REGISTER_START_SCRIPTS * 0.4)
    assert cal["sources"] == {"save_bps": "default", "register_start_s": "calibrated 2027-01-15T08:00:00Z",
                              "downtime_copy_bps": "this migration"}
    # before this migration copied anything: the slower of the source's read and the destination's write
    assert precopy.downtime_copy({}, cal) == (90e6, "calibrated 2027-01-15T08:00:00Z")
    copied = {"copied": [{"bytes": 100 * 2**20, "seconds": 1.0}]}
    assert precopy.downtime_copy(copied, cal) == (pytest.approx(100 * 2**20), "this migration")
    # four small disks that landed fast and a memory-sized file that did not: the memory
    # file is predicted at the rate of the files like it
    mixed = {"copied": [*[{"bytes": 64 * 2**20, "seconds": 0.2}] * 4, {"bytes": 256 * 2**20, "seconds": 2.5}]}
    assert precopy.downtime_copy(mixed, cal, 256 * 2**20) == (pytest.approx(256 * 2**20 / 2.5), "this migration")
    assert precopy.downtime_copy(mixed, cal) == (pytest.approx(512 * 2**20 / 3.3), "this migration")
    # nothing that large copied yet: every copy counts
    assert precopy.downtime_copy(mixed, cal, 4 * 2**30)[0] == pytest.approx(512 * 2**20 / 3.3)
    # a switchover measured them: its figures win
    r.hset(keys.cutover_costs(src), mapping={"save_bps": 500e6, f"downtime_copy_bps:{dst}": 300e6})
    r.hset(keys.cutover_costs(dst), "register_start_s", 2.5)
    got = precopy.remembered_costs(r, src, dst)
    assert (got["save_bps"], got["register_start_s"]) == (500e6, 2.5)
    assert got["sources"] == {"save_bps": "measured", "register_start_s": "measured", "downtime_copy_bps": "measured"}
    assert precopy.downtime_copy({}, got) == (300e6, "measured")
