"""A throwaway PostgreSQL server for the store tests, a fresh database per test, and
`fetch` to read one back.

`postgres_url` (session-scoped) is the admin URL of a server: the one
BREAKWATER_TEST_POSTGRES_URL names (its role needs CREATEDB), else one
started here from the installed binaries (`simulations.servers.PostgresServer`).

When no server can be had, the tests that need one skip ("PostgreSQL not
installed"), or fail with BREAKWATER_REQUIRE_POSTGRES=1 (what
`nox -s integration` sets): a run meant to cover PostgreSQL must never pass
without it. `python -m tests.postgres` prints the binaries' directory, or
nothing, for the nox session to check before it starts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

from simulations.servers import PostgresServer, ServerFailed, find_postgres_binaries
from tests.servers import unavailable

URL_VARIABLE: Final = "BREAKWATER_TEST_POSTGRES_URL"
REQUIRE_VARIABLE: Final = "BREAKWATER_REQUIRE_POSTGRES"
_names = itertools.count(1)


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason, require_variable=REQUIRE_VARIABLE, server="PostgreSQL")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test session (see the module)."""
    given = os.environ.get(URL_VARIABLE, "").strip()
    if given:
        yield given
        return
    binaries = find_postgres_binaries()
    if binaries is None:
        _unavailable("PostgreSQL not installed")
    failures = (ServerFailed, OSError, KeyError, subprocess.TimeoutExpired)
    try:
        server = PostgresServer(binaries)
    except failures as exc:
        _unavailable(f"PostgreSQL could not start: {exc}")
    try:
        try:
            url = server.start()
        except failures as exc:
            _unavailable(f"PostgreSQL could not start: {exc}")
        yield url
    finally:
        server.stop()


def with_database(url: str, database: str) -> str:
    """`url` pointing at `database` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"breakwater_test_{os.getpid()}_{next(_names)}"
    asyncio.run(_admin(postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(postgres_url, name)
    finally:
        asyncio.run(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def fetch(url: str, sql: str) -> list[Any]:
    """The rows `sql` returns on the database at `url`."""
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


if __name__ == "__main__":
    print(os.environ.get(URL_VARIABLE, "").strip() or find_postgres_binaries() or "")
