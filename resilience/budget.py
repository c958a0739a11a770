"""Dollar and request budgets per UTC hour and day, charged before each call.

A call reserves its estimated cost up front, against the current hour and
day at once, so concurrent calls cannot overshoot a limit between a check and
a charge. When the call ends, the reservation is settled one of three ways:

* `settle`: the call succeeded; the actual cost, if known, replaces the estimate.
* `release`: the provider answered with an error, so nothing was billed: refund it.
* `keep`: the outcome is unknown (a timeout); the provider may have billed us,
  so the estimate stays charged.

Totals live in a `LedgerStore` (in memory by default) so several processes
can share one budget; `usage` keeps the human-readable breakdown.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NoReturn

from resilience.clock import Clock, wall_time
from resilience.errors import BudgetExceeded, ConfigError
from resilience.events import emit
from resilience.ledger import EPSILON, InMemoryLedger, LedgerStore, PeriodLimit, Totals
from resilience.usage import UsageLog

PeriodKind = Literal["hour", "day"]
LimitKind = Literal["usd", "requests"]

_PERIOD_S: dict[PeriodKind, int] = {"hour": 3_600, "day": 86_400}
_KEY_FORMAT: dict[PeriodKind, str] = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}
KEY_RETENTION_S = 86_400.0
"""How long a period's totals outlive it: long enough for late settles and for reports."""


@dataclass(frozen=True, slots=True)
class Period:
    """One UTC hour or day of one budget scope, e.g. key "openai:hour:2026-11-28T17"."""

    kind: PeriodKind
    key: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """A budget's configured limits; None means unlimited."""

    daily_usd: float | None
    hourly_usd: float | None
    daily_requests: int | None
    hourly_requests: int | None

    def of(self, kind: PeriodKind) -> tuple[float | None, int | None]:
        """The (usd, requests) limits of an hour or a day."""
        if kind == "hour":
            return self.hourly_usd, self.hourly_requests
        return self.daily_usd, self.daily_requests


