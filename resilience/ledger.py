"""Where a `Budget` keeps its running totals.

`LedgerStore` is deliberately tiny so that shared stores can implement it:
the one hard requirement is that `try_add` checks every limit and adds to
every key as a single atomic step (a SQL transaction, a Redis Lua script).
`InMemoryLedger` serves one process; it never awaits inside `try_add`, which
makes the step atomic under asyncio.

A store that does no I/O can also implement `SyncLedger`, the same three
operations without `await`. `Budget` calls those when its store has them,
which saves a coroutine per call on the hot path; stores that do I/O (SQL,
Redis) implement `LedgerStore` alone and lose nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from resilience.clock import Clock, wall_time

Totals = tuple[float, int]
"""(usd, requests) charged to one key."""

EPSILON = 1e-9
"""Slack when comparing dollars to a limit, so 100 reservations of 0.01 fit in 1.00."""


@dataclass(frozen=True, slots=True)
class PeriodLimit:
    """The limits that apply to one period's key, e.g. "openai:day:2026-11-28".

    None means no limit of that kind. `expires_at` (epoch seconds) is when the
    store may drop the key: the period's end plus a retention margin.
    """

    key: str
    usd: float | None
    requests: int | None
    expires_at: float


def fits(
    limits: Sequence[PeriodLimit], used: Mapping[str, Totals], usd: float, requests: int
) -> bool:
    """Whether charging `usd` and `requests` to every limit's key keeps each within it.

    `used` holds the keys' totals so far; a missing key has spent nothing. The
    database ledgers call this inside their transaction. (`InMemoryLedger`
    keeps its own copy of the loop: it is on the guard's per-call path.)
    """
    for limit in limits:
        used_usd, used_requests = used.get(limit.key, (0.0, 0))
        if limit.usd is not None and used_usd + usd > limit.usd + EPSILON:
            return False
        if limit.requests is not None and used_requests + requests > limit.requests:
            return False
    return True


class LedgerStore(Protocol):
    """Running dollar and request totals per period key."""

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        """Atomically add to every key if no limit would be crossed; else change nothing.

        Returns the new totals, one per limit, or None when refused. Returning
        them saves a shared store a second round trip to check alerts.
        """
        ...

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        """Add a delta without checking limits (negative deltas refund); return new totals."""
        ...

    async def totals(self, key: str) -> tuple[float, int]:
        """The (usd, requests) charged to `key`; (0.0, 0) if it is unknown."""
        ...


@runtime_checkable
class SyncLedger(Protocol):
    """A `LedgerStore` that can answer at once, because it does no I/O.

    Each method is its `LedgerStore` namesake without the `await`, with the
    same contract (`try_add_now` is still all or nothing).
    """

    def try_add_now(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None: ...

    def add_now(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]: ...

    def totals_now(self, key: str) -> Totals: ...


@dataclass(slots=True)
class _Entry:
    usd: float
    requests: int
    expires_at: float


_UNKNOWN: Final = _Entry(0.0, 0, math.inf)
"""What a key nobody has charged yet reads as. Never stored, so never changed."""


class InMemoryLedger:
    """A `LedgerStore` (and `SyncLedger`) in a dict, for a single process.

    Expired keys are dropped opportunistically: on `add` and `totals`, and on
    every 1,024th `try_add`, once the earliest expiry has passed. A delta
    `add`ed to a key no `try_add` has introduced lives `default_ttl_s` from
    then, so stray keys cannot pile up forever.
    """

    def __init__(self, *, clock: Clock = wall_time, default_ttl_s: float = 2 * 86_400.0) -> None:
        self._clock = clock
        self._default_ttl_s = default_ttl_s
        self._entries: dict[str, _Entry] = {}
        self._next_expiry = math.inf
        self._ops = 0

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        return self.try_add_now(limits, usd, requests)

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        return self.add_now(keys, usd, requests)

    async def totals(self, key: str) -> Totals:
        return self.totals_now(key)

    def try_add_now(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        self._ops += 1
        if self._ops & 1023 == 0:  # the clock is read once per 1,024 reservations
            self._sweep()
        entries = self._entries
        for limit in limits:
            used = entries.get(limit.key, _UNKNOWN)
            if limit.usd is not None and used.usd + usd > limit.usd + EPSILON:
                return None
            if limit.requests is not None and used.requests + requests > limit.requests:
                return None
        totals = []
        for limit in limits:
            entry = entries.get(limit.key)
            if entry is None or entry.expires_at < limit.expires_at:
                # Only a new or extended key needs `_entry`'s bookkeeping.
                entry = self._entry(limit.key, limit.expires_at)
            entry.usd += usd
            entry.requests += requests
            totals.append((entry.usd, entry.requests))
        return totals

    def add_now(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        self._sweep()
        expires_at = self._clock() + self._default_ttl_s
        totals = []
        for key in keys:
            entry = self._entry(key, expires_at)
            entry.usd += usd
            entry.requests += requests
            totals.append((entry.usd, entry.requests))
        return totals

    def totals_now(self, key: str) -> Totals:
        self._sweep()
        entry = self._entries.get(key, _UNKNOWN)
        return entry.usd, entry.requests

    def _entry(self, key: str, expires_at: float) -> _Entry:
        """The key's entry, created if missing; an existing expiry is never shortened."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(0.0, 0, expires_at)
        elif expires_at > entry.expires_at:
            entry.expires_at = expires_at
        if entry.expires_at < self._next_expiry:
            self._next_expiry = entry.expires_at
        return entry

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_expiry:
            return
        self._entries = {k: e for k, e in self._entries.items() if e.expires_at > now}
        self._next_expiry = min((e.expires_at for e in self._entries.values()), default=math.inf)
