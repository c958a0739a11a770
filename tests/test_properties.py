"""Hypothesis properties for the core rules, each on the virtual-time loop."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Breaker,
    BreakerPolicy,
    CircuitOpen,
    Guard,
    ProviderError,
    RetryPolicy,
    TokenBucket,
)
from resilience.testing import run_virtual


@given(outcomes=st.lists(st.booleans(), max_size=40), threshold=st.integers(1, 6))
def test_opens_exactly_at_the_first_run_of_threshold_failures(
    outcomes: list[bool], threshold: int
) -> None:
    """With the rate rule out of reach, only `threshold` failures in a row trip it."""
    policy = BreakerPolicy(failure_threshold=threshold, min_calls=1000)

    async def main() -> int | None:
        breaker = Breaker("p", policy)

        async def outcome(failed: bool) -> None:
            if failed:
                raise ProviderError("down", status=500)

        for index, failed in enumerate(outcomes):
            try:
                await breaker.call(outcome, failed)
            except ProviderError:
                pass
            if breaker.state == "open":
                return index
        return None

    expected, run = None, 0
    for index, failed in enumerate(outcomes):
        run = run + 1 if failed else 0
        if run == threshold:
            expected = index
            break
    assert run_virtual(main()) == expected


@given(arrivals=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 5)), min_size=1, max_size=30))
def test_waiters_are_granted_in_arrival_order(arrivals: list[tuple[int, int]]) -> None:
    async def main() -> tuple[list[int], list[int]]:
        bucket = TokenBucket(5, 1)
        await bucket.acquire(5)
        arrived: list[int] = []
        granted: list[int] = []

        async def take(index: int, delay: int, n: int) -> None:
            await asyncio.sleep(delay / 10)
            arrived.append(index)
            await bucket.acquire(n)
            granted.append(index)

        await asyncio.gather(*(take(i, d, n) for i, (d, n) in enumerate(arrivals)))
        return arrived, granted

    arrived, granted = run_virtual(main())
    assert granted == arrived


@given(max_calls=st.integers(1, 5), callers=st.integers(1, 60))
def test_half_open_admits_exactly_the_probe_cap(max_calls: int, callers: int) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5, half_open_max_calls=max_calls)
    reached = 0

    async def probe() -> None:
        nonlocal reached
        reached += 1
        await asyncio.sleep(1)

    async def one(breaker: Breaker) -> bool:
        try:
            await breaker.call(probe)
        except CircuitOpen:
            return False
        return True

    async def main() -> int:
        breaker = Breaker("p", policy)
        try:
            await breaker.call(probe_failure)
        except ProviderError:
            pass
        await asyncio.sleep(5)
        admitted = await asyncio.gather(*(one(breaker) for _ in range(callers)))
        return sum(admitted)

    admitted = run_virtual(main())
    assert admitted == reached == min(max_calls, callers)


async def probe_failure() -> None:
    raise ProviderError("down", status=503)


@given(retry_after=st.floats(0.0, 120.0), seed=st.integers(0, 2**32 - 1))
def test_the_retry_waits_at_least_retry_after(retry_after: float, seed: int) -> None:
    calls: list[float] = []

    async def limited() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise ProviderError("slow down", status=429, retry_after_s=retry_after)
        return "ok"

    guard = Guard("p", retry=RetryPolicy(retry_after_cap_s=120, rng=random.Random(seed)))
    assert run_virtual(guard.call(limited)) == "ok"
    assert calls[1] - calls[0] >= retry_after
