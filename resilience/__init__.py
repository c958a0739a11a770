"""Breakwater's resilience core: guard provider calls against outages, limits and bills.

The public API is small: wrap each provider in a `Guard` (breaker, token
buckets, retries, budget) and route capabilities through a `Router` that can
fall back to deterministic mocks. Everything runs on the event loop's clock,
so `resilience.testing.VirtualTimeLoop` makes hours of timeouts take
microseconds in tests.
"""

from resilience.breaker import Breaker, BreakerPolicy, Transition
from resilience.bucket import TokenBucket
from resilience.budget import Budget, Reservation
from resilience.errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    ErrorClass,
    ProviderError,
    RateLimited,
    Rejected,
    classify,
)
from resilience.events import configure_logging, quiet_until_configured
from resilience.guard import Guard
from resilience.retry import RetryPolicy
from resilience.router import Routed, Router, ServiceMode

# A library writes no log line its host did not ask for: see resilience.events.
quiet_until_configured(__name__)

__all__ = [
    "Breaker",
    "BreakerPolicy",
    "Budget",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "ErrorClass",
    "Guard",
    "ProviderError",
    "RateLimited",
    "Rejected",
    "Reservation",
    "RetryPolicy",
    "Routed",
    "Router",
    "ServiceMode",
    "TokenBucket",
    "Transition",
    "classify",
    "configure_logging",
]
