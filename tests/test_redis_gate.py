"""The Redis-shared gate, against a real Redis server (tests/redis_server.py).

These run in real time, kept to a few seconds each: Redis measures refills
on its own clock, which no virtual loop can speed up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest

from resilience.breaker import Breaker, BreakerPolicy
from resilience.budget import BudgetLimits
from resilience.errors import BudgetExceeded, ProviderError, RateLimited
from resilience.guard import Guard
from resilience.retry import RetryPolicy
from resilience.shared.gate import RedisGate, connect, shaped
from resilience.shared.policy import SharedPolicy
from resilience.shared.scripts import LEDGER_FLUSH
from resilience.shared.signals import BreakerSignals
from simulations.servers import free_port
from state.app.metrics import Metrics, render
from tests.events import Events
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


def gate(url: str, seed: int, **kwargs: Any) -> RedisGate:
    return RedisGate(connect(url), "openai", rng=random.Random(seed), **kwargs)


class Billed:
    """A provider answer with the actual cost, as the real clients return."""

    def __init__(self, cost_usd: float, tokens: int = 0) -> None:
        self.cost_usd = cost_usd
        self.tokens = tokens


def test_shaped_buckets_admit_at_most_the_limit_per_minute() -> None:
    for limit in (2, 60, 3_000, 1_000_000):
        capacity, rate = shaped(limit, 0.1)
        assert capacity >= 1
        assert capacity + 60 * rate == pytest.approx(limit)


def test_racing_reservations_never_cross_the_shared_budget(redis_url: str) -> None:
    """Four workers' gates race 400 reservations of $0.01 against a $1.00 day."""

    async def body() -> tuple[int, tuple[float, int]]:
        gates = [
            gate(redis_url, seed, budget_limits=BudgetLimits(1.0, None, None, None))
            for seed in range(4)
        ]
        granted = 0

        async def reserve(g: RedisGate, cid: str) -> None:
            nonlocal granted
            try:
                reservation = await g.admit(1, 0.01, cid, None)
            except BudgetExceeded:
                return
            assert reservation is not None
            granted += 1
            await reservation.budget.settle(reservation, 0.01, tokens=0)

        await asyncio.gather(
            *(reserve(g, f"{i}-{n}") for i, g in enumerate(gates) for n in range(100))
        )
        assert gates[0].budget is not None
        spent = await gates[0].budget.spent("day")
        # Period keys expire on their own: a day's key a day after the day ends.
        (day_key,) = await gates[0].client.keys("breakwater:{openai}:ledger:openai:day:*")
        assert 86_400 < await gates[0].client.ttl(day_key) <= 2 * 86_400
        for g in gates:
            await g.close()
        return granted, spent

    granted, (usd, requests) = run(body)
    assert granted == 100
    assert requests == 100
    assert usd == pytest.approx(1.0)


def test_deferred_settlements_reach_the_ledger_without_a_call(redis_url: str) -> None:
    """Settling costs no round trip; the correction is flushed after `flush_after_s`."""

    async def body() -> None:
        g = gate(
            redis_url,
            1,
            budget_limits=BudgetLimits(10.0, None, None, None),
            policy=SharedPolicy(flush_after_s=0.05),
        )
        guard = Guard("openai", shared=g)

        async def call() -> Billed:
            return Billed(0.004, tokens=40)

        for _ in range(5):
            await guard.call(call, units=40, cost=0.01)
        assert g.round_trips == 5  # one per call: the settlements rode along or waited
        await asyncio.sleep(0.2)
        assert g.round_trips == 6  # the last correction went on its own
        reader = gate(redis_url, 2, budget_limits=BudgetLimits(10.0, None, None, None))
        assert reader.budget is not None
        assert await reader.budget.spent("day") == (pytest.approx(0.02), 5)
        await g.close()
        await reader.close()

    run(body)


