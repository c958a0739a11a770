"""Run-wide statistics and coverage for the chaos simulations.

Hypothesis's `event()` shows what share of test cases reached a path; these
counters add what the run as a whole did, so `nox -s chaos` can print it and
fail when a coverage event never happened: a simulation that never reaches a
path proves nothing about it.

`nox -s chaos` runs the simulation in shards, one per core (pytest-xdist).
Each shard process counts its own examples; the shards hand their counts to
the controlling process (`to_json`, `merge`), which reports the run as a
whole. Its wall time is the span from the first example's start to the last
one's end across all shards, so running shards side by side shows as the
speed it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

FEATURE_COVERAGE: Final = (
    "rpm bucket waited",
    "tpm bucket waited",
    "bucket paused by a 429 and refilled",
    "breaker tripped by slow calls",
    "standard webhook accepted",
)
"""The production features a world may switch on, each proven used (`features`)."""

COVERAGE: Final = (
    "breaker opened",
    "probe succeeded",
    "probe failed",
    "job dead-lettered",
    "duplicate webhook dropped",
    "budget exhausted",
    "worker crash recovered",
    "fallback served",
    "crash between submit and record",
    "crash between completion and fetch",
    "remote parse resumed after a crash",
    "remote job failed",
    "remote job expired",
    "webhook duplicated for a recorded job",
    *FEATURE_COVERAGE,
)


@dataclass(slots=True)
class RunStats:
    """What every simulation in this process did, summed."""

    examples: int = 0
    jobs: int = 0
    simulated_s: float = 0.0
    began: float = float("inf")
    """`time.perf_counter()` when the first example started; the system-wide monotonic
    clock on Linux, so shards in other processes compare with it."""
    ended: float = float("-inf")
    shards: int = 0
    """Processes whose counts were merged in; 0 when this process ran them itself."""
    invariant_checks: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    coverage: Counter[str] = field(default_factory=Counter)

    @property
    def wall_s(self) -> float:
        return max(self.ended - self.began, 0.0)

    def count_example(self, *, jobs: int, simulated_s: float, began: float, ended: float) -> None:
        self.examples += 1
        self.jobs += jobs
        self.simulated_s += simulated_s
        self.began = min(self.began, began)
        self.ended = max(self.ended, ended)

    def to_json(self) -> dict[str, Any]:
        """What a shard hands to the controlling process (plain types only)."""
        return {
            "shards": max(self.shards, 1),
            "examples": self.examples,
            "jobs": self.jobs,
            "simulated_s": self.simulated_s,
            "began": self.began,
            "ended": self.ended,
            "invariant_checks": self.invariant_checks,
            "faults": dict(self.faults),
            "transitions": dict(self.transitions),
            "coverage": dict(self.coverage),
        }

    def merge(self, shard: dict[str, Any]) -> None:
        """Add a shard's `to_json` to these statistics."""
        self.shards += shard["shards"]
        self.examples += shard["examples"]
        self.jobs += shard["jobs"]
        self.simulated_s += shard["simulated_s"]
        self.began = min(self.began, shard["began"])
        self.ended = max(self.ended, shard["ended"])
        self.invariant_checks += shard["invariant_checks"]
        self.faults.update(shard["faults"])
        self.transitions.update(shard["transitions"])
        self.coverage.update(shard["coverage"])

    def missing(self) -> list[str]:
        """Coverage events that never happened, in `COVERAGE` order."""
        return [name for name in COVERAGE if not self.coverage[name]]

    def report(self) -> str:
        wall = self.wall_s or 1e-9
        jobs_per_s = self.jobs / wall
        hours_per_s = self.simulated_s / 3600 / wall

        lines = [
            "chaos simulation statistics",
            f"  examples run        {self.examples}, in {max(self.shards, 1)} process(es)",
            f"  simulated jobs      {self.jobs}",
            f"  simulated hours     {self.simulated_s / 3600:.1f}",
            f"  invariant checks    {self.invariant_checks}",
            f"  wall time           {self.wall_s:.1f} s, first example start to last end",
            f"  simulated/wall time {self.simulated_s / wall:,.0f}x",
            # Printed, not judged: the simulation is judged by what it catches (mutants).
            f"  jobs per wall s     {jobs_per_s:,.0f}",
            f"  sim hours per wall s {hours_per_s:,.2f}",
            "  faults injected     "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            "  breaker transitions "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.transitions.items())) or "none"),
            "  coverage            "
            + ", ".join(f"{name} {self.coverage[name]}" for name in COVERAGE),
        ]
        missing = self.missing()
        if missing:
            lines.append(f"  NEVER REACHED: {', '.join(missing)}")
        return "\n".join(lines)


RUN: Final = RunStats()
"""The statistics of this process's simulations (a pytest run)."""

__all__ = ["COVERAGE", "FEATURE_COVERAGE", "RUN", "RunStats"]
