"""Which correlation id and which defaults a guarded call carries, and how a guard is put together.

tests/test_guard.py shows the pipeline's order; these pin what the call is
known by (the id the provider reads and the breaker logs), what a call costs
when the caller says nothing, and the guard's refusal of a mixed configuration.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import pytest

from resilience import (
    Breaker,
    BreakerPolicy,
    Budget,
    CircuitOpen,
    Guard,
    ProviderError,
    RetryPolicy,
    TokenBucket,
    Transition,
    correlation,
)
from resilience.limits import LocalLimits
from resilience.testing import run_virtual
from tests.events import Events
from tests.ledgers import AwaitedLedger


def quiet() -> BreakerPolicy:
    return BreakerPolicy(failure_threshold=1000, min_calls=1000)


def tripping_guard(name: str = "p") -> tuple[Guard, list[Transition], list[str | None]]:
    """A guard that trips on one failure, with its transitions and the ids the provider saw."""
    guard = Guard(name, BreakerPolicy(failure_threshold=1), retry=RetryPolicy(max_attempts=1))
    seen: list[Transition] = []
    guard.breaker.subscribe(seen.append)
    return guard, seen, []


def failing(ids: list[str | None]) -> object:
    async def provider() -> None:
        ids.append(correlation.current())
        raise ProviderError("down", status=503)

    return provider


def run_one(guard: Guard, provider: object, *, bound: str | None, explicit: str | None) -> None:
    async def main() -> None:
        if bound is None:
            await guard.call(provider, correlation_id=explicit)  # type: ignore[arg-type]
        else:
            with correlation.bound(bound):
                await guard.call(provider, correlation_id=explicit)  # type: ignore[arg-type]

    with pytest.raises(ProviderError):
        run_virtual(main())


@pytest.mark.parametrize(
    ("bound", "explicit", "provider_sees", "breaker_logs"),
    [
        (None, None, None, "p-1"),  # a fresh id names the guard's events alone
        ("job-7", None, "job-7", "job-7"),  # the job's id, bound by the worker
        ("job-7", "job-7", "job-7", "job-7"),
        ("job-7", "job-9", "job-9", "job-9"),  # the caller's own id wins, and is bound
        (None, "job-9", "job-9", "job-9"),
    ],
)
def test_a_call_is_known_by_the_callers_id_else_the_bound_one_else_a_fresh_one(
    bound: str | None, explicit: str | None, provider_sees: str | None, breaker_logs: str
) -> None:
    guard, seen, ids = tripping_guard()
    run_one(guard, failing(ids), bound=bound, explicit=explicit)
    assert ids == [provider_sees]
    assert [t.correlation_id for t in seen] == [breaker_logs]


def test_fresh_ids_count_up_per_guard() -> None:
    guard = Guard("embed", BreakerPolicy(failure_threshold=1000, min_calls=1000))
    assert [guard.new_correlation_id() for _ in range(3)] == ["embed-1", "embed-2", "embed-3"]


def test_a_plain_call_takes_one_unit_and_costs_nothing() -> None:
    async def ok() -> str:
        return "ok"

    async def main() -> list[object]:
        tokens = TokenBucket(1.5, 0.001)
        budget = Budget(daily_usd=0.5)
        guard = Guard("p", tokens=tokens, budget=budget)
        result = await guard.call(ok)
        spent, _ = await budget.spent("day")
        return [result, tokens.level(), spent]

    assert run_virtual(main()) == ["ok", pytest.approx(0.5), 0.0]


def test_a_decorated_call_takes_one_unit_and_costs_nothing() -> None:
    async def main() -> list[object]:
        tokens = TokenBucket(1.5, 0.001)
        budget = Budget(daily_usd=0.5)
        guard = Guard("p", tokens=tokens, budget=budget)

        @guard
        async def ok() -> str:
            return "ok"

        result = await ok()
        spent, _ = await budget.spent("day")
        return [result, tokens.level(), spent]

    assert run_virtual(main()) == ["ok", pytest.approx(0.5), 0.0]


def test_decorator_amounts_see_keyword_arguments() -> None:
    async def main() -> float:
        tokens = TokenBucket(100, 0.001)
        guard = Guard("p", tokens=tokens)

        @guard.protect(units=lambda *, n: float(n))
        async def take(*, n: int) -> int:
            return n

        await take(n=30)
        return tokens.level()

    assert run_virtual(main()) == pytest.approx(70.0)


def test_shared_limits_exclude_local_buckets_and_budget() -> None:
    shared = LocalLimits("p")
    for local in (
        {"requests": TokenBucket(1, 1)},
        {"tokens": TokenBucket(1, 1)},
        {"budget": Budget(daily_usd=1.0)},
    ):
        with pytest.raises(
            ValueError, match=r"^a guard with shared limits takes no local buckets or budget$"
        ):
            Guard("p", shared=shared, **local)  # type: ignore[arg-type]
    guard = Guard("p", shared=shared)
    assert (guard.shared, guard.limits, guard.requests, guard.tokens) == (
        shared,
        shared,
        None,
        None,
    )


def test_a_guard_keeps_its_parts_under_its_name() -> None:
    requests, tokens = TokenBucket(1, 1), TokenBucket(2, 1)
    guard = Guard("openai", requests=requests, tokens=tokens)
    assert (guard.breaker.name, guard.requests, guard.tokens) == ("openai", requests, tokens)
    assert repr(guard) == "Guard('openai', breaker='closed')"


def test_a_refusal_at_the_door_and_after_the_wait_names_the_provider() -> None:
    async def main() -> list[tuple[str, float]]:
        budget = Budget(daily_usd=10.0, ledger=AwaitedLedger())
        guard = Guard("openai", budget=budget, retry=RetryPolicy(max_attempts=1))

        async def ok() -> str:
            return "ok"

        call = asyncio.ensure_future(guard.call(ok, cost=1.0))
        await asyncio.sleep(0)  # awaiting its reservation
        guard.breaker.force_open("tripped by others")
        refusals = []
        for pending in (call, guard.call(ok)):
            with pytest.raises(CircuitOpen) as raised:
                await pending
            refusals.append((raised.value.provider, raised.value.retry_after_s))
        return refusals

    cooldown = BreakerPolicy().cooldown_s
    assert run_virtual(main()) == [("openai", cooldown), ("openai", cooldown)]


def test_a_reservation_refused_by_the_breaker_is_released_as_circuit_open() -> None:
    async def main() -> dict[str, object]:
        budget = Budget(daily_usd=10.0, ledger=AwaitedLedger())
        guard = Guard("p", budget=budget, retry=RetryPolicy(max_attempts=1))

        async def ok() -> str:
            return "ok"

        call = asyncio.ensure_future(guard.call(ok, cost=1.0))
        await asyncio.sleep(0)
        guard.breaker.force_open("tripped by others")
        with pytest.raises(CircuitOpen):
            await call
        return budget.usage.summary()

    usage = run_virtual(main())
    assert usage["totals"]["errors"] == {"circuit_open": 1}  # type: ignore[index]


class Ceiling(random.Random):
    """Full jitter's worst case: every wait is the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_each_retry_line_says_which_attempt_how_long_and_why(events: Events) -> None:
    failures = [ProviderError("blip", status=502), ProviderError("slow down", status=429)]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    retry = RetryPolicy(base_delay_s=1 / 3, rng=Ceiling())
    guard = Guard("emb", BreakerPolicy(failure_threshold=1000, min_calls=1000), retry=retry)
    assert run_virtual(guard.call(flaky)) == "ok"
    assert [
        (r["attempt"], r["wait_s"], r["error"], r["error_class"]) for r in events.of("guard.retry")
    ] == [(1, 0.333333, "ProviderError", "failure"), (2, 0.666667, "ProviderError", "rate_limited")]