def test_a_resent_batch_of_corrections_is_applied_once(redis_url: str) -> None:
    """A batch whose reply was lost is sent again with the same number: Redis skips it."""

    async def body() -> None:
        client = connect(redis_url)
        await client.hset("ledger", mapping={"usd": "1.0", "requests": "3"})
        flush = client.register_script(LEDGER_FLUSH)
        batch = orjson.dumps({"d": [[-0.25, -1]], "s": 7})
        for _ in range(2):
            await flush(keys=["applied:w1", "ledger"], args=[batch])
        assert await client.hgetall("ledger") == {"usd": "0.75", "requests": "2"}
        later = orjson.dumps({"d": [[-0.25, -1]], "s": 8})
        await flush(keys=["applied:w1", "ledger"], args=[later])
        assert await client.hgetall("ledger") == {"usd": "0.5", "requests": "1"}
        await client.aclose()

    run(body)


def test_shared_buckets_hold_every_worker_to_the_limit(redis_url: str) -> None:
    """Three gates, 60 eager callers, 3 seconds: admissions stay within capacity + rate * t."""

    async def body() -> tuple[int, float]:
        gates = [gate(redis_url, seed, rpm=600) for seed in range(3)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        admitted = 0

        async def caller(g: RedisGate, n: int) -> None:
            nonlocal admitted
            while loop.time() - start < 3.0:
                await g.admit(1, 0.0, f"c{n}", None)
                admitted += 1

        await asyncio.gather(*(caller(gates[n % 3], n) for n in range(60)))
        elapsed = loop.time() - start
        for g in gates:
            await g.close()
        return admitted, elapsed

    admitted, elapsed = run(body)
    capacity, rate = shaped(600, SharedPolicy().burst_fraction)
    assert admitted <= capacity + rate * elapsed + 1
    assert admitted >= rate * 2.5  # and they are not starved either


def test_a_429_pauses_every_worker(redis_url: str) -> None:
    async def body() -> None:
        first, second = gate(redis_url, 1, rpm=6000), gate(redis_url, 2, rpm=6000)
        guard = Guard("openai", shared=first, retry=RetryPolicy(max_attempts=1))

        async def limited() -> None:
            raise ProviderError("429", status=429, retry_after_s=1.0)

        with pytest.raises(ProviderError):
            await guard.call(limited)
        with pytest.raises(RateLimited) as refused:
            await second.admit(1, 0.0, "x", max_wait_s=0.2)
        assert 0.5 < refused.value.retry_after_s <= 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await second.admit(1, 0.0, "y", max_wait_s=2.0)
        assert loop.time() - started >= 0.5
        await first.close()
        await second.close()

    run(body)


def test_server_feedback_lowers_the_shared_bucket(redis_url: str) -> None:
    async def body() -> None:
        g = gate(redis_url, 1, rpm=60)
        requests, tokens = g.throttles()
        assert requests is not None
        assert tokens is None
        requests.sync(0, None)  # x-ratelimit-remaining-requests: 0
        with pytest.raises(RateLimited):
            await g.admit(1, 0.0, "x", max_wait_s=0.0)
        await g.close()

    run(body)


def scrape(guards: dict[str, Guard]) -> str:
    """What `GET /metrics` would show for these guards."""
    return render(Metrics().families(guards=guards, usage_summary={}, jobs=None))


def test_unreachable_redis_fails_closed_for_budgets(events: Events) -> None:
    async def body() -> None:
        g = gate(
            f"redis://127.0.0.1:{free_port()}/0",
            1,
            rpm=600,
            budget_limits=BudgetLimits(1.0, None, None, None),
        )
        guards = {"openai": Guard("openai", shared=g)}
        assert 'breakwater_shared_limits_reachable{provider="openai"} 1' in scrape(guards)
        with pytest.raises(BudgetExceeded, match="unreachable: no spend without it"):
            await g.admit(1, 0.01, "x", None)
        assert not g.reachable
        assert 'breakwater_shared_limits_reachable{provider="openai"} 0' in scrape(guards)
        await g.client.aclose()

    run(body)
    (logged,) = events.of("shared.unreachable")
    assert logged["budget_policy"] == "closed"
    assert logged["error"] == "ConnectionError"


def test_unreachable_redis_falls_back_to_local_limits_when_allowed() -> None:
    async def body() -> None:
        g = gate(
            f"redis://127.0.0.1:{free_port()}/0",
            1,
            rpm=600,
            budget_limits=BudgetLimits(0.03, None, None, None),
            policy=SharedPolicy(budget_when_down="local", fallback_fraction=0.5),
        )
        granted = []
        for n in range(3):
            try:
                reservation = await g.admit(1, 0.01, f"c{n}", None)
            except BudgetExceeded:
                continue
            assert reservation is not None
            granted.append(reservation)
        # The local budget holds half the limit: one $0.01 call fits in $0.015.
        assert len(granted) == 1
        await granted[0].budget.settle(granted[0], 0.01, tokens=0)
        await g.client.aclose()

    run(body)


def test_the_local_fallback_keeps_the_callers_wait_limit() -> None:
    """While Redis is down, a call that would wait past `max_wait_s` for the local
    buckets fails fast with RateLimited, as it would on the shared ones."""

    async def body() -> None:
        g = gate(f"redis://127.0.0.1:{free_port()}/0", 1, rpm=60)
        capacity = shaped(60, SharedPolicy().burst_fraction)[0]
        for n in range(int(capacity)):  # the local bucket starts full
            assert await g.admit(1, 0.0, f"c{n}", 0.0) is None
        assert not g.reachable
        with pytest.raises(RateLimited):
            await asyncio.wait_for(g.admit(1, 0.0, "over", 0.0), timeout=1.0)
        await g.client.aclose()

    run(body)


def test_a_redis_restart_is_survived_and_spend_kept(
    redis_url: str, redis_server: RedisServer, events: Events
) -> None:
    async def body() -> None:
        g = gate(
            redis_url,
            1,
            budget_limits=BudgetLimits(1.0, None, None, None),
            policy=SharedPolicy(recheck_s=0.2),
        )
        reservation = await g.admit(1, 0.25, "a", None)
        assert reservation is not None
        await reservation.budget.settle(reservation, None, tokens=0)
        redis_server.stop()
        with pytest.raises(BudgetExceeded, match="unreachable"):
            await g.admit(1, 0.25, "b", None)
        redis_server.start()
        await asyncio.sleep(0.3)
        reservation = await g.admit(1, 0.25, "c", None)
        assert g.reachable
        assert reservation is not None
        assert g.budget is not None
        assert await g.budget.spent("day") == (pytest.approx(0.5), 2)
        await g.close()

    run(body)
    assert len(events.of("shared.unreachable")) == 1
    assert len(events.of("shared.restored")) == 1


def test_breakers_open_everywhere_only_once_a_quorum_tripped(redis_url: str) -> None:
    async def body() -> None:
        policy = BreakerPolicy(failure_threshold=1, cooldown_s=30)
        breakers = [Breaker("openai", policy) for _ in range(3)]
        signals = [
            BreakerSignals(connect(redis_url), b, worker_id=f"w{i}", quorum=2)
            for i, b in enumerate(breakers)
        ]
        for s in signals:
            s.start()
        for s in signals:
            await asyncio.wait_for(s.subscribed(), 5)

        async def fail() -> None:
            raise ProviderError("down", status=503)

        with pytest.raises(ProviderError):
            await breakers[0].call(fail)
        await asyncio.sleep(0.3)
        assert [b.state for b in breakers] == ["open", "closed", "closed"]  # one is no quorum
        with pytest.raises(ProviderError):
            await breakers[1].call(fail)
        for _ in range(50):
            if breakers[2].state == "open":
                break
            await asyncio.sleep(0.05)
        assert [b.state for b in breakers] == ["open", "open", "open"]
        assert breakers[2].retry_after_s() > 25  # a normal cooldown, probes to follow
        for s in signals:
            await s.close()
            await s.client.aclose()

    run(body)
