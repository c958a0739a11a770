"""SQLite: one database file, its session and its dialect, and `SqliteJobStore` on it.

`SqliteJobStore.open(path)` is the embedded default (`BREAKWATER_DB`): the
store of `state.store.sql`, over this module's `SqliteDatabase`.

Decisions:

* One aiosqlite connection per process, and an `asyncio.Lock` around every
  use of it. A transaction spans several awaits, and statements from another
  coroutine on the same connection would land inside it; the lock is what
  keeps tasks apart, and SQLite's own locking keeps processes apart.
* Writes run in `BEGIN IMMEDIATE`, which takes the write lock at the start,
  so a read-check-write (a compare-and-set, a budget check) cannot be
  overtaken by another process between its read and its write. Waiting for
  that lock is `busy_timeout`'s job. The dialect therefore needs no row
  locks, no lease query that skips locked rows, and no lock for migrating.
* WAL, so readers in other processes never block the writer, with
  `synchronous=NORMAL`: an application crash loses nothing, and a power cut
  can only lose the last commits, which the idempotent steps redo.
* Every await on aiosqlite sits in `resilience.clock.thread_work()`, so a
  virtual-time loop holds its clock while aiosqlite's thread works instead
  of jumping to the next timer.
* `inline=True` runs the same statements through `sqlite3` on the loop's own
  thread, for simulations. aiosqlite's answer arrives in real time, so how
  many other steps run while a statement is in flight depends on the
  machine; inline, every statement is one fixed yield point, and a seeded
  run replays exactly. The SQL, the file and SQLite's locking are the same
  either way, but inline allows one connection per file in a process: a
  second would wait for SQLite's lock on the very thread the first needs
  to release it.
* Batches (chunks, vectors) are `executemany`: one statement a row, in
  order, inside the caller's transaction.
* Cancellation: a rollback is queued behind whatever statement is in
  flight (aiosqlite runs them in order), so a cancelled transaction never
  leaves the connection inside one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, Protocol, Self

import aiosqlite

from resilience.clock import thread_work
from resilience.ledger import Totals
from state.store.database import Dialect, Params, Vector, migrate
from state.store.protocol import ChunkText
from state.store.schema import SQLITE
from state.store.sql import SqlJobStore

MIN_SQLITE: Final = (3, 35, 0)
"""RETURNING arrived in SQLite 3.35.0 (2021)."""

_LEASE: Final = """
UPDATE jobs
SET lease_owner = ?1, lease_expires_at = ?2,
    step_attempts = step_attempts + (state != 'waiting' AND NOT (lease_owner IS NULL AND EXISTS (
        SELECT 1 FROM remote_parses r WHERE r.job_id = jobs.id AND r.status IN ('live', 'failed'))))
WHERE id IN (
    SELECT id FROM jobs
    WHERE state NOT IN ('complete', 'failed') AND not_before <= ?3
        AND (lease_owner IS NULL OR lease_expires_at <= ?3)
        AND (?5 = 0 OR COALESCE(resume_to, state) IN ('parsed', 'chunked', 'embedding'))
    ORDER BY not_before, created_at, id
    LIMIT ?4
)
RETURNING *"""

_INSERT_CHUNKS: Final = "INSERT INTO chunks (sha256, chunk_index, text) VALUES (?, ?, ?)"
_ADD_CHUNKS: Final = _INSERT_CHUNKS + " ON CONFLICT DO NOTHING"

_PUT_EMBEDDING: Final = """
INSERT INTO embeddings (sha256, chunk_index, model, dimensions, vector, path)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (sha256, chunk_index, model, dimensions) DO UPDATE SET
    vector = excluded.vector, path = excluded.path
