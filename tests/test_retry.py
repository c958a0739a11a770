"""Retries on backoff: jitter from a seeded RNG, Retry-After, give-up rules."""

from __future__ import annotations

import asyncio
import random

import pytest

from resilience import (
    BreakerPolicy,
    CircuitOpen,
    Guard,
    ProviderError,
    RetryPolicy,
)
from resilience.testing import run_virtual


class Flaky:
    """Fails with the given errors in turn, then succeeds; records loop times of calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(asyncio.get_running_loop().time())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def no_breaker() -> BreakerPolicy:
    return BreakerPolicy(failure_threshold=1000, min_calls=1000)


def test_retry_after_is_honoured() -> None:
    flaky = Flaky(ProviderError("slow down", status=429, retry_after_s=7.0))
    guard = Guard("p", no_breaker(), retry=RetryPolicy(base_delay_s=0.1, rng=random.Random(1)))
    assert run_virtual(guard.call(flaky)) == "ok"
    assert flaky.calls[1] - flaky.calls[0] == pytest.approx(7.0, abs=0.1)
    assert flaky.calls[1] - flaky.calls[0] >= 7.0


def test_retry_after_beyond_the_cap_ends_retries_with_the_hint() -> None:
    flaky = Flaky(ProviderError("come back tomorrow", status=429, retry_after_s=3600.0))
    guard = Guard("p", no_breaker(), retry=RetryPolicy(retry_after_cap_s=120))
    with pytest.raises(ProviderError) as caught:
        run_virtual(guard.call(flaky))
    assert caught.value.retry_after_s == 3600.0
    assert len(flaky.calls) == 1


def test_full_jitter_is_bounded_and_reproducible_from_the_seed() -> None:
    def delays(seed: int) -> list[float]:
        failures = [ProviderError("down", status=503) for _ in range(5)]
        flaky = Flaky(*failures)
        policy = RetryPolicy(max_attempts=6, base_delay_s=1, max_delay_s=8, rng=random.Random(seed))
        run_virtual(Guard("p", no_breaker(), retry=policy).call(flaky))
        return [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]

    first, again, other = delays(7), delays(7), delays(8)
    assert first == again
    assert first != other
    for attempt, delay in enumerate(first, start=1):
        assert 0.0 <= delay <= min(8.0, 2 ** (attempt - 1))


def test_max_attempts_counts_the_first_try() -> None:
    flaky = Flaky(*[ProviderError("down", status=500) for _ in range(10)])
    guard = Guard("p", no_breaker(), retry=RetryPolicy(max_attempts=3, rng=random.Random(0)))
    with pytest.raises(ProviderError):
        run_virtual(guard.call(flaky))
    assert len(flaky.calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        ProviderError("bad input", status=400),
        ProviderError("bad key", status=401),
        ProviderError("forbidden", status=403),
        ProviderError("pay up", status=402),
        ProviderError("quota", status=429, code="insufficient_quota"),
    ],
)
def test_caller_configuration_and_quota_errors_are_not_retried(error: ProviderError) -> None:
    flaky = Flaky(error)
    guard = Guard("p", no_breaker(), retry=RetryPolicy(max_attempts=5))
    with pytest.raises(ProviderError) as caught:
        run_virtual(guard.call(flaky))
    assert caught.value is error
    assert len(flaky.calls) == 1


def test_timeouts_and_connection_errors_are_retried() -> None:
    flaky = Flaky(TimeoutError(), ConnectionResetError())
    guard = Guard("p", no_breaker(), retry=RetryPolicy(rng=random.Random(3)))
    assert run_virtual(guard.call(flaky)) == "ok"
    assert len(flaky.calls) == 3


def test_max_elapsed_is_measured_on_the_loop_clock() -> None:
    flaky = Flaky(*[ProviderError("down", status=503) for _ in range(50)])
    policy = RetryPolicy(
        max_attempts=50, base_delay_s=10, max_delay_s=10, max_elapsed_s=60, rng=random.Random(5)
    )

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(ProviderError):
            await Guard("p", no_breaker(), retry=policy).call(flaky)
        return loop.time()

    elapsed = run_virtual(main())
    assert elapsed <= 60.0
    assert 2 < len(flaky.calls) < 50


def test_never_retries_into_an_open_breaker() -> None:
    flaky = Flaky(*[ProviderError("down", status=503) for _ in range(10)])
    guard = Guard(
        "p",
        BreakerPolicy(failure_threshold=2, cooldown_s=30),
        retry=RetryPolicy(max_attempts=10, base_delay_s=0.01, rng=random.Random(0)),
    )
    with pytest.raises(CircuitOpen) as caught:
        run_virtual(guard.call(flaky))
    assert len(flaky.calls) == 2
    assert caught.value.retry_after_s == pytest.approx(30.0, abs=0.1)
