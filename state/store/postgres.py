"""PostgreSQL: a pooled database, its session and its dialect, and `PostgresJobStore` on it.

`PostgresJobStore.open(url)` is the store of `state.store.sql` for several
workers and servers on one database, over this module's `PostgresDatabase`.
This is the only module that imports asyncpg: it has no type information,
so it is typed here once, as narrowly as the store uses it.

Decisions:

* A pool, not one connection: PostgreSQL serves many connections at once,
  and row locks, not an in-process lock, keep transactions apart, so tasks
  need not queue behind one another as they do on SQLite's one connection.
* Transactions are READ COMMITTED, the server's default: a compare-and-set
  locks the row it checks (`SELECT ... FOR UPDATE`), and every statement
  after a lock wait sees what the lock's holder committed.
* `lease` is one statement: a CTE picks ready jobs `FOR UPDATE SKIP LOCKED`,
  so workers polling together take different jobs instead of queueing on
  the same rows, and the UPDATE around it stamps the lease.
* Batches (chunks, vectors) are one statement over `unnest` arrays, not a
  round trip a row. One statement may not upsert the same key twice, so a
  batch that repeats a key runs as several statements, each key's n-th row
  in the n-th: the outcome is what SQLite's row-by-row `executemany` gives.
* The ledger holds its keys by upserting them, in key order: a new key is
  inserted at zero, an existing one is locked (and its expiry extended).
  Inserting locks the absent keys too, which a `SELECT ... FOR UPDATE`
  could not, so two processes charging a key nobody has charged yet still
  queue; key order makes every transaction lock in the same order, so
  there are no deadlocks.
* Migrations each run in their own transaction under
  `pg_advisory_xact_lock(MIGRATION_LOCK)`, so processes starting together
  apply each one exactly once; the commit releases the lock.
* Every use of a connection sits in `resilience.clock.thread_work()`. The
  server answers in real time, like aiosqlite's thread, so a virtual-time
  loop must hold its clock while a statement is out, or its timers would
  fire before the answer. Between statements a store method never waits on
  anything but the server, so holding for the whole acquire-to-release
  span costs nothing and also covers connecting and resetting.

The statements shared with SQLite are written with `?`, which the session
numbers; this module's own are written with `$1`, `$2`, ... directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, Final, Self

import asyncpg  # type: ignore[import-untyped]

from resilience.clock import thread_work
from resilience.ledger import Totals
from state.store.database import Dialect, Params, Vector, migrate
from state.store.protocol import ChunkText
from state.store.rows import Row
from state.store.schema import POSTGRES
from state.store.sql import SqlJobStore

MIGRATION_LOCK: Final = int.from_bytes(b"brkwater", "big")
"""The advisory lock key migrations take: any fixed 64-bit number, this one spells a name."""

UNREACHABLE: Final[tuple[type[Exception], ...]] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
"""What opening raises when the server refuses, is not there, or rejects the URL's
role, password or database."""

_LEASE: Final = """
WITH ready AS (
    SELECT id FROM jobs
    WHERE state NOT IN ('complete', 'failed') AND not_before <= $3
        AND (lease_owner IS NULL OR lease_expires_at <= $3)
        AND (NOT $5::boolean OR COALESCE(resume_to, state) IN ('parsed', 'chunked', 'embedding'))
    ORDER BY not_before, created_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs
SET lease_owner = $1, lease_expires_at = $2,
    step_attempts = step_attempts + CASE
        WHEN jobs.state = 'waiting' THEN 0
        WHEN jobs.lease_owner IS NULL AND EXISTS (
            SELECT 1 FROM remote_parses r
            WHERE r.job_id = jobs.id AND r.status IN ('live', 'failed')
        ) THEN 0
        ELSE 1 END
FROM ready
WHERE jobs.id = ready.id
RETURNING jobs.*"""

_CHUNK_ROWS: Final = """
INSERT INTO chunks (sha256, chunk_index, text)
SELECT $1, chunk_index, text FROM unnest($2::integer[], $3::text[]) AS new (chunk_index, text)
"""
_INSERT_CHUNKS: Final = _CHUNK_ROWS + "RETURNING chunk_index"
# DO NOTHING skips a key the same statement inserted, so first wins within a batch
# too: no need to split it.
_ADD_CHUNKS: Final = _CHUNK_ROWS + "ON CONFLICT DO NOTHING\nRETURNING chunk_index"

_PUT_EMBEDDINGS: Final = """
INSERT INTO embeddings (sha256, chunk_index, model, dimensions, vector, path)
SELECT $1, chunk_index, $2, $3, vector, path
FROM unnest($4::integer[], $5::bytea[], $6::text[]) AS new (chunk_index, vector, path)
ON CONFLICT (sha256, chunk_index, model, dimensions) DO UPDATE SET
    vector = excluded.vector, path = excluded.path
WHERE NOT (embeddings.path = 'real' AND excluded.path = 'mock')
RETURNING chunk_index"""

_HOLD: Final = """
INSERT INTO budget_ledger (key, usd, requests, expires_at)
SELECT key, 0, 0, expires_at FROM unnest($1::text[], $2::float8[]) AS new (key, expires_at)
ORDER BY key
ON CONFLICT (key) DO UPDATE SET
    expires_at = GREATEST(budget_ledger.expires_at, excluded.expires_at)
RETURNING key, usd, requests"""

_CHARGE: Final = """
UPDATE budget_ledger SET usd = usd + $2, requests = requests + $3
WHERE key = $1
RETURNING usd, requests"""


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`sql` with its `?` placeholders spelled as PostgreSQL's `$1`, `$2`, ..."""
    first, *rest = sql.split("?")
    return first + "".join(f"${n}{piece}" for n, piece in enumerate(rest, 1))


class PostgresSession:
    """A pooled connection, handed out by `PostgresDatabase.session()` or `transaction()`."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement and return its rows (a RETURNING clause's, for writes)."""
        rows: list[Row] = await self._raw.fetch(numbered(sql), *params)
        return rows

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._raw.fetchrow(numbered(sql), *params)
        return row

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._raw.execute(numbered(sql), *params)


class PostgresDialect(Dialect[PostgresSession]):
    spelling = POSTGRES
    lease = _LEASE
    row_lock = " FOR UPDATE"
    missing_parent = asyncpg.ForeignKeyViolationError

    async def lock_schema(self, tx: PostgresSession) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", (MIGRATION_LOCK,))

    async def put_chunks(
        self,
        tx: PostgresSession,
        sha256: str,
        chunks: Sequence[ChunkText],
        *,
        keep_existing: bool,
    ) -> int:
        sql = _ADD_CHUNKS if keep_existing else _INSERT_CHUNKS
        indexes, texts = [chunk.index for chunk in chunks], [chunk.text for chunk in chunks]
        return len(await tx.fetch(sql, (sha256, indexes, texts)))

    async def put_vectors(
        self,
        tx: PostgresSession,
        sha256: str,
        model: str,
        dimensions: int,
        vectors: Sequence[Vector],
    ) -> int:
        written = 0
        for batch in _rounds(vectors):
            rows = await tx.fetch(
                _PUT_EMBEDDINGS,
                (
                    sha256,
                    model,
                    dimensions,
                    [index for index, _, _ in batch],
                    [blob for _, blob, _ in batch],
                    [path for _, _, path in batch],
                ),
            )
            written += len(rows)
        return written

    async def hold_budget(
        self, tx: PostgresSession, expiries: Mapping[str, float]
    ) -> dict[str, Totals]:
        keys = list(expiries)
        rows = await tx.fetch(_HOLD, (keys, [expiries[key] for key in keys]))
        return {str(row[0]): (float(row[1]), int(row[2])) for row in rows}

    async def charge_budget(
        self, tx: PostgresSession, key: str, usd: float, requests: int, expires_at: float
    ) -> Totals:
        """`hold_budget` created the key and set its expiry."""
        row = await tx.fetch_one(_CHARGE, (key, usd, requests))
        if row is None:
            raise RuntimeError(f"ledger key {key!r} vanished while locked")
        return float(row[0]), int(row[1])


class PostgresDatabase:
    """A pool on one migrated database. Use `session()` or `transaction()` to reach it."""

    dialect: Final = PostgresDialect()

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        """Connect to the database at `url` (postgresql://...) and upgrade its schema."""
        with thread_work():
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        database = cls(pool)
        try:
            await migrate(database)
        except BaseException:
            await database.close()
            raise
        return database

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PostgresSession]:
        """A connection for statements that are atomic one by one."""
        with thread_work():
            async with self._pool.acquire() as raw:
                yield PostgresSession(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresSession]:
        """A transaction: committed if the block returns, rolled back if it raises."""
        with thread_work():
            async with self._pool.acquire() as raw, raw.transaction():
                yield PostgresSession(raw)

    async def close(self) -> None:
        with thread_work():
            await self._pool.close()


class PostgresJobStore(SqlJobStore[PostgresSession]):
    """The `JobStore` protocol on PostgreSQL. Open with `await PostgresJobStore.open(url)`."""

    @classmethod
    async def open(cls, url: str, *, max_connections: int = 10) -> Self:
        """Connect to `url` (postgresql://user:password@host:port/database) and upgrade it."""
        return cls(await PostgresDatabase.open(url, max_size=max_connections))


def _rounds(vectors: Sequence[Vector]) -> list[list[Vector]]:
    """Split so no batch repeats a chunk index: the n-th row of each index goes in batch n."""
    rounds: list[list[Vector]] = []
    seen: dict[int, int] = {}
    for vector in vectors:
        n = seen.get(vector[0], 0)
        seen[vector[0]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(vector)
    return rounds
