"""A migration that has shipped never changes, and every migration applies on both databases.

`tests/migrations/<dialect>/NNNN.sql` holds each released migration as its
dialect ran it when it shipped (`schema_version.sql`, the table that records
them, is the same in both): each statement, then `;` and a newline. The
rendering of `state.store.schema` must give those bytes exactly. A new
migration needs its two snapshots too: write them from the new code once,
when it is released, and never again.

Applying is tested on a real SQLite file and a real PostgreSQL server:
the snapshots run as plain SQL on one database, the store migrates another
(or the same, emptied), and the two catalogs (tables, columns, types,
keys, indexes) must agree, and the store must record every version.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import pytest

from resilience.testing import run_virtual
from state.store.open import open_store
from state.store.schema import LATEST, MIGRATIONS, POSTGRES, SCHEMA_VERSION_TABLE, SQLITE

SNAPSHOTS: Final = Path(__file__).resolve().parent / "migrations"
DIALECTS: Final = {"sqlite": SQLITE, "postgres": POSTGRES}


def as_file(statements: tuple[str, ...]) -> str:
    return "".join(f"{statement};\n" for statement in statements)


def snapshot(dialect: str, version: int) -> Path:
    return SNAPSHOTS / dialect / f"{version:04d}.sql"


def statements(path: Path) -> list[str]:
    """The statements of a snapshot file, in order."""
    return [part for part in path.read_text().split(";\n") if part]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("version", [migration.version for migration in MIGRATIONS])
def test_a_released_migration_renders_as_it_shipped(dialect: str, version: int) -> None:
    migration = MIGRATIONS[version - 1]
    assert migration.version == version
    assert as_file(migration.render(DIALECTS[dialect])) == snapshot(dialect, version).read_text()


def test_the_version_table_is_as_it_shipped() -> None:
    assert as_file((SCHEMA_VERSION_TABLE,)) == (SNAPSHOTS / "schema_version.sql").read_text()


def test_every_migration_has_a_snapshot_and_every_snapshot_a_migration() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    assert versions == list(range(1, LATEST + 1))
    for dialect in DIALECTS:
        on_disk = sorted(int(path.stem) for path in (SNAPSHOTS / dialect).glob("*.sql"))
        assert on_disk == versions, f"tests/migrations/{dialect} and MIGRATIONS disagree"


def test_rendering_leaves_no_word_unspelled() -> None:
    for spelling in DIALECTS.values():
        for migration in MIGRATIONS:
            for statement in migration.render(spelling):
                assert "{" not in statement
                assert "}" not in statement


# -- applying them ----------------------------------------------------------------


def sqlite_catalog(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    raw.close()
    return rows


def test_the_migrations_apply_on_a_sqlite_file(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.sqlite3"
    with sqlite3.connect(shipped) as raw:
        for statement in statements(SNAPSHOTS / "schema_version.sql"):
            raw.execute(statement)
        for migration in MIGRATIONS:
            for statement in statements(snapshot("sqlite", migration.version)):
                raw.execute(statement)
    raw.close()

    migrated = tmp_path / "migrated.sqlite3"
    assert run_virtual(schema_version_after_open(str(migrated))) == LATEST
    assert sqlite_catalog(migrated) == sqlite_catalog(shipped)
    with sqlite3.connect(migrated) as raw:
        recorded = raw.execute("SELECT version, description FROM schema_version").fetchall()
    raw.close()
    assert recorded == [(m.version, m.description) for m in MIGRATIONS]


_POSTGRES_CATALOG: Final = (
    """SELECT table_name, column_name, data_type, collation_name, is_nullable,
        is_identity, identity_generation, column_default
    FROM information_schema.columns WHERE table_schema = 'public'
    ORDER BY table_name, ordinal_position""",
    """SELECT rel.relname, con.conname, pg_get_constraintdef(con.oid)
    FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid
    JOIN pg_namespace ns ON ns.oid = rel.relnamespace WHERE ns.nspname = 'public'
    ORDER BY rel.relname, con.conname""",
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
)


Catalog = list[list[tuple[object, ...]]]


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def postgres_catalog(connection: asyncpg.Connection) -> Catalog:
    return [[tuple(row) for row in await connection.fetch(query)] for query in _POSTGRES_CATALOG]


async def apply_shipped_then_empty(url: str) -> Catalog:
    """Run the snapshots on the database at `url`; its catalog; then drop it all again."""
    async with connected(url) as connection:
        async with connection.transaction():
            for statement in statements(SNAPSHOTS / "schema_version.sql"):
                await connection.execute(statement)
            for migration in MIGRATIONS:
                for statement in statements(snapshot("postgres", migration.version)):
                    await connection.execute(statement)
        shipped = await postgres_catalog(connection)
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return shipped


async def catalog_and_versions(url: str) -> tuple[Catalog, list[tuple[object, ...]]]:
    async with connected(url) as connection:
        rows = await connection.fetch(
            "SELECT version, description FROM schema_version ORDER BY version"
        )
        return await postgres_catalog(connection), [tuple(row) for row in rows]


@pytest.mark.postgres
def test_the_migrations_apply_on_a_postgres_server(postgres_database: str) -> None:
    shipped = asyncio.run(apply_shipped_then_empty(postgres_database))
    assert run_virtual(schema_version_after_open(postgres_database)) == LATEST
    migrated, recorded = asyncio.run(catalog_and_versions(postgres_database))
    assert migrated == shipped
    assert recorded == [(m.version, m.description) for m in MIGRATIONS]


async def schema_version_after_open(target: str) -> int:
    async with await open_store(target) as store:
        return await store.schema_version()
