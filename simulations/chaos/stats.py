"""Run-wide statistics and coverage for the chaos simulations.

Hypothesis's `event()` shows what share of test cases reached a path; these
counters add what the run as a whole did, so `nox -s chaos` can print it and
fail when a coverage event never happened: a simulation that never reaches a
path proves nothing about it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

COVERAGE: Final = (
    "breaker opened",
    "probe succeeded",
    "probe failed",
    "job dead-lettered",
    "duplicate webhook dropped",
    "budget exhausted",
    "worker crash recovered",
    "fallback served",
)

JOBS_PER_S_TARGET: Final = 1000.0
SIM_HOURS_PER_S_TARGET: Final = 1.0


@dataclass(slots=True)
class RunStats:
    """What every simulation in this process did, summed."""

    examples: int = 0
    jobs: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    invariant_checks: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    coverage: Counter[str] = field(default_factory=Counter)

    def missing(self) -> list[str]:
        """Coverage events that never happened, in `COVERAGE` order."""
        return [name for name in COVERAGE if not self.coverage[name]]

    def report(self) -> str:
        wall = self.wall_s or 1e-9
        jobs_per_s = self.jobs / wall
        hours_per_s = self.simulated_s / 3600 / wall

        def verdict(value: float, target: float) -> str:
            return "met" if value >= target else "NOT met"

        lines = [
            "chaos simulation statistics",
            f"  examples run        {self.examples}",
            f"  simulated jobs      {self.jobs}",
            f"  simulated hours     {self.simulated_s / 3600:.1f}",
            f"  invariant checks    {self.invariant_checks}",
            f"  wall time           {self.wall_s:.1f} s",
            f"  simulated/wall time {self.simulated_s / wall:,.0f}x",
            f"  jobs per wall s     {jobs_per_s:,.0f} "
            f"(target >= {JOBS_PER_S_TARGET:,.0f}: {verdict(jobs_per_s, JOBS_PER_S_TARGET)})",
            f"  sim hours per wall s {hours_per_s:,.2f} "
            f"(target >= {SIM_HOURS_PER_S_TARGET:g}: "
            f"{verdict(hours_per_s, SIM_HOURS_PER_S_TARGET)})",
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

__all__ = ["COVERAGE", "RUN", "RunStats"]
