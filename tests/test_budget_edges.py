"""The budget's record at its edges: which hour a call is counted in, alerts at exact levels.

tests/test_budget.py shows reservations, refusals and alerts; these pin the
details an operator reads: a refusal's message and alert, the usage hour
of every way a reservation ends, the requests it carried, period keys in
UTC whatever the machine's zone, and a bad limit named in its error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from resilience import Budget, BudgetExceeded, ConfigError
from resilience.ledger import InMemoryLedger, PeriodLimit
from resilience.testing import run_virtual
from resilience.usage import UsageLog
from tests.events import logged_levels
from tests.ledgers import AwaitedLedger
from tests.test_budget import FixedClock, alerts

__all__ = ["alerts"]  # the fixture, used by name below

# 2026-11-28T17:59:30Z, as in tests/test_budget.py.
T0 = datetime(2026, 11, 28, 17, 59, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("name", ["daily_usd", "hourly_usd", "daily_requests", "hourly_requests"])
def test_a_negative_limit_is_named_in_the_error(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be None or >= 0, got -1$"):
        Budget(**{name: -1})


def test_a_usage_log_passed_in_is_the_one_written() -> None:
    usage = UsageLog()
    assert Budget(daily_usd=1.0, usage=usage).usage is usage


def hours(budget: Budget) -> list[tuple[str, int, int]]:
    """(hour, requests, errors) of the usage log's one provider."""
    (provider,) = budget.usage.summary()["providers"].values()
    return [(h["hour"], h["requests"], h["errors"]) for h in provider["hours"]]


@pytest.mark.parametrize("ending", ["settle", "release", "keep"])
def test_every_ending_counts_the_call_in_the_hour_it_started_with_its_requests(
    ending: str,
) -> None:
    clock = FixedClock(T0)
    budget = Budget(daily_usd=10.0, clock=clock)

    async def main() -> None:
        reservation = await budget.reserve("openai", 0.1, requests=3)
        clock.now += 60  # the call ends in the next hour
        if ending == "settle":
            await budget.settle(reservation)
        elif ending == "release":
            await budget.release(reservation, error_class="server")
        else:
            await budget.keep(reservation, error_class="timeout")

    run_virtual(main())
    assert hours(budget) == [("2026-11-28T17", 3, 0 if ending == "settle" else 1)]


def test_an_alert_fires_at_exactly_its_level(alerts: list[dict[str, Any]]) -> None:
    budget = Budget(daily_usd=10.0, daily_requests=10, clock=FixedClock(T0))

    async def main() -> None:
        await budget.reserve("openai", 5.0, requests=5)  # 50 % of both

    run_virtual(main())
    assert sorted((a["limit_kind"], a["threshold"], a["used"]) for a in alerts) == [
        ("requests", 0.5, 5),
        ("usd", 0.5, 5.0),
    ]


def test_a_refusal_names_every_limit_reached_and_alerts_for_the_job(
    alerts: list[dict[str, Any]],
) -> None:
    budget = Budget(daily_usd=1.0, hourly_usd=1.0, clock=FixedClock(T0))

    async def main() -> BudgetExceeded:
        with pytest.raises(BudgetExceeded) as refused:
            await budget.reserve("openai", 2.0, correlation_id="job-1")
        return refused.value

    with logged_levels() as levels:
        refusal = run_virtual(main())
    assert levels["budget.alert"] == "WARNING"
    assert refusal.provider == "openai"
    assert refusal.detail == "global: hour usd 0 + 2 > 1; day usd 0 + 2 > 1"
    assert refusal.retry_after_s == pytest.approx(6 * 3600 + 30)  # to the end of the day
    assert [(a["provider"], a["period"], a["limit"], a["correlation_id"]) for a in alerts] == [
        ("openai", "hour", 1.0, "job-1"),
        ("openai", "day", 1.0, "job-1"),
    ]


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: every local hour label differs
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_period_keys_are_utc_whatever_the_machines_zone() -> None:
    budget = Budget(hourly_usd=10.0, daily_usd=10.0, clock=FixedClock(T0), scope="openai")

    async def main() -> list[str]:
        reservation = await budget.reserve("openai", 1.0)
        return [period.key for period in reservation.periods]

    assert run_virtual(main()) == ["openai:hour:2026-11-28T17", "openai:day:2026-11-28"]


