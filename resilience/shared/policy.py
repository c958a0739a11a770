"""How shared rate limits are shaped, and what a worker does when Redis is unreachable.

Kept apart from `resilience.shared.gate` so configuration can describe the
policy without importing `redis`, which is an optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

BudgetWhenDown = Literal["closed", "local"]


@dataclass(frozen=True, slots=True)
class SharedPolicy:
    """How the gate shapes its buckets and what it does when Redis is unreachable."""

    burst_fraction: float = 0.1
    """Each bucket holds this fraction of a minute's allowance."""
    fallback_fraction: float = 0.25
    """Local buckets refill at this fraction of the shared rate while Redis is down."""
    budget_when_down: BudgetWhenDown = "closed"
    """"closed": no spend without the shared ledger. "local": spend against a
    budget in this process at `fallback_fraction` of the limits."""
    recheck_s: float = 1.0
    """After Redis failed, calls use the fallback this long before trying it again."""
    flush_after_s: float = 0.5
    """Deferred ledger corrections wait at most this long for a call to carry them."""

    def __post_init__(self) -> None:
        for name in ("burst_fraction", "fallback_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"SharedPolicy.{name} must lie in (0, 1], got {value!r}")
        if self.budget_when_down not in get_args(BudgetWhenDown):
            raise ValueError(
                "SharedPolicy.budget_when_down must be closed or local, "
                f"got {self.budget_when_down!r}"
            )
        for name in ("recheck_s", "flush_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SharedPolicy.{name} must be positive")


def shaped(limit_per_minute: float, burst_fraction: float) -> tuple[float, float]:
    """(capacity, refill per second) of a bucket that admits at most the limit per minute.

    Over any window of d seconds a bucket admits at most capacity + rate * d;
    at d = 60 that is the limit, for any limit of at least 2 a minute.
    """
    capacity = max(1.0, limit_per_minute * burst_fraction)
    return capacity, max(limit_per_minute - capacity, limit_per_minute / 2) / 60.0