WHERE NOT (embeddings.path = 'real' AND excluded.path = 'mock')"""

_CHARGE: Final = """
INSERT INTO budget_ledger (key, usd, requests, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    usd = usd + excluded.usd,
    requests = requests + excluded.requests,
    expires_at = MAX(expires_at, excluded.expires_at)
RETURNING usd, requests"""


class _Driver(Protocol):
    async def fetch(self, sql: str, params: Params) -> list[sqlite3.Row]: ...

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int: ...

    async def close(self) -> None: ...


class _Threaded:
    """aiosqlite: statements run on its thread while the loop goes on."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, params: Params) -> list[sqlite3.Row]:
        with thread_work():
            return list(await self._connection.execute_fetchall(sql, params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        with thread_work():
            cursor = await self._connection.executemany(sql, rows)
        return cursor.rowcount

    async def close(self) -> None:
        with thread_work():
            await self._connection.close()


class _Inline:
    """sqlite3 on the loop's thread; each statement then yields once, as an await would."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, params: Params) -> list[sqlite3.Row]:
        rows = self._connection.execute(sql, params).fetchall()
        await asyncio.sleep(0)
        return rows

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        changed = self._connection.executemany(sql, rows).rowcount
        await asyncio.sleep(0)
        return changed

    async def close(self) -> None:
        self._connection.close()


class SqliteSession:
    """Statements on the connection, handed out only while the database's lock is held."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    async def fetch(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one statement and return its rows (a RETURNING clause's, for writes)."""
        return await self._driver.fetch(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self.fetch(sql, params)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement per parameter row; return how many rows it changed in all."""
        return await self._driver.execute_many(sql, rows)


class SqliteDialect(Dialect[SqliteSession]):
    spelling = SQLITE
    lease = _LEASE
    row_lock = ""
    missing_parent = sqlite3.IntegrityError

    async def put_chunks(
        self, tx: SqliteSession, sha256: str, chunks: Sequence[ChunkText], *, keep_existing: bool
    ) -> int:
        sql = _ADD_CHUNKS if keep_existing else _INSERT_CHUNKS
        return await tx.execute_many(sql, [(sha256, chunk.index, chunk.text) for chunk in chunks])

    async def put_vectors(
        self,
        tx: SqliteSession,
        sha256: str,
        model: str,
        dimensions: int,
        vectors: Sequence[Vector],
    ) -> int:
        rows = [(sha256, index, model, dimensions, blob, path) for index, blob, path in vectors]
        return await tx.execute_many(_PUT_EMBEDDING, rows)

    async def hold_budget(
        self, tx: SqliteSession, expiries: Mapping[str, float]
    ) -> dict[str, Totals]:
        marks = ", ".join("?" * len(expiries))
        rows = await tx.fetch(
            f"SELECT key, usd, requests FROM budget_ledger WHERE key IN ({marks})", list(expiries)
        )
        return {str(row[0]): (float(row[1]), int(row[2])) for row in rows}

    async def charge_budget(
        self, tx: SqliteSession, key: str, usd: float, requests: int, expires_at: float
    ) -> Totals:
        rows = await tx.fetch(_CHARGE, (key, usd, requests, expires_at))
        return float(rows[0][0]), int(rows[0][1])


class SqliteDatabase:
    """An open, migrated database file. Use `session()` or `transaction()` to reach it."""

    dialect: Final = SqliteDialect()

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver
        self._session = SqliteSession(driver)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: str | Path, *, busy_timeout_s: float = 5.0, inline: bool = False
    ) -> SqliteDatabase:
        """Open (creating if needed) and upgrade the database at `path`.

        `inline`: run statements on the loop's thread (simulations; see above).
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            wanted = ".".join(map(str, MIN_SQLITE))
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: {wanted} is needed")
        # isolation_level=None: no implicit transactions; every BEGIN is ours.
        driver: _Driver
        if inline:
            connection = sqlite3.connect(path, isolation_level=None)
            connection.row_factory = sqlite3.Row
            driver = _Inline(connection)
        else:
            threaded = aiosqlite.connect(path, isolation_level=None)
            with thread_work():
                await threaded
            threaded.row_factory = sqlite3.Row
            driver = _Threaded(threaded)
        database = cls(driver)
        try:
            await database._configure(busy_timeout_s)
            await migrate(database)
        except BaseException:
            await database.close()
            raise
        return database

    async def _configure(self, busy_timeout_s: float) -> None:
        async with self.session() as session:
            await session.fetch(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = await _switch_to_wal(session, busy_timeout_s)
            if mode is None or str(mode[0]).lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode (got {mode and mode[0]!r})")
            await session.fetch("PRAGMA synchronous = NORMAL")
            await session.fetch("PRAGMA foreign_keys = ON")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[SqliteSession]:
        """The connection for statements that are atomic one by one."""
        async with self._lock:
            yield self._session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteSession]:
        """A write transaction: committed if the block returns, rolled back if it raises."""
        async with self._lock:
            try:
                await self._session.fetch("BEGIN IMMEDIATE")
                yield self._session
                await self._session.fetch("COMMIT")
            except BaseException:
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        try:
            await self._session.fetch("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # no transaction: BEGIN failed, or SQLite already rolled back

    async def close(self) -> None:
        await self._driver.close()


class SqliteJobStore(SqlJobStore[SqliteSession]):
    """The `JobStore` protocol on SQLite. Open with `await SqliteJobStore.open(path)`."""

    @classmethod
    async def open(
        cls, path: str | Path, *, busy_timeout_s: float = 5.0, inline: bool = False
    ) -> Self:
        """Open (creating if needed) and upgrade the database file at `path`.

        `inline=True` runs statements on the loop's thread: for simulations,
        which must replay exactly (see the module).
        """
        return cls(await SqliteDatabase.open(path, busy_timeout_s=busy_timeout_s, inline=inline))


async def _switch_to_wal(session: SqliteSession, timeout_s: float) -> sqlite3.Row | None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the file.

    Switching needs the database to itself, and SQLite may refuse at once
    with "database is locked" without waiting on `busy_timeout` (seen when
    several stores open one new file together), so this waits itself, on
    the loop clock, for at most `timeout_s`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await session.fetch_one("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.01)
