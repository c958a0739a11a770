"""What the one SQL store asks of a database, and the migrations it runs through it.

`state.store.sql.SqlJobStore` and `state.store.ledger.SqlLedger` are written
once, against three things a database module provides:

* `Session`: statements on a connection. SQL is written once, with `?`
  placeholders; PostgreSQL's session numbers them (`$1`, `$2`, ...).
* `Database`: `session()` for statements that are atomic one by one, and
  `transaction()` for a block committed whole or not at all. How connections
  are held and locked (SQLite's one connection behind an `asyncio.Lock`,
  PostgreSQL's pool) is the database's business.
* `Dialect`: every statement or step the two databases cannot share, and
  nothing else, so the list below is the whole of their difference.

`migrate` brings a database to `state.store.schema.LATEST`, each migration
in its own transaction, rendered in the dialect's spelling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar, Generic, Protocol, TypeVar

from resilience.ledger import Totals
from resilience.router import Path as ServedBy
from state.store.protocol import ChunkText
from state.store.rows import Row
from state.store.schema import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE, Spelling

Params = Sequence[object]
"""A statement's arguments, in the order of its placeholders."""

Vector = tuple[int, bytes, ServedBy]
"""An embedding ready to write: chunk index, float32 bytes (`state.store.vectors`), path."""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Breakwater; this code must not touch it."""


class Session(Protocol):
    """Statements on one connection, handed out by `Database.session()` or `transaction()`."""

    async def fetch(self, sql: str, params: Params = ()) -> Sequence[Row]:
        """Run one statement and return its rows (a RETURNING clause's, for writes)."""
        ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def execute(self, sql: str, params: Params = ()) -> None:
        """Run one statement for its effect."""
        ...


S = TypeVar("S", bound=Session)


class Dialect(ABC, Generic[S]):
    """Where one database differs from the other, for the store, the ledger and the schema."""

    spelling: ClassVar[Spelling]
    """How the schema's migrations are spelled here."""
    lease: ClassVar[str]
    """`JobStore.lease` as one statement, on (owner, lease expiry, now, limit, to_embed): it
    stamps the lease on the earliest ready jobs and returns their rows."""
    row_lock: ClassVar[str]
    """What follows a compare-and-set's SELECT of the job to hold its row until commit."""
    missing_parent: ClassVar[type[Exception]]
    """What a write raises when it names a document or chunk that is not stored."""

    async def lock_schema(self, tx: S) -> None:
        """Keep other processes from migrating until `tx` ends.

        Nothing to do where a write transaction already locks the whole
        database (SQLite's `BEGIN IMMEDIATE`).
        """

    @abstractmethod
    async def put_chunks(
        self, tx: S, sha256: str, chunks: Sequence[ChunkText], *, keep_existing: bool
    ) -> int:
        """Insert `chunks`, in order; how many rows went in.

        `keep_existing`: a chunk whose key is stored (or earlier in the batch)
        is skipped; otherwise it is an error.
        """

    @abstractmethod
    async def put_vectors(
        self, tx: S, sha256: str, model: str, dimensions: int, vectors: Sequence[Vector]
    ) -> int:
        """Upsert `vectors` in order, never a mock over a real one; how many were written."""

    @abstractmethod
    async def hold_budget(self, tx: S, expiries: Mapping[str, float]) -> dict[str, Totals]:
        """The ledger keys' totals, held against every other `tx` until this one ends.

        `expiries` gives each key the latest expiry it must keep. A key that
        is not stored may be missing from the answer (it has spent nothing).
        """

    @abstractmethod
    async def charge_budget(
        self, tx: S, key: str, usd: float, requests: int, expires_at: float
    ) -> Totals:
        """Add to a held key (creating it if need be); its new totals."""


class Database(Protocol[S]):
    """An open, migrated database."""

    @property
    def dialect(self) -> Dialect[S]: ...

    def session(self) -> AbstractAsyncContextManager[S]:
        """A connection for statements that are atomic one by one."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[S]:
        """A transaction: committed if the block returns, rolled back if it raises."""
        ...

    async def close(self) -> None: ...


async def schema_version(session: Session) -> int:
    row = await session.fetch_one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(row[0]) if row is not None else 0


async def migrate(database: Database[S]) -> None:
    """Apply every migration the database lacks; `SchemaTooNew` if it is ahead of this code."""
    dialect = database.dialect
    async with database.transaction() as tx:
        await dialect.lock_schema(tx)
        await tx.execute(SCHEMA_VERSION_TABLE)
        current = await schema_version(tx)
    if current > LATEST:
        raise SchemaTooNew(f"database schema is v{current}; this code knows up to v{LATEST}")
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        async with database.transaction() as tx:
            await dialect.lock_schema(tx)
            # Another process may have applied it since we looked.
            if await schema_version(tx) >= migration.version:
                continue
            for statement in migration.render(dialect.spelling):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                (migration.version, migration.description),
            )
