"""The budget's cost ledger in the job database, so spend survives a restart.

`SqlLedger` implements `resilience.ledger.LedgerStore` on either database.
`try_add` holds every key it touches, checks every limit against their
totals and adds to every key, all in one transaction, so neither another
task nor another process can slip a reservation between the check and the
charge. How a key is held is the dialect's (`hold_budget`): SQLite's
`BEGIN IMMEDIATE` already holds the whole file, so it only reads;
PostgreSQL locks just the keys' rows, creating absent ones at zero. A
refusal rolls the transaction back, taking any such rows with it. It is
deliberately not a `SyncLedger`: every answer needs the database.

Keys expire as in `InMemoryLedger`: a `try_add` key keeps the latest
`expires_at` any limit gave it, a key first seen by `add` lives
`default_ttl_s` from then, and every 1,024th `try_add` first deletes the
expired, in a statement of its own so that it never holds the keys while
it deletes. `clock` is the only time read here, and only for that; the
Budget's periods themselves come in through the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic

from resilience.clock import Clock, wall_time
from resilience.ledger import PeriodLimit, Totals, fits
from state.store.database import Database, S

SWEEP_EVERY: Final = 1024


class _Refused(Exception):
    """Raised inside `try_add`'s transaction to roll it back."""


class SqlLedger(Generic[S]):
    """A `LedgerStore` in a store's `Database`; get one from the store's `ledger()`."""

    def __init__(
        self,
        database: Database[S],
        *,
        clock: Clock = wall_time,
        default_ttl_s: float = 2 * 86_400.0,
    ) -> None:
        self._db = database
        self._clock = clock
        self._default_ttl_s = default_ttl_s
        self._ops = 0

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            async with self._db.session() as session:
                await session.execute(
                    "DELETE FROM budget_ledger WHERE expires_at <= ?", (self._clock(),)
                )
        keys = [limit.key for limit in limits]
        expiries: dict[str, float] = {}
        for limit in limits:
            expiries[limit.key] = max(limit.expires_at, expiries.get(limit.key, limit.expires_at))
        hold, charge = self._db.dialect.hold_budget, self._db.dialect.charge_budget
        try:
            async with self._db.transaction() as tx:
                used = await hold(tx, expiries)
                if not fits(limits, used, usd, requests):
                    raise _Refused
                return [await charge(tx, key, usd, requests, expiries[key]) for key in keys]
        except _Refused:
            return None

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        expiries = dict.fromkeys(keys, self._clock() + self._default_ttl_s)
        hold, charge = self._db.dialect.hold_budget, self._db.dialect.charge_budget
        async with self._db.transaction() as tx:
            await hold(tx, expiries)
            return [await charge(tx, key, usd, requests, expiries[key]) for key in keys]

    async def totals(self, key: str) -> Totals:
        """The key's totals; an expired key still counts until a sweep deletes it."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT usd, requests FROM budget_ledger WHERE key = ?", (key,)
            )
        return (0.0, 0) if row is None else (float(row[0]), int(row[1]))
