"""What a test reads Breakwater's log events from: the `events` fixture's recorder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger


class Events:
    """Records the `extra` fields of every loguru record while a test runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]


@contextmanager
def logged_levels() -> Iterator[dict[str, str]]:
    """{event: the level it was logged at} while the block runs (with `events` enabling them).

    The `events` recorder keeps fields only; an error line logged as INFO would
    pass it, and alerting reads the level.
    """
    levels: dict[str, str] = {}

    def sink(message: Any) -> None:
        record = message.record
        levels[record["extra"].get("event", "log")] = record["level"].name

    handler = logger.add(sink, level="DEBUG")
    try:
        yield levels
    finally:
        logger.remove(handler)
