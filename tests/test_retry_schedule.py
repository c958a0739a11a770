"""The retry schedule exactly: each ceiling of the full jitter, the caps, and the policy's bounds.

tests/test_retry.py shows the jitter is bounded and seeded; here the random
draw always lands on its upper bound, so each delay must equal the documented
ceiling, min(max_delay_s, base_delay_s * 2**(n-1)), and the edges of
`retry_after_cap_s` and `max_elapsed_s` are pinned where they fall.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from resilience import BreakerPolicy, Guard, ProviderError, RetryPolicy
from resilience.testing import run_virtual


class Ceiling(random.Random):
    """Full jitter's worst case: every draw is the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def schedule(policy: RetryPolicy, errors: list[BaseException], *, after_s: float = 0.0) -> Any:
    """The waits `backoff` would be given, the generator made `after_s` into the loop's run."""

    async def main() -> list[float]:
        await asyncio.sleep(after_s)
        waits = policy.delays(Ceiling())
        seen = [next(waits)]
        for exc in errors:
            try:
                seen.append(waits.send(exc))
            except StopIteration:
                break
        return seen

    return run_virtual(main())


def down() -> ProviderError:
    return ProviderError("down", status=503)


def test_each_delay_is_the_doubling_ceiling_up_to_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=8.0)
    # The first value only primes the generator: backoff discards it.
    assert schedule(policy, [down() for _ in range(7)]) == [0.0, 0.5, 1, 2, 4, 8, 8, 8]


def test_retry_after_exactly_at_the_cap_is_still_honoured() -> None:
    asked = ProviderError("slow down", status=429, retry_after_s=120.0)
    policy = RetryPolicy(base_delay_s=0.5, retry_after_cap_s=120.0)
    assert schedule(policy, [asked]) == [0.0, 120.0]


def test_a_delay_that_lands_exactly_on_max_elapsed_is_still_taken() -> None:
    """Judged from when the retries began, not from the loop's start."""
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, max_elapsed_s=3.0)

    async def main() -> list[float]:
        await asyncio.sleep(100)
        waits = policy.delays(Ceiling())
        seen = [next(waits), waits.send(down())]  # 1s: within 3s
        await asyncio.sleep(1)
        seen.append(waits.send(down()))  # 1s spent + 2s = 3s: exactly the limit
        await asyncio.sleep(2)
        try:
            seen.append(waits.send(down()))  # 3s spent + 4s > 3s: give up
        except StopIteration:
            seen.append(-1.0)
        return seen

    assert run_virtual(main()) == [0.0, 1.0, 2.0, -1.0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "RetryPolicy.max_attempts must be at least 1"),
        ({"base_delay_s": -0.1}, "RetryPolicy needs 0 <= base_delay_s <= max_delay_s"),
        ({"base_delay_s": 2.0, "max_delay_s": 1.0}, "RetryPolicy needs 0 <= base_delay_s"),
        ({"max_elapsed_s": 0.0}, "RetryPolicy.max_elapsed_s must be positive or None"),
        ({"retry_after_cap_s": -1.0}, "RetryPolicy.retry_after_cap_s must not be negative"),
    ],
)
def test_policy_refuses_out_of_range_values_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        RetryPolicy(**fields)


def test_policy_accepts_its_boundary_values() -> None:
    policy = RetryPolicy(
        max_attempts=1, base_delay_s=0.0, max_delay_s=0.0, max_elapsed_s=0.5, retry_after_cap_s=0
    )
    assert (policy.max_attempts, policy.max_elapsed_s, policy.retry_after_cap_s) == (1, 0.5, 0)


def test_backoff_itself_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The guard writes its own `guard.retry` line; backoff's logger would repeat it untyped."""
    failures = [down()]

    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    retry = RetryPolicy(base_delay_s=0.0, rng=Ceiling())
    guard = Guard("p", BreakerPolicy(failure_threshold=1000, min_calls=1000), retry=retry)
    with caplog.at_level(logging.DEBUG, logger="backoff"):
        assert run_virtual(guard.call(flaky)) == "ok"
    assert [r for r in caplog.records if r.name == "backoff"] == []
