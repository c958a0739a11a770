"""Shared test helpers: an event recorder and Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from loguru import logger

settings.register_profile("dev", deadline=None, max_examples=60)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


class Events:
    """Records the `extra` fields of every loguru record while a test runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]


@pytest.fixture
def events() -> Iterator[Events]:
    recorder = Events()
    handler = logger.add(lambda m: recorder.records.append(dict(m.record["extra"])), level="DEBUG")
    yield recorder
    logger.remove(handler)