@dataclass(slots=True, eq=False)
class Reservation:
    """An estimated charge awaiting its outcome. Settle, release or keep it exactly once.

    It remembers the periods it was charged to, so a call that straddles an
    hour boundary is settled against the hour it started in.
    """

    id: int
    provider: str
    cost: float
    requests: int
    periods: tuple[Period, ...]
    correlation_id: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The ledger keys this reservation was charged to."""
        return tuple(period.key for period in self.periods)


class Budget:
    """Hourly and daily limits on dollars and requests, shared by every call in `scope`."""

    def __init__(
        self,
        daily_usd: float | None = None,
        hourly_usd: float | None = None,
        daily_requests: int | None = None,
        hourly_requests: int | None = None,
        *,
        scope: str = "global",
        clock: Clock = wall_time,
        alert_levels: Iterable[float] = (0.5, 0.8, 1.0),
        ledger: LedgerStore | None = None,
        usage: UsageLog | None = None,
    ) -> None:
        self._limits = BudgetLimits(daily_usd, hourly_usd, daily_requests, hourly_requests)
        for name, value in (
            ("daily_usd", daily_usd),
            ("hourly_usd", hourly_usd),
            ("daily_requests", daily_requests),
            ("hourly_requests", hourly_requests),
        ):
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} must be None or >= 0, got {value!r}")
        levels = tuple(sorted({float(level) for level in alert_levels}))
        if any(not 0 < level <= 1 for level in levels):
            raise ConfigError(f"alert_levels must lie in (0, 1], got {levels!r}")
        self.alert_levels = levels
        self.scope = scope
        self._clock = clock
        self._ledger: LedgerStore = InMemoryLedger(clock=clock) if ledger is None else ledger
        self.usage = UsageLog(clock=clock) if usage is None else usage
        self._ids = itertools.count(1)
        self._open: set[int] = set()
        # The current hour's periods and limits, rebuilt only when the hour turns.
        self._hour: tuple[float, float, tuple[Period, ...], list[PeriodLimit]] | None = None
        # Per period kind: the usd and request totals below which no alert can fire.
        lowest = levels[0] if levels else math.inf
        self._alert_floors = {
            kind: tuple(
                math.inf if limit is None else lowest * limit - EPSILON
                for limit in self._limits.of(kind)
            )
            for kind in _PERIOD_S
        }
        # period key -> (period end, {(limit kind, threshold)} already alerted)
        self._alerted: dict[str, tuple[float, set[tuple[LimitKind, float]]]] = {}

    @property
    def limits(self) -> BudgetLimits:
        """The configured limits, for display."""
        return self._limits

    async def reserve(
        self,
        provider: str,
        cost: float,
        *,
        requests: int = 1,
        correlation_id: str | None = None,
    ) -> Reservation:
        """Charge the estimated `cost` and `requests` to the current hour and day.

        Raises `BudgetExceeded`, charging nothing, if any limit would be
        crossed; its `retry_after_s` runs to the end of the latest period
        whose limit is reached.
        """
        if not cost >= 0 or requests < 0:
            raise ValueError(f"cost and requests must be >= 0, got {cost!r} and {requests!r}")
        now = self._clock()
        periods, limits = self._current(now)
        totals = await self._ledger.try_add(limits, cost, requests)
        if totals is None:
            await self._refuse(provider, cost, requests, periods, now, correlation_id)
        reservation = Reservation(
            next(self._ids), provider, cost, requests, periods, correlation_id
        )
        self._open.add(reservation.id)
        self._check_alerts(provider, periods, totals, correlation_id)
        return reservation

    async def settle(
        self, reservation: Reservation, actual_cost: float | None = None, *, tokens: int = 0
    ) -> None:
        """The call succeeded: charge `actual_cost` instead of the estimate, if given."""
        if actual_cost is not None and not actual_cost >= 0:
            raise ValueError(f"actual_cost must be >= 0, got {actual_cost!r}")
        self._close(reservation)
        cost = reservation.cost if actual_cost is None else actual_cost
        if cost != reservation.cost:
            totals = await self._ledger.add(reservation.keys, cost - reservation.cost, 0)
            self._check_alerts(
                reservation.provider, reservation.periods, totals, reservation.correlation_id
            )
        self.usage.record(
            reservation.provider,
            requests=reservation.requests,
            tokens=tokens,
            cost_usd=cost,
            at=reservation.periods[0].start,
        )

    async def release(self, reservation: Reservation, *, error_class: str) -> None:
        """The provider answered with an error, so nothing was billed: refund it all."""
        self._close(reservation)
        await self._ledger.add(reservation.keys, -reservation.cost, -reservation.requests)
        self.usage.record(
            reservation.provider,
            requests=reservation.requests,
            error_class=error_class,
            at=reservation.periods[0].start,
        )

    async def keep(self, reservation: Reservation, *, error_class: str) -> None:
        """The outcome is unknown (a timeout): we may have been billed, so keep the estimate."""
        self._close(reservation)
        self.usage.record(
            reservation.provider,
            requests=reservation.requests,
            cost_usd=reservation.cost,
            error_class=error_class,
            at=reservation.periods[0].start,
        )

    async def spent(self, period: PeriodKind) -> tuple[float, int]:
        """The (usd, requests) charged so far in the current hour or day."""
        periods, _ = self._current(self._clock())
        return await self._ledger.totals(periods[0 if period == "hour" else 1].key)

    def _current(self, now: float) -> tuple[tuple[Period, ...], list[PeriodLimit]]:
        """The current (hour, day) periods and their limits, cached for the hour."""
        cached = self._hour
        if cached is None or not cached[0] <= now < cached[1]:
            periods = (self._period("hour", now), self._period("day", now))
            cached = (periods[0].start, periods[0].end, periods, [self._limit(p) for p in periods])
            self._hour = cached
        return cached[2], cached[3]

    def _period(self, kind: PeriodKind, now: float) -> Period:
        length = _PERIOD_S[kind]
        start = float(int(now // length) * length)
        label = datetime.fromtimestamp(start, tz=UTC).strftime(_KEY_FORMAT[kind])
        return Period(kind, f"{self.scope}:{kind}:{label}", start, start + length)

    def _limit(self, period: Period) -> PeriodLimit:
        usd, requests = self._limits.of(period.kind)
        return PeriodLimit(period.key, usd, requests, period.end + KEY_RETENTION_S)

    def _close(self, reservation: Reservation) -> None:
        if reservation.id not in self._open:
            raise RuntimeError(
                f"reservation {reservation.id} for {reservation.provider} is already "
                "settled or released, or belongs to another budget"
            )
        self._open.remove(reservation.id)

    async def _refuse(
        self,
        provider: str,
        cost: float,
        requests: int,
        periods: Iterable[Period],
        now: float,
        correlation_id: str | None,
    ) -> NoReturn:
        """Say which limits the refused reservation would cross, alert, and raise."""
        reached: list[str] = []
        ends: list[float] = []
        for period in periods:
            used_usd, used_requests = await self._ledger.totals(period.key)
            usd_limit, requests_limit = self._limits.of(period.kind)
            crossings: list[tuple[LimitKind, float, float | None, float]] = [
                ("usd", used_usd, usd_limit, cost),
                ("requests", used_requests, requests_limit, requests),
            ]
            for limit_kind, used, limit, wanted in crossings:
                if limit is None or used + wanted <= limit + EPSILON:
                    continue
                ends.append(period.end)
                reached.append(f"{period.kind} {limit_kind} {used:g} + {wanted:g} > {limit:g}")
                if 1.0 in self.alert_levels:
                    self._alert(provider, period, limit_kind, 1.0, used, limit, correlation_id)
        # No crossing found means another process refunded in between: retry now.
        retry_after_s = max(ends, default=now) - now
        raise BudgetExceeded(provider, retry_after_s, f"{self.scope}: " + "; ".join(reached))

    def _check_alerts(
        self,
        provider: str,
        periods: Iterable[Period],
        totals: Iterable[Totals],
        correlation_id: str | None,
    ) -> None:
        floors = self._alert_floors
        for period, (used_usd, used_requests) in zip(periods, totals, strict=True):
            usd_floor, requests_floor = floors[period.kind]
            if used_usd < usd_floor and used_requests < requests_floor:
                continue  # almost every call: below the lowest alert level
            usd_limit, requests_limit = self._limits.of(period.kind)
            usages: tuple[tuple[LimitKind, float, float | None], ...] = (
                ("usd", used_usd, usd_limit),
                ("requests", used_requests, requests_limit),
            )
            for limit_kind, used, limit in usages:
                if limit is None:
                    continue
                for threshold in self.alert_levels:
                    if used + EPSILON >= threshold * limit:
                        self._alert(
                            provider, period, limit_kind, threshold, used, limit, correlation_id
                        )

    def _alert(
        self,
        provider: str,
        period: Period,
        limit_kind: LimitKind,
        threshold: float,
        used: float,
        limit: float,
        correlation_id: str | None,
    ) -> None:
        """Emit `budget.alert` unless this threshold already fired in this period."""
        if period.key not in self._alerted:
            self._forget_alerts(self._clock())
            self._alerted[period.key] = (period.end, set())
        fired = self._alerted[period.key][1]
        if (limit_kind, threshold) in fired:
            return
        fired.add((limit_kind, threshold))
        emit(
            "budget.alert",
            level="WARNING",
            scope=self.scope,
            provider=provider,
            period=period.kind,
            period_key=period.key,
            limit_kind=limit_kind,
            threshold=threshold,
            used=used,
            limit=limit,
            correlation_id=correlation_id,
        )

    def _forget_alerts(self, now: float) -> None:
        """Drop alert memory of periods whose keys the ledger may already have dropped."""
        self._alerted = {
            key: entry for key, entry in self._alerted.items() if entry[0] + KEY_RETENTION_S > now
        }
