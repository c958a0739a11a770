"""The guard composes breaker, buckets, retries and budget; each attempt passes all."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from resilience import (
    BreakerPolicy,
    Budget,
    BudgetExceeded,
    CircuitOpen,
    Guard,
    ProviderError,
    RateLimited,
    RetryPolicy,
    TokenBucket,
)
from resilience.testing import run_virtual
from tests.events import Events
from tests.ledgers import AwaitedLedger


@dataclass
class Billed:
    text: str
    cost_usd: float
    tokens: int


def quiet_breaker() -> BreakerPolicy:
    return BreakerPolicy(failure_threshold=1000, min_calls=1000)


def test_every_retry_goes_through_the_request_bucket_again() -> None:
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise ProviderError("down", status=503)
        return "ok"

    async def main() -> str:
        requests = TokenBucket(1, 0.5)  # one call every 2 s
        retry = RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, rng=random.Random(0))
        return await Guard("p", quiet_breaker(), requests=requests, retry=retry).call(flaky)

    assert run_virtual(main()) == "ok"
    assert calls == pytest.approx([0.0, 2.0, 4.0])


def test_units_come_from_the_token_bucket() -> None:
    async def echo(x: int) -> int:
        return x

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        guard = Guard("p", tokens=TokenBucket(1000, 100))
        times = []
        for _ in range(3):
            await guard.call(echo, 1, units=600)
            times.append(loop.time())
        return times

    assert run_virtual(main()) == pytest.approx([0.0, 2.0, 8.0])


def test_max_wait_fails_fast_with_rate_limited() -> None:
    async def echo() -> str:
        return "ok"

    async def main() -> float:
        guard = Guard("p", requests=TokenBucket(1, 0.1), max_wait_s=1.0)
        await guard.call(echo)
        with pytest.raises(RateLimited) as caught:
            await guard.call(echo)
        return caught.value.retry_after_s

    assert run_virtual(main()) == pytest.approx(10.0)


def test_a_429_pauses_both_buckets_until_retry_after() -> None:
    calls: list[float] = []

    async def limited() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise ProviderError("rate limited", status=429, retry_after_s=5.0)
        return "ok"

    async def main() -> tuple[float, float]:
        requests, tokens = TokenBucket(100, 100), TokenBucket(1000, 1000)
        retry = RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, rng=random.Random(0))
        guard = Guard("p", quiet_breaker(), requests=requests, tokens=tokens, retry=retry)
        await guard.call(limited)
        return requests.paused_until, tokens.paused_until

    assert run_virtual(main()) == (pytest.approx(5.0), pytest.approx(5.0))
    assert calls[1] >= 5.0


def test_budget_settles_actual_cost_and_refunds_known_failures() -> None:
    async def billed() -> Billed:
        return Billed("hi", cost_usd=0.25, tokens=40)

    async def rejected() -> None:
        raise ProviderError("bad request", status=400)

    async def main() -> tuple[float, float]:
        budget = Budget(daily_usd=10.0)
        guard = Guard("p", budget=budget)
        await guard.call(billed, cost=1.0)
        after_success, _ = await budget.spent("day")
        with pytest.raises(ProviderError):
            await guard.call(rejected, cost=5.0)
        after_failure, _ = await budget.spent("day")
        return after_success, after_failure

    assert run_virtual(main()) == (pytest.approx(0.25), pytest.approx(0.25))


def test_a_call_that_waited_for_the_ledger_while_the_breaker_opened_never_goes_out() -> None:
    """Admitted while closed, but others tripped the breaker during its reservation."""
    calls: list[str] = []

    async def provider() -> Billed:
        calls.append("sent")
        return Billed("hi", cost_usd=0.25, tokens=1)

    async def main() -> tuple[type[BaseException], float]:
        budget = Budget(daily_usd=10.0, ledger=AwaitedLedger())
        guard = Guard("p", budget=budget, retry=RetryPolicy(max_attempts=1))
        call = asyncio.ensure_future(guard.call(provider, cost=1.0))
        await asyncio.sleep(0)  # the call is now awaiting its reservation
        guard.breaker.force_open("tripped by others")
        with pytest.raises(CircuitOpen) as raised:
            await call
        spent, _ = await budget.spent("day")
        return raised.type, spent

    assert run_virtual(main()) == (CircuitOpen, 0.0)  # refunded
    assert calls == []


def test_unknown_outcomes_keep_their_estimate() -> None:
    async def hangs_up() -> None:
        raise TimeoutError("read timed out")

    async def main() -> float:
        budget = Budget(daily_usd=10.0)
        retry = RetryPolicy(max_attempts=2, rng=random.Random(0))
        guard = Guard("p", quiet_breaker(), retry=retry, budget=budget)
        with pytest.raises(TimeoutError):
            await guard.call(hangs_up, cost=1.5)
        spent, _ = await budget.spent("day")
        return spent

    assert run_virtual(main()) == pytest.approx(3.0)  # two attempts, both unknown


def test_budget_refusal_never_calls_the_provider() -> None:
    called = 0

    async def expensive() -> str:
        nonlocal called
        called += 1
        return "ok"

    async def main() -> float:
        guard = Guard("p", budget=Budget(hourly_usd=1.0))
        await guard.call(expensive, cost=0.75)
        with pytest.raises(BudgetExceeded) as caught:
            await guard.call(expensive, cost=0.5)
        return caught.value.retry_after_s

    assert run_virtual(main()) == pytest.approx(3600.0)
    assert called == 1


def test_decorator_form_and_correlation_ids_in_retry_lines(events: Events) -> None:
    guard = Guard("emb", quiet_breaker(), retry=RetryPolicy(base_delay_s=0.0, rng=random.Random(0)))
    attempts = 0

    @guard
    async def embed(text: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ProviderError("blip", status=502)
        return text.upper()

    assert run_virtual(embed("abc")) == "ABC"
    (retry_line,) = events.of("guard.retry")
    assert retry_line["provider"] == "emb"
    assert retry_line["correlation_id"] == "emb-1"
    assert retry_line["error_class"] == "failure"


def test_budget_alerts_carry_the_calls_correlation_id(events: Events) -> None:
    async def cheap() -> str:
        return "ok"

    async def main() -> None:
        guard = Guard("p", budget=Budget(daily_usd=1.0, alert_levels=(0.5,)))
        await guard.call(cheap, cost=0.3, correlation_id="job-7:embed")
        await guard.call(cheap, cost=0.3, correlation_id="job-8:embed")

    run_virtual(main())
    (alert,) = events.of("budget.alert")
    assert alert["correlation_id"] == "job-8:embed"
    assert alert["threshold"] == 0.5


def test_a_budget_over_an_awaited_ledger_is_settled_the_same_way() -> None:
    async def billed() -> Billed:
        return Billed("hi", cost_usd=0.25, tokens=40)

    async def rejected() -> None:
        raise ProviderError("bad request", status=400)

    async def hangs_up() -> None:
        raise TimeoutError("read timed out")

    async def main() -> tuple[float, int]:
        budget = Budget(daily_usd=10.0, ledger=AwaitedLedger())
        retry = RetryPolicy(max_attempts=1)
        guard = Guard("p", quiet_breaker(), retry=retry, budget=budget)
        await guard.call(billed, cost=1.0)  # settled at 0.25
        with pytest.raises(ProviderError):
            await guard.call(rejected, cost=5.0)  # refunded
        with pytest.raises(TimeoutError):
            await guard.call(hangs_up, cost=1.5)  # kept
        return await budget.spent("day")

    spent_usd, spent_requests = run_virtual(main())
    assert spent_usd == pytest.approx(1.75)
    assert spent_requests == 2


def test_a_probe_through_the_guard_is_bounded_by_the_probe_timeout() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5, probe_timeout_s=30)

    async def down() -> None:
        raise ProviderError("down", status=503)

    async def main() -> tuple[float, str, float]:
        loop = asyncio.get_running_loop()
        budget = Budget(daily_usd=10.0)
        guard = Guard("p", policy, retry=RetryPolicy(max_attempts=1), budget=budget)
        with pytest.raises(ProviderError):
            await guard.call(down, cost=1.0)
        await asyncio.sleep(5)
        started = loop.time()
        with pytest.raises(ProviderError, match="probe exceeded"):
            await guard.call(asyncio.sleep, 10_000, cost=1.0)
        spent, _ = await budget.spent("day")
        return loop.time() - started, guard.breaker.state, spent

    waited, state, spent = run_virtual(main())
    assert waited == pytest.approx(30.0)
    assert state == "open"
    assert spent == pytest.approx(1.0)  # the 503 is refunded; the timed-out probe is kept


def test_a_cancelled_probe_through_the_guard_frees_its_permit() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5)

    async def down() -> None:
        raise ProviderError("down", status=503)

    async def main() -> tuple[int, str]:
        guard = Guard("p", policy, retry=RetryPolicy(max_attempts=1))
        with pytest.raises(ProviderError):
            await guard.call(down)
        await asyncio.sleep(5)
        probe = asyncio.create_task(guard.call(asyncio.sleep, 100))
        await asyncio.sleep(1)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        return guard.breaker.probes_in_flight, guard.breaker.state

    assert run_virtual(main()) == (0, "half_open")


def test_a_call_refused_half_open_neither_waits_for_nor_spends_a_token() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5, half_open_max_calls=1)

    async def down() -> None:
        raise ProviderError("down", status=503)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        requests = TokenBucket(2, 0.01)  # two tokens, then one every 100 s
        guard = Guard("p", policy, requests=requests, retry=RetryPolicy(max_attempts=1))
        with pytest.raises(ProviderError):
            await guard.call(down)  # takes a token and trips the breaker
        await asyncio.sleep(5)
        probe = asyncio.create_task(guard.call(asyncio.sleep, 20))  # the last token
        await asyncio.sleep(0)
        started = loop.time()
        with pytest.raises(CircuitOpen):
            await guard.call(asyncio.sleep, 0)  # no permit left: refused at once
        waited = loop.time() - started
        await probe
        return waited, requests.level()

    waited, left = run_virtual(main())
    assert waited == 0.0
    assert left == pytest.approx(0.25)  # 25 s of refill since the probe; nothing taken since


def test_the_token_bucket_sees_the_time_the_request_bucket_waited() -> None:
    calls: list[float] = []

    async def record() -> None:
        calls.append(asyncio.get_running_loop().time())

    async def main() -> list[float]:
        requests = TokenBucket(1, 1)  # one call a second
        tokens = TokenBucket(10, 10)  # refills in 1 s what a call takes
        guard = Guard("p", requests=requests, tokens=tokens)
        for _ in range(3):
            await guard.call(record, units=10)
        return calls

    assert run_virtual(main()) == pytest.approx([0.0, 1.0, 2.0])


def test_protect_takes_units_and_cost_from_the_calls_arguments() -> None:
    async def main() -> tuple[list[str], float, float, str]:
        tokens = TokenBucket(100, 1)
        budget = Budget(daily_usd=10.0)
        guard = Guard("p", tokens=tokens, budget=budget)

        @guard.protect(
            units=lambda batch, **_: len(batch), cost=lambda batch, **_: 0.5 * len(batch)
        )
        async def send(batch: list[str], *, suffix: str = "") -> list[str]:
            return [text + suffix for text in batch]

        sent = await send(["a", "b", "c"], suffix="!")  # keyword arguments reach `send`
        spent, _ = await budget.spent("day")
        return sent, tokens.level(), spent, send.__name__

    sent, level, spent, name = run_virtual(main())
    assert (sent, spent, name) == (["a!", "b!", "c!"], 1.5, "send")
    assert level == pytest.approx(97.0)
