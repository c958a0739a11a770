"""The arrival journal: every routed request either provider received, and how it ended.

An oracle that must not trust the code under test needs to know, from the
providers' side, who called when: a breaker's logs say it was open, the
journal says whether a call arrived all the same. So each routed request is
written down as it arrives (loop time, provider, route, correlation id, and
the caller's own tag from `CLIENT_HEADER`, which the emulator does not
interpret) and completed when it leaves: with its status and answer time,
or with no answer at all when it hung or the caller gave up, together with
the fault the emulator itself served, if any.

Loop times come from the running loop, so on virtual time they line up with
everything else the simulation logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from simulations.emulators.stats import NEVER_ANSWERED

CLIENT_HEADER: Final = "X-Emulator-Client"
"""A caller's tag for its requests (a simulation puts its process number there)."""
UNTAGGED: Final = ""

FAILURES: Final = frozenset({"outage", "error", "hang", "malformed", "lost_answer"})
"""Faults that make an answer a failure (latency alone only delays one)."""


@dataclass(slots=True)
class Arrival:
    """One routed request. Filled in as it ends; read it, never change it."""

    received_at: float
    provider: str
    route: str
    """The route's label, e.g. `POST /v1/embeddings`."""
    correlation_id: str
    client: str
    status: int = NEVER_ANSWERED
    answered_at: float | None = None
    """When the answer left; None while in flight, or when none ever did."""
    ended_at: float | None = None
    """When the request was over: answered, or abandoned by its caller (None: in flight)."""
    fault: str | None = None
    """The last fault the emulator served it (`FAULT_KINDS`), if any."""
    retry_after_s: float | None = None
    """The wait its answer asked for (a 429's `retry-after-ms`, else `Retry-After`)."""

    @property
    def failed(self) -> bool:
        """Ended without a usable answer the emulator stands behind: a fault that fails it,
        an error status, or no answer at all."""
        if self.ended_at is None:
            return False
        return self.fault in FAILURES or self.status == NEVER_ANSWERED or self.status >= 400


def asked_wait_s(headers: Mapping[str, str]) -> float | None:
    """The wait an answer asks for: `retry-after-ms` (the finer one, which OpenAI's own
    SDK prefers), else `Retry-After` in seconds; None when it asks for none."""
    lower = {name.lower(): value for name, value in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(lower[name]) / scale
        except (KeyError, ValueError):
            continue
    return None


class Journal:
    """Arrivals in the order they came, kept until `clear`."""

    def __init__(self) -> None:
        self._arrivals: list[Arrival] = []

    def arrived(
        self, received_at: float, provider: str, route: str, correlation_id: str, client: str
    ) -> Arrival:
        arrival = Arrival(received_at, provider, route, correlation_id, client)
        self._arrivals.append(arrival)
        return arrival

    @staticmethod
    def ended(arrival: Arrival, status: int, now: float) -> None:
        """`arrival` is over at loop time `now`, answered with `status` or never answered."""
        arrival.status = status
        arrival.ended_at = now
        if status != NEVER_ANSWERED:
            arrival.answered_at = now

    def arrivals(self) -> tuple[Arrival, ...]:
        return tuple(self._arrivals)

    def clear(self) -> None:
        self._arrivals.clear()


__all__ = ["CLIENT_HEADER", "FAILURES", "UNTAGGED", "Arrival", "Journal", "asked_wait_s"]
