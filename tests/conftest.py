"""Fixtures and pytest hooks only: Hypothesis profiles, the event recorder, a keyless
environment, the user's own files, child processes, and the chaos report.

What tests import lives in the helper modules beside this one, each named for
what it holds; the bundled samples are listed once, in `simulations.samples`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from loguru import logger

from resilience.events import library_packages
from simulations.samples import TEXT_SAMPLES
from tests.commands import KEYS
from tests.events import Events

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


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider key and no Breakwater store or log from the caller's environment."""
    for name in (*KEYS, "SERVICE_MODE", "BREAKWATER_DB", "BREAKWATER_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def own_files(tmp_path: Path) -> list[str]:
    """The bundled text samples, copied as if they were the user's own files."""
    paths = []
    for sample in TEXT_SAMPLES:
        target = tmp_path / f"mine-{sample.name}"
        target.write_bytes(sample.path.read_bytes())
        paths.append(str(target))
    return paths


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


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Every process a test starts; killed (by its own pid) and reaped when the test ends."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


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
