"""Structured events: one JSON line each, written by loguru with orjson.

Every event Breakwater emits goes through `emit`, which binds the fields to a
loguru record attributed to the module that emitted it. `configure_logging`
installs a sink that serializes those records with orjson, stamping them
with `wall_time` (virtual in simulations).

Breakwater is a library first, so it follows loguru's advice for libraries:
each of its packages (`resilience`, `providers`, `state`, `simulations`)
disables its records at import (`quiet_until_configured`), and nothing
reaches any handler, the host application's included, until the application
calls `configure_logging`. A host that wants the records in its own handlers
instead enables the packages itself: `logger.enable("resilience")`, and
likewise for each name in `library_packages()`. `configure_logging` only
adds; `close_logging` removes only what it added, so the host's handlers
(loguru's default stderr one among them) are never touched. An application
that owns its process and wants nothing but the JSON lines on standard error,
as the `breakwater` command does, calls `remove_default_handler` itself.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from loguru import logger

from resilience import correlation
from resilience.clock import iso_utc, wall_time

if TYPE_CHECKING:
    from loguru import Message

DEFAULT_LOG_PATH = "breakwater.log.jsonl"
"""Where events go when BREAKWATER_LOG is unset: a file in the working directory."""

_handler_ids: list[int] = []
_open_files: list[IO[bytes]] = []
_packages: list[str] = []


def quiet_until_configured(package: str) -> None:
    """Called by each Breakwater package's `__init__` with its own name.

    Disables the package's records unless `configure_logging` has already
    run (a package imported after it stays enabled, so a lazily imported
    one is not silenced by arriving late).
    """
    _packages.append(package)
    if not _handler_ids:
        logger.disable(package)


def library_packages() -> tuple[str, ...]:
    """The packages `configure_logging` enables, in the order they were imported."""
    return tuple(_packages)


def emit(event: str, /, *, level: str = "INFO", **fields: Any) -> None:
    """Log one event with its fields. Field values must be JSON-serializable.

    The record is attributed to the caller (depth 1), so enabling or
    disabling a package in loguru governs the events that package emits.
    An event emitted while a correlation id is bound (`resilience.correlation`)
    carries it, unless the caller names one itself.
    """
    if "correlation_id" not in fields:
        cid = correlation.current()
        if cid is not None:
            fields["correlation_id"] = cid
    logger.opt(depth=1).bind(event=event, **fields).log(level, event)


def _serialize(message: Message) -> bytes:
    record = message.record
    extra = record["extra"]
    line: dict[str, Any] = {"ts": iso_utc(wall_time()), "level": record["level"].name}
    if "event" not in extra:
        line["event"] = "log"
        line["message"] = record["message"]
    line.update(extra)
    return orjson.dumps(line, default=str) + b"\n"


def configure_logging(path: str | None = None, *, level: str = "INFO") -> str:
    """Send events as JSON lines to `path`, BREAKWATER_LOG, or the default file.

    `-` means standard error. Enables Breakwater's packages and adds one
    sink; handlers it did not add stay. Calling it again replaces the sink it
    installed before, so it is safe to call once per process start. Returns
    the destination used.
    """
    destination = path or os.environ.get("BREAKWATER_LOG") or DEFAULT_LOG_PATH
    close_logging()
    stream: IO[bytes]
    if destination == "-":
        stream = sys.stderr.buffer
    else:
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        stream = target.open("ab")
        _open_files.append(stream)

    def sink(message: Message) -> None:
        stream.write(_serialize(message))
        stream.flush()

    _handler_ids.append(logger.add(sink, level=level, format="{message}"))
    for package in _packages:
        logger.enable(package)
    return destination


def close_logging() -> None:
    """Undo `configure_logging`: remove its sink, close its file, quiet the packages again."""
    while _handler_ids:
        logger.remove(_handler_ids.pop())
    while _open_files:
        _open_files.pop().close()
    for package in _packages:
        logger.disable(package)


def remove_default_handler() -> None:
    """Remove loguru's own stderr handler, for an application that owns its process.

    A library must leave it alone: it belongs to whoever runs the process.
    The `breakwater` command and the benchmarks do own theirs, and want each
    event once, as a JSON line, not again in loguru's text format.
    """
    with suppress(ValueError):  # already removed
        logger.remove(0)
