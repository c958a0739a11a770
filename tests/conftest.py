"""Shared test helpers: an event recorder, an awaited ledger, Hypothesis profiles,
and the CLI tests' samples and keyless environment."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from loguru import logger

from resilience.clock import Clock, wall_time
from resilience.events import library_packages
from resilience.ledger import InMemoryLedger, PeriodLimit, Totals

# The PostgreSQL fixtures (`postgres_url`, `postgres_database`) for tests/test_store.py,
# and the Redis ones (`redis_server`, `redis_url`).
pytest_plugins = ["tests.postgres", "tests.redis_server"]

# `tests` runs each property 60 times. `nox -s chaos` picks one of two explicit
# profiles, so Hypothesis's own `ci` profile (loaded whenever CI is set) never
# decides: `chaos-ci` (derandomized, no example database: a failure replays
# exactly on the next run) under CI, `chaos-explore` (random, remembering
# failures in .hypothesis/) on a developer's machine. The simulation's own
# example counts per profile are in tests/test_chaos.py.
_IN_CI = bool(os.environ.get("CI"))
_CI: dict[str, Any] = {"derandomize": True, "database": None} if _IN_CI else {}
_COMMON: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=60, **_COMMON, **_CI)
settings.register_profile(
    "chaos-ci", max_examples=300, derandomize=True, database=None, print_blob=True, **_COMMON
)
settings.register_profile(
    "chaos-explore",
    max_examples=1000,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    print_blob=True,
    **_COMMON,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


SAMPLES = Path(__file__).resolve().parent.parent / "simulations" / "samples"
KEYS = ("OPENAI_API_KEY", "LLAMA_CLOUD_API_KEY", "LLAMA_CLOUD_WEBHOOK_SECRET")
"""The provider secrets a test that must spend nothing removes from its environment."""


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider key and no Breakwater store or log from the caller's environment."""
    for name in (*KEYS, "SERVICE_MODE", "BREAKWATER_DB", "BREAKWATER_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def own_files(tmp_path: Path) -> list[str]:
    """Two of the bundled samples, copied as if they were the user's own files."""
    paths = []
    for name in ("circuit-breakers.md", "rate-limits.txt"):
        target = tmp_path / f"mine-{name}"
        target.write_bytes((SAMPLES / name).read_bytes())
        paths.append(str(target))
    return paths


class Events:
    """Records the `extra` fields of every loguru record while a test runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]


@pytest.fixture
def events() -> Iterator[Events]:
    """Breakwater's records, enabled as a host would (they are off until configure_logging)."""
    recorder = Events()
    handler = logger.add(lambda m: recorder.records.append(dict(m.record["extra"])), level="DEBUG")
    for package in library_packages():
        logger.enable(package)
    yield recorder
    for package in library_packages():
        logger.disable(package)
    logger.remove(handler)


class AwaitedLedger:
    """A `LedgerStore` that must be awaited, as a SQL or Redis one would be.

    It has no `SyncLedger` methods, so a `Budget` over it takes the awaited
    path; each operation yields to the loop once, like a round trip.
    """

    def __init__(self, *, clock: Clock = wall_time) -> None:
        self._store = InMemoryLedger(clock=clock)

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        await asyncio.sleep(0)
        return self._store.try_add_now(limits, usd, requests)

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        await asyncio.sleep(0)
        return self._store.add_now(keys, usd, requests)

    async def totals(self, key: str) -> Totals:
        await asyncio.sleep(0)
        return self._store.totals_now(key)


# -- the chaos simulation's run-wide report ------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from simulations.chaos.stats import RUN

    if RUN.examples and not _is_shard(terminalreporter.config):
        terminalreporter.write_line(RUN.report())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hand a shard's counts to the controller; under `nox -s chaos`, fail the run if a
    coverage event never happened in any shard."""
    from simulations.chaos.stats import RUN

    if _is_shard(session.config):
        session.config.workeroutput["chaos"] = RUN.to_json()  # type: ignore[attr-defined]
        return
    required = os.environ.get("BREAKWATER_CHAOS_COVERAGE") == "required"
    if required and RUN.examples and RUN.missing() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: a shard finished; add its chaos counts to the run's."""
    from simulations.chaos.stats import RUN

    shard = getattr(node, "workeroutput", {}).get("chaos")
    if shard and shard["examples"]:
        RUN.merge(shard)


def _is_shard(config: pytest.Config) -> bool:
    """Is this a pytest-xdist worker process (its controller reports)?"""
    return hasattr(config, "workeroutput")
