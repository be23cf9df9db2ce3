"""Step claims and the fence that includes them, and the active set, on a real redis-server."""
import time

import pytest

from workers.coord.locks import Fenced, VMLocks
from workers.model import keys, states
from workers.model.record import Store, new_record


@pytest.fixture
def store(redis_url):
    s = Store.from_url(redis_url)
    s.r.flushdb()
    return s


def test_one_claim_at_a_time_and_only_its_holder_releases_it(store):
    locks = VMLocks(store.r)
    first = locks.claim_step("m1")
    assert first and locks.claim_step("m1") is None
    assert not locks.release_claim("m1", "not-the-token")
    assert locks.claim_holder("m1") == first
    assert locks.release_claim("m1", first)
    assert locks.claim_step("m1") not in (None, first)


def test_a_lapsed_claim_can_be_taken_and_fences_out_its_old_holder(store):
    locks = VMLocks(store.r)
    token = locks.acquire("vm-1", "m1")
    old = locks.claim_step("m1", ttl_s=1)
    locks.check("vm-1", "m1", token, claim=old)
    time.sleep(1.3)
    new = locks.claim_step("m1")
    assert new is not None
    locks.check("vm-1", "m1", token, claim=new)
    with pytest.raises(Fenced, match="step claim"):
        locks.check("vm-1", "m1", token, claim=old)
    assert not locks.extend_claim("m1", old)  # the old holder's heartbeat cannot win it back


def test_the_fence_still_fails_on_a_lost_lease_whatever_the_claim(store):
    locks = VMLocks(store.r)
    token = locks.acquire("vm-1", "m1")
    claim = locks.claim_step("m1")
    locks.release("vm-1", "m1")
    with pytest.raises(Fenced):
        locks.check("vm-1", "m1", token, claim=claim)


def test_the_token_fences_out_an_earlier_holder_of_the_same_name_after_its_lease_lapsed(store):
    """The one case the lease's value cannot tell apart: the kept-source reaper takes the VM's
    lease under the same name (`reap:<mid>`) in every round. A round that stalled past its
    lease, while a later round took the lease again, finds its own name in the lease; only
    the fencing token says the lease is no longer the one it was given."""
    locks = VMLocks(store.r)
    stalled = locks.acquire("vm-1", "reap:m1", ttl_s=1)
    deadline = time.monotonic() + 5
    while locks.holder("vm-1") is not None:  # the stalled round's lease lapses
        assert time.monotonic() < deadline, "the lease did not expire"
        time.sleep(0.05)
    later = locks.acquire("vm-1", "reap:m1")
    assert later > stalled
    locks.check("vm-1", "reap:m1", later)
    with pytest.raises(Fenced, match=f"token {stalled}"):
        locks.check("vm-1", "reap:m1", stalled)


def test_a_migration_leaves_the_active_set_when_it_ends(store):
    rec = new_record(vm="vm", vm_id="id-1", source="a", destination="b", fence=1)
    store.create(rec)
    assert store.active_ids() == [rec["id"]]
    store.transition(rec["id"], {states.QUEUED}, states.ROLLING_BACK)
    assert store.active_ids() == [rec["id"]]
    store.transition(rec["id"], {states.ROLLING_BACK}, states.ROLLED_BACK)
    assert store.active_ids() == []
    assert store.r.ttl(keys.migration(rec["id"])) > 0
