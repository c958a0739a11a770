"""Open the job store that `BREAKWATER_DB` names: a SQLite file or a PostgreSQL database.

`open_store` takes the variable's value (or a `--db` argument) as is:

* a path, or `sqlite:///PATH`: `SqliteJobStore` on that file;
* `postgresql://...` or `postgres://...` (libpq's URL form, which asyncpg
  reads): `PostgresJobStore` on that database.

Anything else is a `ConfigError` that names the variable, rather than a
file called "mysql:" in the working directory, and so is a PostgreSQL server
that refuses, is not there, or rejects the URL's role, password or database:
a message, not a traceback. A URL is shown without its password or query
(`shown`). asyncpg is imported only when a PostgreSQL URL asks for it, so
SQLite installs do not need the `postgres` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from resilience.errors import ConfigError
from state.store.sqlite import SqliteJobStore

if TYPE_CHECKING:
    from state.store.postgres import PostgresJobStore

_SQLITE_PREFIXES: Final = ("sqlite:///", "sqlite://")
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")


def locate(url_or_path: str | Path) -> Path | str:
    """The SQLite file (a `Path`) or PostgreSQL URL (a `str`) that `url_or_path` names."""
    if isinstance(url_or_path, Path):
        return url_or_path
    text = url_or_path.strip()
    if not text:
        raise ConfigError("BREAKWATER_DB is empty: give a SQLite path or a postgresql:// URL")
    for prefix in _SQLITE_PREFIXES:
        if text.startswith(prefix):
            return Path(text.removeprefix(prefix))
    if "://" not in text:
        return Path(text)
    scheme = text.split("://", 1)[0]
    if scheme.lower() not in _POSTGRES_SCHEMES:
        raise ConfigError(
            f"BREAKWATER_DB: {scheme}:// is not a store; give a SQLite path, sqlite:///PATH "
            "or postgresql://USER@HOST/DATABASE"
        )
    return text


def shown(where: Path | str) -> str:
    """`where` fit to print: a URL loses its password and its query (which may hold one)."""
    if isinstance(where, Path):
        return str(where)
    parts = urlsplit(where)
    userinfo, _, host = parts.netloc.rpartition("@")
    name = userinfo.split(":", 1)[0]
    user = f"{name}@" if name else ""  # redis://:password@host has no user to show
    return f"{parts.scheme}://{user}{host}{parts.path}"


async def open_store(url_or_path: str | Path) -> SqliteJobStore | PostgresJobStore:
    """The store `url_or_path` names (see `locate`), opened and migrated; close it when done."""
    where = locate(url_or_path)
    if isinstance(where, Path):
        return await SqliteJobStore.open(where)
    try:
        from state.store.postgres import UNREACHABLE, PostgresJobStore
    except ImportError as exc:
        raise ConfigError(
            "BREAKWATER_DB names PostgreSQL, but asyncpg is not installed: "
            "pip install 'breakwater[postgres]'"
        ) from exc
    try:
        return await PostgresJobStore.open(where)
    except UNREACHABLE as exc:
        raise ConfigError(
            f"BREAKWATER_DB: cannot open the PostgreSQL database {shown(where)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
