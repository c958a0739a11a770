"""What the emulator has done: answers by endpoint and status, faults, 429s, webhooks.

Counts are what a simulation asserts on ("the client retried the 503s and
never saw a hang"), and what `GET /_control/stats` reports.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Final

FAULT_KINDS: Final = ("latency", "outage", "error", "hang", "malformed", "shuffled")
"""`shuffled` is OpenAI's `shuffle_rate`: 200s whose `data` came in a random order."""
WEBHOOK_EVENTS: Final = (
    "scheduled",
    "attempts",
    "delivered",
    "failed",
    "dropped",
    "duplicated",
    "bad_signature",
)
"""`delivered`: a 2xx on some attempt; `failed`: every retry used without one;
`bad_signature`: deliveries signed with the wrong secret, counted when scheduled."""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """The counts at one moment. `requests` maps endpoint label -> status -> count."""

    requests: dict[str, dict[int, int]]
    rate_limited: int
    faults: dict[str, dict[str, int]]
    webhooks: dict[str, int]
    jobs_created: int

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Answers sent for `endpoint` (a route label), optionally only with `status`."""
        by_status = self.requests.get(endpoint, {})
        return sum(by_status.values()) if status is None else by_status.get(status, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": {
                endpoint: {str(status): n for status, n in sorted(by_status.items())}
                for endpoint, by_status in sorted(self.requests.items())
            },
            "rate_limited": self.rate_limited,
            "faults": self.faults,
            "webhooks": self.webhooks,
            "jobs_created": self.jobs_created,
        }


class Stats:
    """Mutable counters; `snapshot` copies them out."""

    def __init__(self) -> None:
        self._requests: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._faults: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._webhooks: Counter[str] = Counter()
        self._rate_limited = 0
        self._jobs = 0

    def clear(self) -> None:
        self._requests.clear()
        self._faults.clear()
        self._webhooks.clear()
        self._rate_limited = 0
        self._jobs = 0

    def answered(self, endpoint: str, status: int) -> None:
        self._requests[endpoint][status] += 1
        if status == 429:
            self._rate_limited += 1

    def fault(self, provider: str, kind: str) -> None:
        self._faults[provider][kind] += 1

    def webhook(self, event: str) -> None:
        self._webhooks[event] += 1

    def job_created(self) -> None:
        self._jobs += 1

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            requests={endpoint: dict(counts) for endpoint, counts in self._requests.items()},
            rate_limited=self._rate_limited,
            faults={
                provider: {kind: self._faults[provider][kind] for kind in FAULT_KINDS}
                for provider in ("openai", "llamaparse")
            },
            webhooks={event: self._webhooks[event] for event in WEBHOOK_EVENTS},
            jobs_created=self._jobs,
        )
