"""The fence: the local deadline of a step claim, and the Redis check's token comparison."""
from __future__ import annotations

import time

import pytest

from workers.coord.locks import VMLocks
from workers.engine.step import CLAIM_BEAT_S
from workers.model import keys, lease_deadline
from workers.model.errors import Fenced
from workers.model.lease_deadline import CLOCK_RATE_ERROR, LeaseClock, LeaseExpired

VM_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_the_deadline_is_the_last_confirmation_plus_the_ttl_slowed_by_the_clock_error_less_the_margin():
    now = [0.0]
    clock = LeaseClock(ttl_s=20, margin_s=3, now=lambda: now[0])
    with pytest.raises(LeaseExpired, match="last confirmed never"):
        clock.check("save_vm")
    clock.confirmed(10.0)
    assert clock.deadline() == pytest.approx(10 + 20 * (1 - CLOCK_RATE_ERROR) - 3)
    now[0] = 26.9
    clock.check("save_vm")
    now[0] = 27.0
    with pytest.raises(LeaseExpired, match=r"save_vm not started: the step claim was last confirmed 17.0s ago"):
        clock.check("save_vm")
    clock.confirmed(8.0)  # a reply that came late for an older send moves nothing back
    with pytest.raises(LeaseExpired):
        clock.check("save_vm")
    clock.confirmed(25.0)
    clock.check("save_vm")


def test_a_healthy_heartbeat_always_leaves_time_for_a_call():
    """The claim is extended every TTL/4; the margin must leave room between beats, or a
    worker in good health would stop itself."""
    assert keys.STEP_CLAIM_TTL_S * (1 - CLOCK_RATE_ERROR) - lease_deadline.MARGIN_S > 2 * CLAIM_BEAT_S


def test_only_the_thread_holding_the_claim_is_checked():
    clock = LeaseClock(now=lambda: 1e9)
    clock.confirmed(0.0)
    lease_deadline.check("save_vm")  # no claim held here
    with lease_deadline.holding(clock):
        with pytest.raises(LeaseExpired):
            lease_deadline.check("save_vm")
    lease_deadline.check("save_vm")


def test_a_lapsed_claim_is_not_extended_and_so_not_confirmed(r):
    locks = VMLocks(r)
    token = locks.claim_step("m1", ttl_s=1)
    assert locks.extend_claim("m1", token)
    r.delete(keys.step_claim("m1"))  # lapsed; then another delivery takes it
    other = locks.claim_step("m1")
    assert other and not locks.extend_claim("m1", token)


def test_a_holder_that_took_the_lease_again_fences_out_its_earlier_self(r):
    """The same owner (a source reaper or an orphan sweep of one migration) takes a VM's
    lease, stalls until it lapses, and takes it again: the lease's value matches both, so
    only the token tells the stalled one apart. It must be fenced, the new one not."""
    locks = VMLocks(r)
    first = locks.acquire(VM_ID, "reaper:m1", ttl_s=1)
    locks.check(VM_ID, "reaper:m1", first)
    deadline = time.monotonic() + 5
    while r.exists(keys.vm_lock(VM_ID)) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = locks.acquire(VM_ID, "reaper:m1")
    assert second == first + 1
    locks.check(VM_ID, "reaper:m1", second)
    with pytest.raises(Fenced, match=f"token {first}"):
        locks.check(VM_ID, "reaper:m1", first)


def test_the_token_is_compared_with_the_step_claim_too(r):
    locks = VMLocks(r)
    first = locks.acquire(VM_ID, "m1")
    claim = locks.claim_step("m1")
    r.set(keys.vm_fence(VM_ID), first + 1)  # the lease taken again meanwhile
    with pytest.raises(Fenced):
        locks.check(VM_ID, "m1", first, claim=claim)
    locks.check(VM_ID, "m1", first + 1, claim=claim)
