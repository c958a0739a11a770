"""The budget's cost ledger in the job database, so spend survives a restart.

`SqliteLedger` implements `resilience.ledger.LedgerStore`: `try_add` reads
every key's totals, checks every limit and adds to every key inside one
`BEGIN IMMEDIATE` transaction, so neither another task nor another process
on the same file can slip a reservation between the check and the charge.
It is deliberately not a `SyncLedger`: every answer needs the database.

Keys expire as in `InMemoryLedger`: a `try_add` key keeps the latest
`expires_at` any limit gave it, a key first seen by `add` lives
`default_ttl_s` from then, and every 1,024th `try_add` deletes the
expired. `clock` is the only time read here, and only for that; the
Budget's periods themselves come in through the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from resilience.clock import Clock, wall_time
from resilience.ledger import PeriodLimit, Totals, fits
from state.store.sqlite_db import Session, SqliteDatabase

SWEEP_EVERY: Final = 1024

_ADD: Final = """
INSERT INTO budget_ledger (key, usd, requests, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    usd = usd + excluded.usd,
    requests = requests + excluded.requests,
    expires_at = MAX(expires_at, excluded.expires_at)
RETURNING usd, requests"""


class SqliteLedger:
    """A `LedgerStore` in a `SqliteDatabase`; get one from `SqliteJobStore.ledger()`."""

    def __init__(
        self,
        database: SqliteDatabase,
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
        keys = [limit.key for limit in limits]
        async with self._db.transaction() as tx:
            if self._ops % SWEEP_EVERY == 0:
                await tx.fetch("DELETE FROM budget_ledger WHERE expires_at <= ?", (self._clock(),))
            marks = ", ".join("?" * len(keys))
            rows = await tx.fetch(
                f"SELECT key, usd, requests FROM budget_ledger WHERE key IN ({marks})", keys
            )
            used = {str(row[0]): (float(row[1]), int(row[2])) for row in rows}
            if not fits(limits, used, usd, requests):
                return None
            return [await _add(tx, limit.key, usd, requests, limit.expires_at) for limit in limits]

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        expires_at = self._clock() + self._default_ttl_s
        async with self._db.transaction() as tx:
            return [await _add(tx, key, usd, requests, expires_at) for key in keys]

    async def totals(self, key: str) -> Totals:
        """The key's totals; an expired key still counts until a sweep deletes it."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT usd, requests FROM budget_ledger WHERE key = ?", (key,)
            )
        return (0.0, 0) if row is None else (float(row[0]), int(row[1]))


async def _add(tx: Session, key: str, usd: float, requests: int, expires_at: float) -> Totals:
    rows = await tx.fetch(_ADD, (key, usd, requests, expires_at))
    return float(rows[0][0]), int(rows[0][1])
