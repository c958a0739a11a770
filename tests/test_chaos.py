"""The chaos simulation: Hypothesis drives faults into the whole pipeline on virtual time.

`PipelineChaos` (simulations/chaos/machine.py) holds the rules, invariants
and teardown checks. Here it runs at the size the profile asks for, in two
shards, and a last test proves a run replays byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from loguru import logger

from simulations.chaos.machine import PipelineChaos

pytestmark = pytest.mark.hypothesis

SIMULATION_EXAMPLES: Final = {"dev": 6, "chaos-ci": 80, "chaos-explore": 250}
"""Test cases per profile, split between the two shards; each simulates tens of jobs
over virtual hours."""

PACKAGES: Final = ("resilience", "providers", "state", "simulations")

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """The simulation emits thousands of events; writing them would dominate its cost."""
    for package in PACKAGES:
        logger.disable(package)
    yield
    for package in PACKAGES:
        logger.enable(package)


# `python -m simulations.mutants` only needs to know a bug is caught, so it
# turns shrinking off; everyone else gets the smallest failing program.
_SHRINK = os.environ.get("BREAKWATER_CHAOS_SHRINK", "on") != "off"

_SETTINGS = settings(
    max_examples=SIMULATION_EXAMPLES.get(_PROFILE, 6) // 2,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=list(Phase) if _SHRINK else [Phase.explicit, Phase.reuse, Phase.generate],
)


# Two shards of half the examples each, so `nox -s chaos` can run them side by side
# on a 2-core machine (pytest-xdist). Hypothesis derives a derandomized run from the
# machine class's source, so each shard draws its own test cases.
class PipelineChaosShardA(PipelineChaos):
    """The simulation's first shard."""


class PipelineChaosShardB(PipelineChaos):
    """The simulation's second shard."""


TestPipelineChaosShardA = PipelineChaosShardA.TestCase
TestPipelineChaosShardA.settings = _SETTINGS
TestPipelineChaosShardB = PipelineChaosShardB.TestCase
TestPipelineChaosShardB.settings = _SETTINGS


def test_one_seed_replays_byte_for_byte() -> None:
    """Two runs of the same derandomized test cases produce identical histories."""
    runs: list[list[bytes]] = []
    for _ in range(2):
        histories: list[bytes] = []
        PipelineChaos.histories = histories
        try:
            run_state_machine_as_test(PipelineChaos, settings=_replay_settings())
        finally:
            PipelineChaos.histories = None
        runs.append(histories)
    first, second = runs
    assert len(first) == 4
    assert sum(len(history) for history in first) > 10_000  # real histories, not empty ones
    assert first == second


def _replay_settings() -> Any:
    return settings(
        max_examples=4,
        stateful_step_count=25,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
