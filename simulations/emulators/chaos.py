"""Turning a provider's fault plan into per-request decisions.

Every request draws the same five numbers in the same order, whatever the
plan says and whichever fault wins, so the decisions for request n depend
only on the seed and n: changing one rate does not reshuffle every other
fault in the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from simulations.emulators.faults import ProviderFaults, Range


def draw_range(rng: random.Random, bounds: Range) -> float:
    """A value in [min, max]; always consumes one draw, even for a fixed value."""
    low, high = bounds
    return low + (high - low) * rng.random()


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request, before outage windows (which depend on time) apply."""

    latency_s: float
    hang: bool
    error: bool
    malformed: str | None


class FaultInjector:
    """One provider's plan, its generator, and the loop time the plan took effect."""

    def __init__(self, plan: ProviderFaults, rng: random.Random) -> None:
        self.plan = plan
        self._rng = rng
        self._started_at = 0.0

    def start(self, now: float) -> None:
        """Outage windows count from `now` (loop time); until called, from loop time 0."""
        self._started_at = now

    def decide(self) -> Decision:
        plan, rng = self.plan, self._rng
        latency_s = draw_range(rng, plan.latency_s)
        hang = rng.random() < plan.hang_rate
        error = rng.random() < plan.error_rate
        malformed = rng.random() < plan.malformed_rate
        kind = plan.malformed_kinds[int(rng.random() * len(plan.malformed_kinds))]
        return Decision(latency_s, hang, error, kind if malformed else None)

    def in_outage(self, now: float) -> bool:
        elapsed = now - self._started_at
        return any(start <= elapsed < end for start, end in self.plan.outages)
