"""The token bucket at its edges: exact fits, exact waits, its bounds, what a refusal says.

tests/test_bucket.py shows the rates and the FIFO order; these pin the
boundaries, where an off-by-one would grant a unit too many or refuse a call
that fits, and the queue's bookkeeping when a waiter is cancelled.
"""

from __future__ import annotations

import asyncio

import pytest

from resilience import RateLimited, TokenBucket
from resilience.testing import run_virtual


def test_a_bucket_refuses_a_size_or_rate_that_is_not_positive() -> None:
    for capacity in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"^TokenBucket capacity must be positive$"):
            TokenBucket(capacity, 1.0)
    for rate in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"^TokenBucket refill_per_s must be positive$"):
            TokenBucket(1.0, rate)


def test_a_bucket_is_named_in_its_repr_and_refusals() -> None:
    assert repr(TokenBucket(2, 1)) == "TokenBucket('bucket', capacity=2, refill_per_s=1)"
    with pytest.raises(ValueError, match=r"^bucket: units must be positive, got 0$"):
        run_virtual(TokenBucket(2, 1).acquire(0))


def test_the_whole_capacity_can_be_taken_at_once_and_no_more() -> None:
    async def main() -> list[object]:
        bucket = TokenBucket(3, 1)
        whole = bucket.try_acquire(3)
        return [whole, bucket.level(), bucket.try_acquire(1)]

    assert run_virtual(main()) == [True, 0.0, False]


def test_the_default_is_one_unit() -> None:
    async def main() -> list[object]:
        bucket = TokenBucket(2, 1)
        await bucket.acquire()
        return [bucket.level(), bucket.estimate_wait(), bucket.try_acquire(), bucket.level()]

    assert run_virtual(main()) == [1.0, 0.0, True, 0.0]


def test_estimates_late_in_the_run_are_relative_to_now() -> None:
    async def main() -> list[float]:
        bucket = TokenBucket(1, 1)
        await asyncio.sleep(100)
        full = bucket.estimate_wait(1)
        bucket.try_acquire(1)
        await asyncio.sleep(0.5)
        return [full, bucket.estimate_wait(1)]

    assert run_virtual(main()) == [0.0, 0.5]


def test_a_queued_waiter_is_not_overtaken_by_a_smaller_call() -> None:
    async def main() -> list[bool]:
        bucket = TokenBucket(2, 1)
        bucket.try_acquire(2)
        waiter = asyncio.ensure_future(bucket.acquire(2))
        await asyncio.sleep(1)  # one unit back, the waiter needs two
        overtaken = bucket.try_acquire(1)
        await waiter
        return [overtaken, waiter.done()]

    assert run_virtual(main()) == [False, True]


def test_units_granted_to_a_waiter_cancelled_before_it_ran_are_given_back() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(1, 1)
        bucket.try_acquire(1)
        waiter = asyncio.ensure_future(bucket.acquire(1))
        await asyncio.sleep(0)  # queued; the bucket's grant is timed for t=1
        loop.call_at(1.0, waiter.cancel)  # same instant, after the grant
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return bucket.level()

    assert run_virtual(main()) == 1.0


def test_a_wait_of_exactly_max_wait_is_waited_for() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(1, 0.5)
        bucket.try_acquire(1)
        start = loop.time()
        await bucket.acquire(1, max_wait=2.0)  # 1 unit at 0.5/s: exactly 2s
        return loop.time() - start

    assert run_virtual(main()) == 2.0


def test_a_refusal_names_the_bucket_the_wait_and_the_units() -> None:
    async def main() -> RateLimited:
        bucket = TokenBucket(2, 1, name="openai-rpm")
        bucket.try_acquire(2)
        with pytest.raises(RateLimited) as refused:
            await bucket.acquire(2, max_wait=1.0)
        return refused.value

    refusal = run_virtual(main())
    assert (refusal.provider, refusal.retry_after_s) == ("openai-rpm", 2.0)
    assert refusal.detail == "needs 2 units, would wait 2.000s"


def test_a_paused_bucket_refuses_even_with_nobody_queued() -> None:
    async def main() -> list[object]:
        bucket = TokenBucket(5, 1)
        bucket.pause_until(10.0)
        return [bucket.try_acquire(1), bucket.level(), bucket.estimate_wait(1)]

    assert run_virtual(main()) == [False, 0.0, 11.0]


def test_a_cancelled_waiter_leaves_the_queue_and_its_units_unreserved() -> None:
    async def main() -> list[float]:
        bucket = TokenBucket(2, 1)
        bucket.try_acquire(2)
        first = asyncio.ensure_future(bucket.acquire(1))
        second = asyncio.ensure_future(bucket.acquire(2))
        await asyncio.sleep(0.1)
        behind_two = bucket.estimate_wait(1)
        second.cancel()
        await asyncio.sleep(0)
        behind_one = bucket.estimate_wait(1)
        await first
        return [behind_two, behind_one, bucket.estimate_wait(1)]

    waits = run_virtual(main())
    assert waits == [pytest.approx(3.9), pytest.approx(1.9), pytest.approx(1.0)]


def test_a_server_at_exactly_its_level_changes_nothing_and_zero_reset_does_not_pause() -> None:
    async def main() -> list[object]:
        bucket = TokenBucket(5, 1)
        bucket.sync(5, None)
        full = bucket.level()
        bucket.sync(1, 30.0)  # one left: no pause
        one_left = [bucket.paused_until, bucket.level()]
        bucket.sync(0, 0.0)
        return [full, *one_left, bucket.paused_until, bucket.level()]

    assert run_virtual(main()) == [5.0, 0.0, 1.0, 0.0, 0.0]


def test_a_server_at_zero_pauses_until_its_reset() -> None:
    async def main() -> float:
        bucket = TokenBucket(5, 1)
        bucket.sync(0, 0.5)
        return bucket.paused_until

    assert run_virtual(main()) == 0.5
