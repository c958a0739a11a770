"""A throwaway PostgreSQL server for the store tests, and a fresh database per test.

`postgres_url` (session-scoped) is the admin URL of a server: the one
BREAKWATER_TEST_POSTGRES_URL names (its role needs CREATEDB), else one
started here from the installed binaries: `initdb` into a temporary
directory, then `pg_ctl start` on 127.0.0.1 at a free port, its unix socket
in the same directory, fsync off (the directory is thrown away). PostgreSQL
refuses to run as root, so as root the binaries run as `nobody` through
`runuser`, and the directory is handed to that user.

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
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

URL_VARIABLE: Final = "BREAKWATER_TEST_POSTGRES_URL"
REQUIRE_VARIABLE: Final = "BREAKWATER_REQUIRE_POSTGRES"
UNPRIVILEGED_USER: Final = "nobody"
_names = itertools.count(1)


def find_binaries() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: beside `pg_ctl` on PATH, else the
    newest /usr/lib/postgresql/N/bin (Debian keeps them off PATH)."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


class ServerFailed(RuntimeError):
    """initdb or pg_ctl failed; the message carries their output."""


class Server:
    """A PostgreSQL cluster in a temporary directory, stopped and deleted by `stop`."""

    def __init__(self, binaries: Path) -> None:
        self._binaries = binaries
        self._root = Path(tempfile.mkdtemp(prefix="breakwater-pg-"))
        self._data = self._root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise ServerFailed("running as root and runuser is missing")
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self._root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", UNPRIVILEGED_USER, "--"]

    def start(self) -> str:
        """initdb, start, and return the admin URL."""
        port = _free_port()
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(self._root))}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self._root / "server.log"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self._data),
            "-l",
            str(log),
            "-o",
            options,
        )
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        try:
            if (self._data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self._data))
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self._binaries / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerFailed(f"{tool} exited {done.returncode}: {done.stdout}{done.stderr}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1: the PostgreSQL tests did not run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test session (see the module)."""
    given = os.environ.get(URL_VARIABLE, "").strip()
    if given:
        yield given
        return
    binaries = find_binaries()
    if binaries is None:
        _unavailable("PostgreSQL not installed")
    failures = (ServerFailed, OSError, KeyError, subprocess.TimeoutExpired)
    try:
        server = Server(binaries)
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


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


if __name__ == "__main__":
    print(os.environ.get(URL_VARIABLE, "").strip() or find_binaries() or "")
