"""Shared test helpers: an event recorder, an awaited ledger and Hypothesis profiles."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from loguru import logger

from resilience.clock import Clock, wall_time
from resilience.ledger import InMemoryLedger, PeriodLimit, Totals

# `tests` runs each property 60 times; `chaos` (nox -s chaos) runs it 1,000 times.
# In CI every run is derandomized and keeps no example database, so a failure
# there replays exactly on the next run.
_IN_CI = bool(os.environ.get("CI"))
_CI: dict[str, Any] = {"derandomize": True, "database": None} if _IN_CI else {}
for _name, _examples in (("dev", 60), ("chaos", 1000)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        **_CI,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class Events:
    """Records the `extra` fields of every loguru record while a test runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]


@pytest.fixture
def events() -> Iterator[Events]:
    recorder = Events()
    handler = logger.add(lambda m: recorder.records.append(dict(m.record["extra"])), level="DEBUG")
    yield recorder
    logger.remove(handler)


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
