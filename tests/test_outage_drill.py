"""The outage drill on a short scenario: our guard's targets, and what the other ways do."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from resilience import BreakerPolicy
from simulations.bench.outage_drill import (
    AIOBREAKER,
    BACKOFF,
    LABELS,
    OURS,
    OURS_DEFAULTS,
    SDK_MAX_RETRIES,
    SDK_TIMEOUT_S,
    Scenario,
    WayResult,
    main,
    measure,
    probe_allowance,
    render,
    run_aiobreaker,
    run_breakwater,
)

SHORT = Scenario(rps=10, duration_s=300, outage_start_s=60, hang_start_s=90, heal_s=120)
"""10 calls/s for 5 minutes; 503s from 60 s, hangs from 90 s, healthy from 120 s."""


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return measure(SHORT)


def test_the_allowance_counts_the_half_open_windows_inside_the_outage() -> None:
    policy = BreakerPolicy()  # 5 failures, 30 s doubling per failed probe, 1 probe a window
    assert probe_allowance(policy, 30.0) == (5, [])
    assert probe_allowance(policy, 60.0) == (6, [30.0])
    assert probe_allowance(policy, 120.0) == (7, [30.0, 90.0])
    flat = BreakerPolicy(cooldown_s=10, cooldown_multiplier=1, half_open_max_calls=3)
    assert probe_allowance(flat, 35.0) == (5 + 3 * 3, [10.0, 20.0, 30.0])
    capped = BreakerPolicy(cooldown_s=10, cooldown_max_s=15)
    assert probe_allowance(capped, 50.0) == (5 + 3, [10.0, 25.0, 40.0])


def test_the_plain_ways_use_openai_pythons_defaults() -> None:
    assert openai.DEFAULT_MAX_RETRIES == SDK_MAX_RETRIES
    assert openai.DEFAULT_TIMEOUT.read == SDK_TIMEOUT_S


def test_every_call_is_accounted_for_and_rate_limits_never_bind(
    results: dict[str, Any],
) -> None:
    assert set(results["results"]) == set(LABELS)
    for name, run in results["results"].items():
        assert run["calls"] == SHORT.calls, name
        assert run["real"] + run["mock"] + run["failed"] == SHORT.calls, name
        assert run["rate_limited"] == 0, name
        assert 0 < run["into_outage"] < run["requests"], name
        assert run["last_call_end_s"] >= SHORT.duration_s - 1.0 / SHORT.rps, name
    for name in (BACKOFF, AIOBREAKER):
        assert results["results"][name]["mock"] == 0, name  # no fallback
        assert results["results"][name]["failed"] > 0, name


def test_breakwater_meets_the_call_count_and_recovery_targets(results: dict[str, Any]) -> None:
    ours, verdicts = results["results"][OURS], results["targets"][OURS]
    assert results["allowance"]["calls"] == 6  # 5 to trip, one probe at +30 s
    # It must trip (5 calls), and may probe once: a probe at +30 s into the hang.
    assert 5 <= ours["into_outage"] <= 6
    assert verdicts["calls_into_outage"]["met"]
    assert verdicts["recovery_s"]["met"]
    assert ours["recovery_s"] is not None
    assert 0 < ours["recovery_s"] <= verdicts["recovery_s"]["limit"]
    assert verdicts["outage_p99_ms"]["met"]
    assert ours["outage_p99_ms"] <= 10.0
    # HYBRID: no caller failed; the mock served what the provider could not.
    assert ours["failed"] == 0
    assert ours["mock"] >= SHORT.rps * (SHORT.heal_s - SHORT.outage_start_s) - 6
    assert ours["timeline"][0][1] == "closed->open"
    assert ours["timeline"][-1][1] == "half_open->closed"


def test_backoff_alone_sends_strictly_more_calls_into_the_outage(
    results: dict[str, Any],
) -> None:
    ours, plain = results["results"][OURS], results["results"][BACKOFF]
    assert plain["into_outage"] > ours["into_outage"]
    # Every call started in the outage reached the dead provider at least once.
    assert plain["into_outage"] >= SHORT.rps * (SHORT.heal_s - SHORT.outage_start_s)
    # A call sent into the hang holds its caller for the whole 600 s deadline.
    assert plain["outage_max_ms"] >= SDK_TIMEOUT_S * 1000.0
    assert plain["errors"] == {"ProviderError": plain["failed"]}


def test_aiobreaker_half_opens_on_virtual_time(results: dict[str, Any]) -> None:
    timeline = results["results"][AIOBREAKER]["timeline"]
    assert timeline[0][1] == "closed->open"
    # Its 30 s cooldown elapsed in the drill's few wall-clock seconds: it reads loop time.
    half_opened = [at for at, change in timeline if change == "open->half_open"]
    assert half_opened
    last_opened = max(
        at for at, change in timeline if change.endswith("->open") and at < half_opened[0]
    )
    assert half_opened[0] - last_opened >= 30.0
    assert set(results["results"][AIOBREAKER]["errors"]) <= {"CircuitBreakerError", "ProviderError"}


def test_with_the_defaults_a_hung_probe_outliving_the_heal_misses_recovery(
    results: dict[str, Any],
) -> None:
    defaults, verdicts = results["results"][OURS_DEFAULTS], results["targets"][OURS_DEFAULTS]
    assert defaults["at_heal"] == {"state": "half_open", "cooldown_s": 30.0, "probes_in_flight": 1}
    assert verdicts["calls_into_outage"]["met"]
    assert not verdicts["recovery_s"]["met"]
    assert defaults["recovery_s"] > results["results"][OURS]["recovery_s"]


def test_the_drill_is_deterministic() -> None:
    tiny = Scenario(rps=5, duration_s=150, outage_start_s=30, hang_start_s=60, heal_s=90, seed=3)
    runs: list[Callable[[], WayResult]] = [
        functools.partial(run_breakwater, tiny, read_timeout_s=10.0),
        functools.partial(run_aiobreaker, tiny),
    ]
    for run in runs:
        first, again = asdict(run()), asdict(run())
        first.pop("wall_s")
        again.pop("wall_s")
        assert first == again


def test_render_shows_every_way_and_verdict(results: dict[str, Any]) -> None:
    table = render(results)
    assert all(label in table for label in LABELS.values())
    assert table.count("  met") + table.count("  MISSED") == 6


def test_main_exits_nonzero_when_a_probe_hangs_past_the_heal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first probe (at about 90 s) hangs for the 10 s call timeout; the heal at 95 s
    # comes while it hangs, and its failure then doubles the cooldown.
    path = tmp_path / "drill.json"
    argv = ["--rps", "10", "--duration-s", "200", "--outage-start-s", "60"]
    argv += ["--hang-start-s", "90", "--heal-s", "95", "--json", str(path)]
    assert main(argv) == 1
    assert "MISSED" in capsys.readouterr().out
    document = orjson.loads(path.read_bytes())
    verdicts = document["targets"][OURS]
    assert verdicts["calls_into_outage"]["met"]
    assert not verdicts["recovery_s"]["met"]
    assert document["scenario"]["heal_s"] == 95.0
