"""The budget's cost ledger in PostgreSQL, shared by every process on the database.

`PostgresLedger` implements `resilience.ledger.LedgerStore` with the same
semantics as `state.store.sqlite_ledger.SqliteLedger`, but where SQLite takes one
write lock for the whole file, here each call locks just the rows of its
keys, in one transaction:

1. `_LOCK` upserts every key it touches, in key order: a new key is inserted
   at zero, an existing one is locked (and its expiry extended). Inserting
   locks the absent keys too, which a `SELECT ... FOR UPDATE` could not, so
   two processes charging a key nobody has charged yet still queue. Key
   order makes every transaction lock in the same order: no deadlocks.
2. With every row locked, `try_add` checks every limit against the totals
   the upsert returned, and either adds to every key or rolls back,
   taking the zero rows and extended expiries with it.

Keys expire as in `SqliteLedger`; the sweep of every 1,024th `try_add` is a
statement of its own before the transaction, so it never holds the keys'
locks while it deletes. `clock` is the only time read here, and only for
expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from resilience.clock import Clock, wall_time
from resilience.ledger import PeriodLimit, Totals, fits
from state.store.postgres_db import Connection, PostgresDatabase

SWEEP_EVERY: Final = 1024

_LOCK: Final = """
INSERT INTO budget_ledger (key, usd, requests, expires_at)
SELECT key, 0, 0, expires_at FROM unnest($1::text[], $2::float8[]) AS new (key, expires_at)
ORDER BY key
ON CONFLICT (key) DO UPDATE SET
    expires_at = GREATEST(budget_ledger.expires_at, excluded.expires_at)
RETURNING key, usd, requests"""

_ADD: Final = """
UPDATE budget_ledger SET usd = usd + $2, requests = requests + $3
WHERE key = $1
RETURNING usd, requests"""


class _Refused(Exception):
    """Raised inside `try_add`'s transaction to roll it back."""


class PostgresLedger:
    """A `LedgerStore` in a `PostgresDatabase`; get one from `PostgresJobStore.ledger()`."""

    def __init__(
        self,
        database: PostgresDatabase,
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
                    "DELETE FROM budget_ledger WHERE expires_at <= $1", self._clock()
                )
        expiries: dict[str, float] = {}
        for limit in limits:
            expiries[limit.key] = max(limit.expires_at, expiries.get(limit.key, limit.expires_at))
        try:
            async with self._db.transaction() as tx:
                used = await _lock(tx, expiries)
                if not fits(limits, used, usd, requests):
                    raise _Refused
                return [await _add(tx, limit.key, usd, requests) for limit in limits]
        except _Refused:
            return None

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        expires_at = self._clock() + self._default_ttl_s
        async with self._db.transaction() as tx:
            await _lock(tx, dict.fromkeys(keys, expires_at))
            return [await _add(tx, key, usd, requests) for key in keys]

    async def totals(self, key: str) -> Totals:
        """The key's totals; an expired key still counts until a sweep deletes it."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT usd, requests FROM budget_ledger WHERE key = $1", key
            )
        return (0.0, 0) if row is None else (float(row[0]), int(row[1]))


async def _lock(tx: Connection, expiries: dict[str, float]) -> dict[str, Totals]:
    """Lock (creating at zero) each key's row; its totals before this transaction's charges."""
    keys = list(expiries)
    rows = await tx.fetch(_LOCK, keys, [expiries[key] for key in keys])
    return {str(row[0]): (float(row[1]), int(row[2])) for row in rows}


async def _add(tx: Connection, key: str, usd: float, requests: int) -> Totals:
    row = await tx.fetch_one(_ADD, key, usd, requests)
    if row is None:
        raise RuntimeError(f"ledger key {key!r} vanished while locked")
    return float(row[0]), int(row[1])