@dataclass
class Billed:
    text: str
    cost_usd: float
    tokens: int


def test_the_usage_log_gets_each_outcomes_class_and_the_tokens_billed() -> None:
    async def main() -> dict[str, Any]:
        budget = Budget(daily_usd=10.0)
        guard = Guard("p", quiet(), retry=RetryPolicy(max_attempts=1), budget=budget)

        async def billed() -> Billed:
            return Billed("hi", cost_usd=0.25, tokens=7)

        async def refused() -> None:
            raise ProviderError("bad request", status=400)

        async def hangs_up() -> None:
            raise TimeoutError("read timed out")

        async def hangs() -> None:
            await asyncio.sleep(3600)

        await guard.call(billed, cost=1.0)
        with pytest.raises(ProviderError):
            await guard.call(refused, cost=1.0)
        with pytest.raises(TimeoutError):
            await guard.call(hangs_up, cost=1.0)
        cancelled = asyncio.ensure_future(guard.call(hangs, cost=1.0))
        await asyncio.sleep(1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        totals: dict[str, Any] = budget.usage.summary()["totals"]
        return totals

    totals = run_virtual(main())
    assert totals["tokens"] == 7
    assert totals["errors"] == {"caller": 1, "failure": 1, "cancelled": 1}


def test_a_guard_uses_the_breaker_it_is_given_and_charges_under_its_name() -> None:
    breaker = Breaker("shared-embed")
    assert Guard("p", breaker).breaker is breaker

    async def ok() -> str:
        return "ok"

    async def main() -> list[str]:
        budget = Budget(daily_usd=1.0)
        await Guard("openai", budget=budget).call(ok, cost=0.1)
        return list(budget.usage.summary()["providers"])

    assert run_virtual(main()) == ["openai"]


def test_a_call_under_its_own_id_still_takes_one_unit_by_default() -> None:
    async def ok() -> str:
        return "ok"

    async def main() -> float:
        tokens = TokenBucket(1.5, 0.001)
        await Guard("p", tokens=tokens).call(ok, correlation_id="job-9")
        return tokens.level()

    assert run_virtual(main()) == pytest.approx(0.5)


def test_a_slow_call_is_timed_from_its_start_not_from_its_wait_for_a_bucket() -> None:
    policy = BreakerPolicy(failure_threshold=1, min_calls=100, slow_call_s=5)

    def takes(seconds: float) -> Any:
        async def call() -> str:
            await asyncio.sleep(seconds)
            return "ok"

        return call

    async def main() -> list[str]:
        requests = TokenBucket(1, 0.1)
        guard = Guard("p", policy, requests=requests, retry=RetryPolicy(max_attempts=1))
        requests.try_acquire(1)
        await guard.call(takes(1))  # waited 10 s for the bucket, then 1 s: not slow
        return [guard.breaker.state]

    assert run_virtual(main()) == ["closed"]

    async def slow_one() -> str:  # 6 s: slow, trips the breaker
        guard = Guard("q", policy)
        await guard.call(takes(6))
        return guard.breaker.state

    assert run_virtual(slow_one()) == "open"


def test_a_closed_guard_never_times_a_long_call_out() -> None:
    async def long() -> str:
        await asyncio.sleep(60)
        return "ok"

    guard = Guard("p", BreakerPolicy(probe_timeout_s=30), retry=RetryPolicy(max_attempts=1))
    assert run_virtual(guard.call(long)) == "ok"


def test_the_probe_that_closes_the_breaker_names_its_job() -> None:
    async def ok() -> str:
        return "ok"

    async def main() -> list[str | None]:
        guard, seen, ids = tripping_guard()
        with pytest.raises(ProviderError):
            await guard.call(failing(ids), correlation_id="job-1")  # type: ignore[arg-type]
        await asyncio.sleep(guard.breaker.policy.cooldown_s)
        await guard.call(ok, correlation_id="job-2")
        return [t.correlation_id for t in seen if t.trigger == "close"]

    assert run_virtual(main()) == ["job-2"]


@pytest.mark.parametrize("awaited", [False, True])
def test_tokens_are_recorded_only_when_the_result_reports_them(awaited: bool) -> None:
    async def plain() -> str:
        return "no token count"

    async def billed() -> Billed:
        return Billed("hi", cost_usd=0.25, tokens=7)

    async def main() -> list[int]:
        budget = Budget(daily_usd=10.0, ledger=AwaitedLedger() if awaited else None)
        guard = Guard("p", quiet(), budget=budget)
        seen = []
        for fn in (plain, billed):
            await guard.call(fn, cost=1.0)
            seen.append(budget.usage.summary()["totals"]["tokens"])
        return seen

    assert run_virtual(main()) == [0, 7]