def test_a_ledger_swept_empty_takes_new_keys_and_sweeps_again() -> None:
    clock = FixedClock(T0)
    ledger = InMemoryLedger(clock=clock)

    async def main() -> list[object]:
        limits = [PeriodLimit("k1", 1.0, None, T0 + 10)]
        first = await ledger.try_add(limits, 0.5, 1)
        clock.now += 20  # k1 expired
        emptied = await ledger.totals("k1")  # swept: nothing left
        later = [PeriodLimit("k2", 1.0, None, clock.now + 10)]
        again = await ledger.try_add(later, 0.25, 1)
        clock.now += 20
        return [first, emptied, again, await ledger.totals("k2")]

    assert run_virtual(main()) == [[(0.5, 1)], (0.0, 0), [(0.25, 1)], (0.0, 0)]


def test_a_budget_without_alert_levels_never_alerts(alerts: list[dict[str, Any]]) -> None:
    budget = Budget(daily_usd=1.0, clock=FixedClock(T0), alert_levels=())

    async def main() -> None:
        await budget.reserve("openai", 1.0)

    run_virtual(main())
    assert alerts == []


@pytest.mark.parametrize(
    ("limits", "cost", "requests", "kind"),
    [({"daily_usd": 10.0}, 5.0, 1, "usd"), ({"daily_requests": 10}, 0.0, 5, "requests")],
)
def test_one_limit_alone_alerts_at_exactly_its_level(
    alerts: list[dict[str, Any]], limits: dict[str, float], cost: float, requests: int, kind: str
) -> None:
    budget = Budget(clock=FixedClock(T0), **limits)  # type: ignore[arg-type]

    async def main() -> None:
        await budget.reserve("openai", cost, requests=requests)

    run_virtual(main())
    assert [(a["limit_kind"], a["threshold"]) for a in alerts] == [(kind, 0.5)]


@pytest.mark.parametrize("awaited", [False, True])
def test_alerts_name_the_provider_and_job_on_either_ledger(
    alerts: list[dict[str, Any]], awaited: bool
) -> None:
    ledger = AwaitedLedger() if awaited else None
    budget = Budget(daily_usd=10.0, clock=FixedClock(T0), ledger=ledger)

    async def main() -> None:
        await budget.reserve("openai", 5.0, correlation_id="job-1")  # 50 %
        reservation = await budget.reserve("openai", 1.0, correlation_id="job-2")
        await budget.settle(reservation, 3.0)  # 80 %, reached on settling

    run_virtual(main())
    assert [(a["provider"], a["threshold"], a["correlation_id"]) for a in alerts] == [
        ("openai", 0.5, "job-1"),
        ("openai", 0.8, "job-2"),
    ]


def test_a_reservation_may_carry_no_requests() -> None:
    budget = Budget(daily_requests=1, clock=FixedClock(T0))

    async def main() -> tuple[float, int]:
        await budget.reserve("openai", 0.5, requests=0)
        return await budget.spent("day")

    assert run_virtual(main()) == (0.5, 0)


def test_a_refusal_leaves_out_a_limit_the_call_fits_exactly() -> None:
    budget = Budget(daily_usd=2.0, hourly_usd=1.0, clock=FixedClock(T0))

    async def main() -> str:
        with pytest.raises(BudgetExceeded) as refused:
            await budget.reserve("openai", 2.0)
        return refused.value.detail

    assert run_virtual(main()) == "global: hour usd 0 + 2 > 1"
