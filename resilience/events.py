"""Structured events: one JSON line each, written by loguru with orjson.

Every event Breakwater emits goes through `emit`, which binds the fields to a
loguru record. `configure_logging` installs a sink that serializes those
records with orjson, stamping them with `wall_time` (virtual in simulations).
Libraries should not install sinks on import, so nothing is written until the
application (or the `breakwater` CLI) calls `configure_logging`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from loguru import logger

from resilience.clock import iso_utc, wall_time

if TYPE_CHECKING:
    from loguru import Message

DEFAULT_LOG_PATH = "breakwater.log.jsonl"
"""Where events go when BREAKWATER_LOG is unset: a file in the working directory."""

_handler_ids: list[int] = []
_open_files: list[IO[bytes]] = []


def emit(event: str, /, *, level: str = "INFO", **fields: Any) -> None:
    """Log one event with its fields. Field values must be JSON-serializable."""
    logger.bind(event=event, **fields).log(level, event)


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

    `-` means standard error. Calling it again replaces the sink it installed
    before (and loguru's default stderr handler), so it is safe to call once
    per process start. Returns the destination used.
    """
    destination = path or os.environ.get("BREAKWATER_LOG") or DEFAULT_LOG_PATH
    close_logging()
    try:
        logger.remove(0)
    except ValueError:
        pass  # the default handler is already gone
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
    return destination


def close_logging() -> None:
    """Remove the sink `configure_logging` installed and close its file."""
    while _handler_ids:
        logger.remove(_handler_ids.pop())
    while _open_files:
        _open_files.pop().close()
