"""Token buckets: the rate bound, FIFO grants, fail-fast waits, pauses and header sync."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import RateLimited, TokenBucket
from resilience.testing import run_virtual


@given(
    capacity=st.integers(1, 20),
    rate=st.floats(0.5, 20.0),
    requests=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 20)), min_size=1, max_size=60),
)
def test_granted_units_never_exceed_capacity_plus_refill(
    capacity: int, rate: float, requests: list[tuple[float, int]]
) -> None:
    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(capacity, rate)
        grants: list[tuple[float, int]] = []

        async def take(delay: float, n: int) -> None:
            await asyncio.sleep(delay)
            await bucket.acquire(n)
            grants.append((loop.time(), n))

        await asyncio.gather(*(take(d, min(n, capacity)) for d, n in requests))
        return grants

    grants = run_virtual(main())
    times = sorted({t for t, _ in grants})
    for i, start in enumerate(times):
        for end in times[i:]:
            granted = sum(n for t, n in grants if start <= t <= end)
            assert granted <= capacity + rate * (end - start) + 1e-6


def test_starts_full_and_try_acquire_never_waits() -> None:
    async def main() -> list[bool]:
        bucket = TokenBucket(3, 1)
        return [bucket.try_acquire() for _ in range(4)]

    assert run_virtual(main()) == [True, True, True, False]


def test_grants_are_fifo_even_for_small_late_requests() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(10, 1)
        await bucket.acquire(10)  # empty it
        order: list[tuple[str, float]] = []

        async def take(name: str, n: int, delay: float) -> None:
            await asyncio.sleep(delay)
            await bucket.acquire(n)
            order.append((name, loop.time()))

        await asyncio.gather(take("big", 8, 0.0), take("small", 1, 0.1), take("tiny", 1, 0.2))
        return order

    assert run_virtual(main()) == [
        ("big", pytest.approx(8.0)),
        ("small", pytest.approx(9.0)),
        ("tiny", pytest.approx(10.0)),
    ]


def test_more_than_capacity_fails_at_once() -> None:
    async def main() -> None:
        bucket = TokenBucket(5, 1)
        with pytest.raises(ValueError, match="can never be granted"):
            await bucket.acquire(6)

    run_virtual(main())


def test_max_wait_raises_rate_limited_without_waiting() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(2, 0.5, name="openai.requests")
        await bucket.acquire(2)
        before = loop.time()
        with pytest.raises(RateLimited) as caught:
            await bucket.acquire(1, max_wait=1.0)
        return caught.value.retry_after_s, loop.time() - before, bucket.level()

    retry_after, waited, level = run_virtual(main())
    assert retry_after == pytest.approx(2.0)
    assert waited == 0.0
    assert level == 0.0  # nothing was reserved by the refused call


def test_pause_until_blocks_grants_then_ramps_from_empty() -> None:
    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(10, 2)
        bucket.pause_until(loop.time() + 5)
        blocked = bucket.try_acquire()
        await bucket.acquire(4)
        return blocked, loop.time()

    blocked, granted_at = run_virtual(main())
    assert blocked is False
    assert granted_at == pytest.approx(7.0)  # 5 s paused, then 4 units at 2/s


def test_a_pause_holds_waiters_already_queued() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(1, 1)
        await bucket.acquire(1)
        waiter = asyncio.create_task(bucket.acquire(1))  # would be granted at t=1
        await asyncio.sleep(0.5)
        bucket.pause_until(loop.time() + 10)
        await waiter
        return loop.time()

    assert run_virtual(main()) == pytest.approx(11.5)


def test_cancelled_waiter_gives_its_turn_away() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(4, 1)
        await bucket.acquire(4)
        done: list[tuple[str, float]] = []

        async def take(name: str, n: int) -> None:
            await bucket.acquire(n)
            done.append((name, loop.time()))

        first = asyncio.create_task(take("first", 4))
        await asyncio.sleep(0)
        second = asyncio.create_task(take("second", 1))
        await asyncio.sleep(1)
        first.cancel()
        await second
        return done

    assert run_virtual(main()) == [("second", pytest.approx(1.0))]


def test_sync_from_headers_only_lowers_and_pauses_at_zero() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(100, 10)
        levels = [bucket.level()]
        bucket.sync(remaining=40, reset_after_s=6)
        levels.append(bucket.level())
        bucket.sync(remaining=90, reset_after_s=1)  # never raises our level
        levels.append(bucket.level())
        bucket.sync(remaining=-1, reset_after_s=None)  # "-1" means unknown: ignored
        levels.append(bucket.level())
        bucket.sync(remaining=0, reset_after_s=3)
        levels.append(bucket.level())
        await bucket.acquire(1)
        levels.append(loop.time())
        return levels

    assert run_virtual(main()) == [100, 40, 40, 40, 0, pytest.approx(3.1)]


def test_try_acquire_can_be_given_the_time_its_caller_just_read() -> None:
    async def main() -> list[bool]:
        now = asyncio.get_running_loop().time()
        bucket = TokenBucket(1, 1)
        return [
            bucket.try_acquire(1, now),
            bucket.try_acquire(1, now + 0.5),  # half a unit back
            bucket.try_acquire(1, now + 1.0),
        ]

    assert run_virtual(main()) == [True, False, True]
