"""Our request rate, judged by when requests reached the provider.

A process configured with a requests-per-minute limit holds a token bucket
of one minute's allowance that refills continuously, and grants only units it
holds, so over any span of `d` seconds at most `capacity + per_s * d`
requests leave it. A 429 with a Retry-After pauses the bucket: nothing more
leaves the process until the wait is over. Both are promises about arrivals
at the provider, so both are checked on the emulator's record of them, not
on the bucket's own counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

SLACK: Final = 1e-6
"""Float rounding in the loop's clock and the bucket's arithmetic."""


def over_rate(times: Sequence[float], capacity: float, per_s: float) -> str | None:
    """The first span in which more requests arrived (at `times`, sorted) than a bucket of
    `capacity` refilling at `per_s` could grant, or None.

    The most arrivals in a span ending at the j-th is `j + 1 - per_s * t_j` plus
    the best `per_s * t_i - i` over the arrivals before it: one pass.
    """
    best, best_at = -float("inf"), 0
    for j, at in enumerate(times):
        start = per_s * at - j
        if start > best:
            best, best_at = start, j
        count = j - best_at + 1
        allowed = capacity + per_s * (at - times[best_at])
        if count > allowed + SLACK:
            return (
                f"{count} requests in {at - times[best_at]:g} s "
                f"(from {times[best_at]:g} s), where the bucket grants at most {allowed:g}"
            )
    return None


@dataclass(frozen=True, slots=True)
class Answered:
    """One request of one process as the provider saw it."""

    at: float
    """When it arrived (loop time)."""
    answered_at: float | None
    """When its answer left (None: never answered)."""
    status: int | None
    retry_after_s: float | None
    """The wait a 429 asked for."""


def early_after_429(requests: Sequence[Answered]) -> str | None:
    """A request that arrived while a 429 answered earlier to the same process still asked
    it to wait, or None. `requests` are one process's, in arrival order."""
    until, told_at = -float("inf"), 0.0
    answers = sorted(
        (r for r in requests if r.status == 429 and r.retry_after_s and r.answered_at is not None),
        key=lambda r: r.answered_at or 0.0,
    )
    waits = iter(answers)
    upcoming = next(waits, None)
    for request in requests:
        while upcoming is not None and (upcoming.answered_at or 0.0) < request.at:
            end = (upcoming.answered_at or 0.0) + (upcoming.retry_after_s or 0.0)
            if end > until:
                until, told_at = end, upcoming.answered_at or 0.0
            upcoming = next(waits, None)
        if told_at < request.at < until - SLACK:
            return (
                f"a request arrived at {request.at:g} s, {until - request.at:g} s before the "
                f"wait a 429 asked for at {told_at:g} s was over"
            )
    return None


__all__ = ["Answered", "early_after_429", "over_rate"]
