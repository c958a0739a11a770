"""What the emulator has done: answers by endpoint and status, faults, 429s, webhooks.

Counts are what a simulation asserts on ("the client retried the 503s and
never saw a hang"), and what `GET /_control/stats` reports. Rates need
times as well: every OpenAI embeddings request is also kept as an arrival,
so a test can check, with `max_in_window`, that what many clients sent
together stayed within a limit over every minute.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

FAULT_KINDS: Final = ("latency", "outage", "error", "hang", "malformed", "shuffled", "lost_answer")
"""`shuffled` is OpenAI's `shuffle_rate`: 200s whose `data` came in a random order;
`lost_answer` is LlamaParse's `lost_upload_answer_rate` (jobs made whose answer never left)
and OpenAI's `lost_answer_rate` (requests billed whose answer never left)."""
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
ARRIVALS_KEPT: Final = 1_000_000
"""The newest arrivals kept: over five hours at 3,000 requests a minute, in about 130 MB."""
NEVER_ANSWERED: Final = 0
"""An arrival's status when no answer was sent: a hang, or a client that gave up."""

Arrival = tuple[float, int, int]
"""(loop time on arrival, status, tokens charged to the rate limits)."""
CORRELATION_HEADER: Final = "X-Correlation-ID"
"""The header Breakwater's clients put the job's correlation id in; requests
without one are counted under `UNCORRELATED`."""
UNCORRELATED: Final = ""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """The counts at one moment. `requests` maps endpoint label -> status -> count.

    `arrivals` holds every request that reached `POST /v1/embeddings`, faulted
    or not, in arrival order: its loop time on arrival, its status
    (`NEVER_ANSWERED` if none) and the tokens charged to the rate limits
    (0 unless it was admitted: a 200, malformed or not).
    """

    requests: dict[str, dict[int, int]]
    rate_limited: int
    faults: dict[str, dict[str, int]]
    webhooks: dict[str, int]
    jobs_created: int
    arrivals: list[Arrival]
    correlations: dict[str, dict[str, int]]
    """Correlation id (the `X-Correlation-ID` header) -> route label -> requests:
    what the provider itself saw each job's calls carry, whatever our code logged."""

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
            "arrivals": [list(arrival) for arrival in self.arrivals],
            "correlations": self.correlations,
        }


class Stats:
    """Mutable counters; `snapshot` copies them out."""

    def __init__(self) -> None:
        self._requests: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._faults: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._webhooks: Counter[str] = Counter()
        self._rate_limited = 0
        self._jobs = 0
        self._arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_KEPT)
        self._correlations: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def clear(self) -> None:
        self._requests.clear()
        self._faults.clear()
        self._webhooks.clear()
        self._rate_limited = 0
        self._jobs = 0
        self._arrivals.clear()
        self._correlations.clear()

    def routed(self, endpoint: str, correlation_id: str) -> None:
        """A request for a known route arrived carrying `correlation_id`."""
        self._correlations[correlation_id][endpoint] += 1

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

    def arrived(self, at: float, status: int, tokens: int) -> None:
        """An embeddings request that arrived at loop time `at`, noted once it is over."""
        self._arrivals.append((at, status, tokens))

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
            # Noted when over, so a slow request lands after faster later ones.
            arrivals=sorted(self._arrivals, key=lambda arrival: arrival[0]),
            correlations={cid: dict(by) for cid, by in self._correlations.items()},
        )


def max_in_window(times_and_weights: Iterable[tuple[float, float]], window_s: float) -> float:
    """The largest total weight of arrivals inside any window `window_s` long.

    A window starting at `start` holds the arrivals with
    `start <= time < start + window_s`, measured as `time - start < window_s`
    (elapsed loop time, as a limiter measures it): two arrivals exactly
    `window_s` apart never share one. The heaviest window always starts at an
    arrival, so only those starts are tried. Weights are request counts (1
    each) or tokens; they must not be negative, or a window could gain by
    leaving an arrival out. No arrivals: 0.0.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    arrivals = sorted(times_and_weights)
    if any(weight < 0 for _, weight in arrivals):
        raise ValueError("weights must not be negative")
    best: float = 0
    inside: float = 0  # from this arrival up to `end`; ints stay exact as they come and go
    end = 0
    for start, weight in arrivals:
        while end < len(arrivals) and arrivals[end][0] - start < window_s:
            inside += arrivals[end][1]
            end += 1
        best = max(best, inside)
        inside -= weight
    return float(best)
