"""What a test reads Breakwater's log events from: the `events` fixture's recorder."""

from __future__ import annotations

from typing import Any


class Events:
    """Records the `extra` fields of every loguru record while a test runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]
