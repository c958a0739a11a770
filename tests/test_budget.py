"""Budgets: atomic reservations, settling outcomes, period rollover and alerts."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from resilience.budget import Budget, Reservation
from resilience.errors import BudgetExceeded, ErrorClass
from resilience.ledger import InMemoryLedger, LedgerStore, PeriodLimit, SyncLedger
from resilience.testing import run_virtual
from tests.ledgers import AwaitedLedger

if TYPE_CHECKING:
    from loguru import Message

# 2026-11-28T17:59:30Z: thirty seconds before the hour, 6 h 0 m 30 s before the day ends.
T0 = datetime(2026, 11, 28, 17, 59, 30, tzinfo=UTC).timestamp()


@dataclass
class FixedClock:
    """Wall time that moves only when a test moves it."""

    now: float

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alerts() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def sink(message: Message) -> None:
        extra = message.record["extra"]
        if extra.get("event") == "budget.alert":
            seen.append(dict(extra))

    handler_id = logger.add(sink, level="DEBUG")
    logger.enable("resilience")  # off until configure_logging, as for any host
    yield seen
    logger.disable("resilience")
    logger.remove(handler_id)


@settings(deadline=None, max_examples=40)
@given(
    costs=st.lists(
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=100, max_size=100
    ),
    limit=st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
)
def test_concurrent_reservations_never_exceed_the_daily_limit(
    costs: list[float], limit: float
) -> None:
    async def scenario() -> tuple[list[Reservation | BaseException], tuple[float, int]]:
        budget = Budget(daily_usd=limit)

        async def one(index: int, cost: float) -> Reservation:
            await asyncio.sleep((index % 7) * 0.001)  # interleave the tasks
            return await budget.reserve("openai", cost)

        results = await asyncio.gather(
            *(one(i, cost) for i, cost in enumerate(costs)), return_exceptions=True
        )
        return results, await budget.spent("day")

    results, (spent_usd, spent_requests) = run_virtual(scenario())

    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if not isinstance(r, Reservation)]
    assert all(isinstance(r, BudgetExceeded) for r in refused)
    assert math.fsum(r.cost for r in admitted) <= limit + 2e-9  # the ledger's epsilon, summed
    assert spent_usd == pytest.approx(sum(r.cost for r in admitted), abs=1e-9)
    assert spent_requests == len(admitted)
    # Nothing was refused that would have fitted: the ledger only ever grew.
    for cost, result in zip(costs, results, strict=True):
        if not isinstance(result, Reservation):
            assert spent_usd + cost > limit


def reserve_expecting_refusal(budget: Budget, cost: float, requests: int = 1) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as caught:
        run_virtual(budget.reserve("openai", cost, requests=requests))
    return caught.value


def test_hourly_refusal_retries_at_the_end_of_the_hour() -> None:
    budget = Budget(hourly_usd=1.0, daily_usd=10.0, clock=FixedClock(T0))
    run_virtual(budget.reserve("openai", 0.8))

    refused = reserve_expecting_refusal(budget, 0.3)

    assert refused.provider == "openai"
    assert refused.retry_after_s == pytest.approx(30.0)
    assert "hour usd" in refused.detail
    assert run_virtual(budget.spent("hour")) == pytest.approx((0.8, 1))


def test_daily_refusal_retries_at_the_end_of_the_day() -> None:
    budget = Budget(hourly_usd=5.0, daily_usd=1.0, clock=FixedClock(T0))
    run_virtual(budget.reserve("openai", 0.8))

    refused = reserve_expecting_refusal(budget, 0.3)

    assert refused.retry_after_s == pytest.approx(6 * 3600 + 30.0)
    assert run_virtual(budget.spent("day")) == pytest.approx((0.8, 1))


def test_when_hour_and_day_are_both_reached_the_later_end_wins() -> None:
    budget = Budget(hourly_usd=1.0, daily_usd=1.0, clock=FixedClock(T0))

    refused = reserve_expecting_refusal(budget, 1.5)

    assert refused.retry_after_s == pytest.approx(6 * 3600 + 30.0)
    assert "hour usd" in refused.detail
    assert "day usd" in refused.detail
    assert run_virtual(budget.spent("day")) == (0.0, 0)


def test_a_budget_without_limits_admits_and_records() -> None:
    budget = Budget(clock=FixedClock(T0))

    async def scenario() -> tuple[float, int]:
        for _ in range(3):
            await budget.settle(await budget.reserve("openai", 100.0))
        return await budget.spent("hour")

    assert run_virtual(scenario()) == pytest.approx((300.0, 3))
    assert budget.usage.summary()["totals"]["requests"] == 3


def test_settle_with_actual_cost_replaces_the_estimate() -> None:
    budget = Budget(daily_usd=10.0, clock=FixedClock(T0))

    async def scenario() -> tuple[float, int]:
        reservation = await budget.reserve("openai", 1.0)
        await budget.settle(reservation, 0.25, tokens=500)
        return await budget.spent("day")

    assert run_virtual(scenario()) == pytest.approx((0.25, 1))
    openai = budget.usage.summary()["providers"]["openai"]
    assert openai["cost_usd"] == pytest.approx(0.25)
    assert openai["tokens"] == 500
    assert openai["errors"] == {}


def test_settle_without_actual_cost_keeps_the_estimate() -> None:
    budget = Budget(daily_usd=10.0, clock=FixedClock(T0))

    async def scenario() -> tuple[float, int]:
        await budget.settle(await budget.reserve("openai", 1.0))
        return await budget.spent("day")

    assert run_virtual(scenario()) == pytest.approx((1.0, 1))


def test_release_refunds_dollars_and_requests() -> None:
    budget = Budget(daily_usd=1.0, hourly_requests=1, clock=FixedClock(T0))

    async def scenario() -> Reservation:
        reservation = await budget.reserve("openai", 1.0)
        await budget.release(reservation, error_class=ErrorClass.RATE_LIMITED)
        assert await budget.spent("day") == (0.0, 0)
        return await budget.reserve("openai", 1.0)  # the room is back

    assert run_virtual(scenario()).cost == 1.0
    openai = budget.usage.summary()["providers"]["openai"]
    assert openai["errors"] == {"rate_limited": 1}
    assert openai["cost_usd"] == 0.0
    assert openai["requests"] == 1


def test_keep_leaves_the_estimate_charged() -> None:
    budget = Budget(daily_usd=1.0, clock=FixedClock(T0))

    async def scenario() -> tuple[float, int]:
        reservation = await budget.reserve("openai", 0.7)
        await budget.keep(reservation, error_class="failure")
        return await budget.spent("day")

    assert run_virtual(scenario()) == pytest.approx((0.7, 1))
    openai = budget.usage.summary()["providers"]["openai"]
    assert openai["errors"] == {"failure": 1}
    assert openai["cost_usd"] == pytest.approx(0.7)
    assert reserve_expecting_refusal(budget, 0.5).retry_after_s == pytest.approx(6 * 3600 + 30)


def test_settle_after_the_hour_rolled_over_adjusts_the_original_hour() -> None:
    clock = FixedClock(T0)
    ledger = InMemoryLedger(clock=clock)
    budget = Budget(hourly_usd=5.0, clock=clock, ledger=ledger)

    async def scenario() -> None:
        reservation = await budget.reserve("openai", 1.0)
        clock.now += 60  # 18:00:30: a new hour, the same day
        await budget.settle(reservation, 0.4)
        assert await ledger.totals(reservation.keys[0]) == pytest.approx((0.4, 1))
        assert await budget.spent("hour") == (0.0, 0)
        assert await budget.spent("day") == pytest.approx((0.4, 1))

    run_virtual(scenario())


def test_a_reservation_is_settled_at_most_once() -> None:
    budget = Budget(daily_usd=10.0, clock=FixedClock(T0))

    async def scenario() -> None:
        reservation = await budget.reserve("openai", 1.0)
        await budget.settle(reservation)
        with pytest.raises(RuntimeError, match="already settled"):
            await budget.settle(reservation)
        with pytest.raises(RuntimeError, match="already settled"):
            await budget.release(reservation, error_class="failure")
        with pytest.raises(RuntimeError, match="already settled"):
            await budget.keep(reservation, error_class="failure")
        assert await budget.spent("day") == pytest.approx((1.0, 1))

    run_virtual(scenario())


def test_a_reservation_cannot_be_settled_by_another_budget() -> None:
    first = Budget(clock=FixedClock(T0))
    second = Budget(clock=FixedClock(T0))
    reservation = run_virtual(first.reserve("openai", 1.0))

    with pytest.raises(RuntimeError, match="another budget"):
        run_virtual(second.settle(reservation))


def test_alerts_fire_once_per_threshold_and_again_next_period(
    alerts: list[dict[str, Any]],
) -> None:
    clock = FixedClock(T0)
    budget = Budget(hourly_usd=10.0, clock=clock, scope="openai")

    async def scenario() -> None:
        for cost in (4.0, 1.5, 1.0, 2.0, 1.5):  # 40, 55, 65, 85, 100 %
            await budget.reserve("openai", cost)
        with pytest.raises(BudgetExceeded):
            await budget.reserve("openai", 1.0)
        clock.now += 3600
        await budget.reserve("openai", 6.0)

    run_virtual(scenario())

    fired = [(a["period_key"], a["threshold"], a["used"]) for a in alerts]
    assert fired == [
        ("openai:hour:2026-11-28T17", 0.5, pytest.approx(5.5)),
        ("openai:hour:2026-11-28T17", 0.8, pytest.approx(8.5)),
        ("openai:hour:2026-11-28T17", 1.0, pytest.approx(10.0)),
        ("openai:hour:2026-11-28T18", 0.5, pytest.approx(6.0)),
    ]
    first = alerts[0]
    assert first["scope"] == "openai"
    assert first["provider"] == "openai"
    assert first["period"] == "hour"
    assert first["limit_kind"] == "usd"
    assert first["limit"] == 10.0


def test_a_refusal_fires_the_exhausted_alert(alerts: list[dict[str, Any]]) -> None:
    budget = Budget(daily_usd=1.0, clock=FixedClock(T0))

    async def scenario() -> None:
        await budget.reserve("openai", 0.3)
        for _ in range(2):
            with pytest.raises(BudgetExceeded):
                await budget.reserve("openai", 0.9)

    run_virtual(scenario())

    assert [(a["period"], a["threshold"], a["used"]) for a in alerts] == [
        ("day", 1.0, pytest.approx(0.3))
    ]


def test_settling_above_the_estimate_can_cross_a_threshold(
    alerts: list[dict[str, Any]],
) -> None:
    budget = Budget(daily_usd=1.0, clock=FixedClock(T0))

    async def scenario() -> None:
        await budget.settle(await budget.reserve("openai", 0.1), 0.6)

    run_virtual(scenario())

    assert [(a["threshold"], a["used"]) for a in alerts] == [(0.5, pytest.approx(0.6))]


def test_custom_alert_levels(alerts: list[dict[str, Any]]) -> None:
    budget = Budget(daily_usd=1.0, alert_levels=(0.9, 0.25), clock=FixedClock(T0))

    async def scenario() -> None:
        for cost in (0.2, 0.1, 0.5, 0.2):  # 20, 30, 80, 100 %
            await budget.reserve("openai", cost)
        with pytest.raises(BudgetExceeded):
            await budget.reserve("openai", 0.1)

    run_virtual(scenario())

    assert budget.alert_levels == (0.25, 0.9)
    assert [a["threshold"] for a in alerts] == [0.25, 0.9]


def test_request_limits_work_like_dollar_limits(alerts: list[dict[str, Any]]) -> None:
    clock = FixedClock(T0)
    budget = Budget(hourly_requests=3, daily_requests=5, clock=clock)

    async def scenario() -> None:
        for _ in range(3):
            await budget.reserve("openai", 0.0)
        with pytest.raises(BudgetExceeded) as hourly:
            await budget.reserve("openai", 0.0)
        assert hourly.value.retry_after_s == pytest.approx(30.0)
        clock.now += 60  # the next hour
        await budget.reserve("openai", 0.0)
        await budget.reserve("openai", 0.0, requests=1)
        with pytest.raises(BudgetExceeded) as daily:
            await budget.reserve("openai", 0.0)
        assert daily.value.retry_after_s == pytest.approx(6 * 3600 - 30.0)
        assert "day requests" in daily.value.detail
        assert await budget.spent("day") == (0.0, 5)
        assert await budget.spent("hour") == (0.0, 2)

    run_virtual(scenario())

    hour_17 = [a["threshold"] for a in alerts if a["period_key"] == "global:hour:2026-11-28T17"]
    day = [a["threshold"] for a in alerts if a["period"] == "day"]
    assert hour_17 == [0.5, 0.8, 1.0]
    assert day == [0.5, 0.8, 1.0]
    assert {a["limit_kind"] for a in alerts} == {"requests"}


def test_a_batch_reservation_counts_all_its_requests() -> None:
    budget = Budget(hourly_requests=10, clock=FixedClock(T0))

    run_virtual(budget.reserve("openai", 0.0, requests=8))
    refused = reserve_expecting_refusal(budget, 0.0, requests=3)

    assert "8 + 3 > 10" in refused.detail
    assert run_virtual(budget.spent("hour")) == (0.0, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"daily_usd": -1.0},
        {"hourly_usd": float("nan")},
        {"daily_requests": -1},
        {"hourly_requests": -5},
        {"alert_levels": (0.0,)},
        {"alert_levels": (0.5, 1.5)},
        {"alert_levels": (-0.2,)},
    ],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Budget(**kwargs)


def test_negative_costs_are_refused() -> None:
    budget = Budget(clock=FixedClock(T0))
    with pytest.raises(ValueError, match="cost"):
        run_virtual(budget.reserve("openai", -0.1))
    reservation = run_virtual(budget.reserve("openai", 0.1))
    with pytest.raises(ValueError, match="actual_cost"):
        run_virtual(budget.settle(reservation, -1.0))
    run_virtual(budget.settle(reservation, 0.0))  # still open after the refused settle


def test_limits_are_exposed_for_display() -> None:
    budget = Budget(daily_usd=20.0, hourly_requests=100)
    assert budget.limits.daily_usd == 20.0
    assert budget.limits.hourly_usd is None
    assert budget.limits.of("hour") == (None, 100)
    assert budget.limits.of("day") == (20.0, None)


def test_periods_follow_virtual_wall_time() -> None:
    budget = Budget(hourly_usd=1.0)

    async def scenario() -> tuple[str, ...]:
        reservation = await budget.reserve("openai", 1.0)
        await asyncio.sleep(3600)
        await budget.reserve("openai", 1.0)  # a new virtual hour has room again
        return reservation.keys

    assert run_virtual(scenario()) == ("global:hour:2026-01-01T00", "global:day:2026-01-01")


def test_ledger_fits_a_hundred_cents_in_a_dollar() -> None:
    ledger = InMemoryLedger(clock=FixedClock(T0))
    limits = [PeriodLimit("k", usd=1.0, requests=None, expires_at=T0 + 60)]

    async def scenario() -> list[bool]:
        return [await ledger.try_add(limits, 0.01, 1) is not None for _ in range(101)]

    admitted = run_virtual(scenario())
    assert admitted == [True] * 100 + [False]
    assert run_virtual(ledger.totals("k")) == pytest.approx((1.0, 100))


def test_ledger_try_add_is_all_or_nothing() -> None:
    ledger = InMemoryLedger(clock=FixedClock(T0))
    roomy = PeriodLimit("roomy", usd=10.0, requests=None, expires_at=T0 + 60)
    tight = PeriodLimit("tight", usd=None, requests=1, expires_at=T0 + 60)

    async def scenario() -> None:
        assert await ledger.try_add([roomy, tight], 1.0, 1)
        assert not await ledger.try_add([roomy, tight], 1.0, 1)
        assert await ledger.totals("roomy") == (1.0, 1)
        assert await ledger.totals("tight") == (1.0, 1)
        await ledger.add(["roomy", "tight"], -1.0, -1)
        assert await ledger.totals("tight") == (0.0, 0)
        assert await ledger.totals("unknown") == (0.0, 0)

    run_virtual(scenario())


def test_ledger_drops_expired_keys() -> None:
    clock = FixedClock(T0)
    ledger = InMemoryLedger(clock=clock, default_ttl_s=600.0)
    short = PeriodLimit("short", usd=1.0, requests=None, expires_at=T0 + 60)
    long = PeriodLimit("long", usd=1.0, requests=None, expires_at=T0 + 120)

    async def scenario() -> None:
        assert await ledger.try_add([short, long], 1.0, 1)
        await ledger.add(["stray"], 0.5, 1)
        clock.now = T0 + 60
        assert await ledger.totals("short") == (0.0, 0)
        assert await ledger.totals("long") == (1.0, 1)
        clock.now = T0 + 599
        assert await ledger.totals("stray") == (0.5, 1)
        clock.now = T0 + 600
        assert await ledger.totals("stray") == (0.0, 0)

    run_virtual(scenario())


def test_the_in_memory_ledger_also_answers_without_awaiting() -> None:
    ledger = InMemoryLedger(clock=FixedClock(T0))
    roomy = PeriodLimit("roomy", usd=10.0, requests=None, expires_at=T0 + 60)
    tight = PeriodLimit("tight", usd=None, requests=1, expires_at=T0 + 60)

    assert isinstance(ledger, SyncLedger)
    assert ledger.try_add_now([roomy, tight], 1.0, 1) == [(1.0, 1), (1.0, 1)]
    assert ledger.try_add_now([roomy, tight], 1.0, 1) is None  # all or nothing
    assert ledger.totals_now("roomy") == (1.0, 1)
    assert ledger.add_now(["roomy", "tight"], -1.0, -1) == [(0.0, 0), (0.0, 0)]
    assert ledger.totals_now("unknown") == (0.0, 0)
    assert not isinstance(AwaitedLedger(), SyncLedger)


def test_a_budget_over_a_ledger_that_answers_at_once_works_the_same(
    alerts: list[dict[str, Any]],
) -> None:
    """The in-memory ledger is asked without awaiting (`SyncLedger`): same results."""
    budget = Budget(hourly_usd=1.0, daily_usd=10.0, clock=FixedClock(T0))

    async def scenario() -> BudgetExceeded:
        settled = await budget.reserve("openai", 0.4, correlation_id="job-1")
        await budget.settle(settled, 0.6, tokens=30)  # crosses 50 % of the hour
        with pytest.raises(RuntimeError, match="already settled"):
            await budget.settle(settled)
        await budget.settle(await budget.reserve("openai", 0.2))
        with pytest.raises(BudgetExceeded) as refused:
            await budget.reserve("openai", 0.5)
        return refused.value

    refused = run_virtual(scenario())
    assert refused.retry_after_s == pytest.approx(30.0)
    assert run_virtual(budget.spent("hour")) == pytest.approx((0.8, 2))
    openai = budget.usage.summary()["providers"]["openai"]
    assert (openai["requests"], openai["tokens"]) == (2, 30)
    assert openai["cost_usd"] == pytest.approx(0.8)
    assert [(a["threshold"], a["correlation_id"]) for a in alerts] == [
        (0.5, "job-1"),
        (0.8, None),
        (1.0, None),  # the refusal's
    ]


def test_a_budget_over_an_awaited_ledger_works_the_same(alerts: list[dict[str, Any]]) -> None:
    clock = FixedClock(T0)
    ledger: LedgerStore = AwaitedLedger(clock=clock)
    budget = Budget(hourly_usd=1.0, daily_usd=10.0, clock=clock, ledger=ledger)

    async def scenario() -> tuple[tuple[float, int], BudgetExceeded]:
        settled = await budget.reserve("openai", 0.4)
        await budget.settle(settled, 0.6, tokens=30)
        released = await budget.reserve("openai", 0.3)
        await budget.release(released, error_class="rate_limited")
        kept = await budget.reserve("openai", 0.2)
        await budget.keep(kept, error_class="failure")
        with pytest.raises(BudgetExceeded) as refused:
            await budget.reserve("openai", 0.5)
        return await budget.spent("hour"), refused.value

    spent, refused = run_virtual(scenario())

    assert spent == pytest.approx((0.8, 2))
    assert refused.retry_after_s == pytest.approx(30.0)
    assert "hour usd" in refused.detail
    assert [a["threshold"] for a in alerts] == [0.5, 0.8, 1.0]
    openai = budget.usage.summary()["providers"]["openai"]
    assert openai["errors"] == {"failure": 1, "rate_limited": 1}
