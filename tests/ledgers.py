"""A budget ledger for tests that must take the awaited path, as over SQL or Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from resilience.clock import Clock, wall_time
from resilience.ledger import InMemoryLedger, PeriodLimit, Totals


class AwaitedLedger:
    """A `LedgerStore` that must be awaited, as a SQL or Redis one would be.

    It has no `SyncLedger` methods, so a `Budget` over it takes the awaited
    path; each operation yields to the loop once, like a round trip.
    """

    def __init__(self, *, clock: Clock = wall_time) -> None:
        self._store = InMemoryLedger(clock=clock)

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        await asyncio.sleep(0)
        return self._store.try_add_now(limits, usd, requests)

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        await asyncio.sleep(0)
        return self._store.add_now(keys, usd, requests)

    async def totals(self, key: str) -> Totals:
        await asyncio.sleep(0)
        return self._store.totals_now(key)
