"""Shared test helpers: an event recorder and Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from loguru import logger

# `tests` runs each property 60 times; `chaos` (nox -s chaos) runs it 1,000 times.
# In CI every run is derandomized and keeps no example database, so a failure
# there replays exactly on the next run.
_IN_CI = bool(os.environ.get("CI"))
_CI: dict[str, Any] = {"derandomize": True, "database": None} if _IN_CI else {}
for _name, _examples in (("dev", 60), ("chaos", 1000)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        **_CI,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


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
