"""One SQLite database file, opened for the store and the ledger to share.

Decisions:

* One aiosqlite connection per process, and an `asyncio.Lock` around every
  use of it. A transaction spans several awaits, and statements from another
  coroutine on the same connection would land inside it; the lock is what
  keeps tasks apart, and SQLite's own locking keeps processes apart.
* Writes run in `BEGIN IMMEDIATE`, which takes the write lock at the start,
  so a read-check-write (a compare-and-set, a budget check) cannot be
  overtaken by another process between its read and its write. Waiting for
  that lock is `busy_timeout`'s job.
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
* Cancellation: a rollback is queued behind whatever statement is in
  flight (aiosqlite runs them in order), so a cancelled transaction never
  leaves the connection inside one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, Protocol

import aiosqlite

from resilience.clock import thread_work
from state.store.schema import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE

MIN_SQLITE: Final = (3, 35, 0)
"""RETURNING arrived in SQLite 3.35.0 (2021)."""

Params = Sequence[object]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Breakwater; this code must not touch it."""


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


class Session:
    """Statements on the connection, handed out only while the database's lock is held."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    async def fetch(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one statement and return its rows (a RETURNING clause's, for writes)."""
        return await self._driver.fetch(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement per parameter row; return how many rows it changed in all."""
        return await self._driver.execute_many(sql, rows)


class SqliteDatabase:
    """An open, migrated database file. Use `session()` or `transaction()` to reach it."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver
        self._session = Session(driver)
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
            await database._migrate()
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

    async def _migrate(self) -> None:
        async with self.session() as session:
            await session.fetch(SCHEMA_VERSION_TABLE)
            current = await _version(session)
        if current > LATEST:
            raise SchemaTooNew(f"database schema is v{current}; this code knows up to v{LATEST}")
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with self.transaction() as tx:
                # Another process may have applied it since we looked.
                if await _version(tx) >= migration.version:
                    continue
                for statement in migration.statements:
                    await tx.fetch(statement)
                await tx.fetch(
                    "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                    (migration.version, migration.description),
                )

    async def schema_version(self) -> int:
        async with self.session() as session:
            return await _version(session)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """The connection for statements that are atomic one by one."""
        async with self._lock:
            yield self._session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
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


async def _version(session: Session) -> int:
    row = await session.fetch_one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(row[0]) if row is not None else 0


async def _switch_to_wal(session: Session, timeout_s: float) -> sqlite3.Row | None:
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
