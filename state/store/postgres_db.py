"""One PostgreSQL database, reached through an asyncpg pool, for the store and the ledger.

The PostgreSQL counterpart of `state.store.sqlite_db`, and the only module that
imports asyncpg: it has no type information, so it is typed here once, as
narrowly as the store uses it (`Connection`, `Row`).

Decisions:

* A pool, not one connection: PostgreSQL serves many connections at once,
  and row locks, not an in-process lock, keep transactions apart, so tasks
  need not queue behind one another as they do on SQLite's one connection.
* Transactions are READ COMMITTED, the server's default: a compare-and-set
  locks the row it checks (`SELECT ... FOR UPDATE`), and every statement
  after a lock wait sees what the lock's holder committed.
* Every use of a connection sits in `resilience.clock.thread_work()`. The
  server answers in real time, like aiosqlite's thread, so a virtual-time
  loop must hold its clock while a statement is out, or its timers would
  fire before the answer. Between statements a store method never waits on
  anything but the server, so holding for the whole acquire-to-release
  span costs nothing and also covers connecting and resetting.
* Migrations (`state.store.schema`, PostgreSQL's dialect) each run in their own
  transaction under `pg_advisory_xact_lock(MIGRATION_LOCK)`, so processes
  starting together apply each one exactly once; the lock is released by
  the commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from resilience.clock import thread_work
from state.store.rows import Row
from state.store.schema import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE
from state.store.sqlite_db import SchemaTooNew

MIGRATION_LOCK: Final = int.from_bytes(b"brkwater", "big")
"""The advisory lock key migrations take: any fixed 64-bit number, this one spells a name."""

ForeignKeyViolation: Final[type[Exception]] = asyncpg.ForeignKeyViolationError
"""A row named a parent (document, chunk) that is not stored."""


class Connection:
    """A pooled connection, handed out by `PostgresDatabase.session()` or `transaction()`.

    Arguments are positional and bound to `$1`, `$2`, ... by the server.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        """Run one statement and return its rows (a RETURNING clause's, for writes)."""
        rows: list[Row] = await self._raw.fetch(sql, *args)
        return rows

    async def fetch_one(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await self._raw.fetchrow(sql, *args)
        return row

    async def execute(self, sql: str, *args: object) -> None:
        """Run a statement for its effect; without arguments it may be several."""
        await self._raw.execute(sql, *args)


class PostgresDatabase:
    """A pool on one migrated database. Use `session()` or `transaction()` to reach it."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        """Connect to the database at `url` (postgresql://...) and upgrade its schema."""
        with thread_work():
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        database = cls(pool)
        try:
            await database._migrate()
        except BaseException:
            await database.close()
            raise
        return database

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            await _lock_schema(tx)
            await tx.execute(SCHEMA_VERSION_TABLE)
            current = await _version(tx)
        if current > LATEST:
            raise SchemaTooNew(f"database schema is v{current}; this code knows up to v{LATEST}")
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with self.transaction() as tx:
                await _lock_schema(tx)
                # Another process may have applied it while we waited for the lock.
                if await _version(tx) >= migration.version:
                    continue
                for statement in migration.postgres:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                    migration.version,
                    migration.description,
                )

    async def schema_version(self) -> int:
        async with self.session() as session:
            return await _version(session)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Connection]:
        """A connection for statements that are atomic one by one."""
        with thread_work():
            async with self._pool.acquire() as raw:
                yield Connection(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A transaction: committed if the block returns, rolled back if it raises."""
        with thread_work():
            async with self._pool.acquire() as raw, raw.transaction():
                yield Connection(raw)

    async def close(self) -> None:
        with thread_work():
            await self._pool.close()


async def _lock_schema(tx: Connection) -> None:
    await tx.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)


async def _version(session: Connection) -> int:
    row = await session.fetch_one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(row[0]) if row is not None else 0
