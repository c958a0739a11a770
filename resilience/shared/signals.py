"""Opt-in shared breaker signals over Redis: a quorum of workers opens every breaker.

By default each worker keeps its own breaker, as Resilience4j and Polly do:
sharing costs a round trip per call if done on every outcome, and one worker
with a bad network path would trip everyone. This module shares only trips,
and only once enough workers agree:

* when this worker's breaker trips on its own failures, it records itself in
  a sorted set of recent trips (`TRIP` script) for `window_s` seconds;
* when `quorum` distinct workers have tripped within the window, the first
  to see it publishes the news on the provider's channel, once per window;
* every other worker that hears it opens its breaker with `peer_trip`: the
  usual cooldown and half-open probes follow, so each finds out for itself
  when the provider is back.

Nothing here is on the call path: signals travel only on transitions. When
Redis is unreachable, breakers simply stay local; the listener resubscribes
once it is back.
"""

from __future__ import annotations

from redis.asyncio import Redis

from resilience.breaker import OPEN, Breaker, Transition
from resilience.events import emit
from resilience.shared.channel import Channel
from resilience.shared.gate import UNREACHABLE
from resilience.shared.scripts import TRIP


class BreakerSignals:
    """Shares `breaker`'s trips with other workers and hears theirs. Call `start` in a loop."""

    def __init__(
        self,
        client: Redis,
        breaker: Breaker,
        *,
        worker_id: str,
        quorum: int = 2,
        window_s: float = 60.0,
        prefix: str = "breakwater",
    ) -> None:
        if quorum < 1:
            raise ValueError(f"quorum must be at least 1, got {quorum!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.breaker = breaker
        self.worker_id = worker_id
        self.quorum = quorum
        self.window_s = window_s
        self.client = client
        base = f"{prefix}:{{{breaker.name}}}"
        self._trips = f"{base}:trips"
        self._announced = f"{base}:announced"
        self.channel = Channel(client, f"{base}:breaker", self._heard)
        self._trip = client.register_script(TRIP)

    def start(self) -> None:
        """Subscribe to the breaker's transitions and to the other workers' announcements."""
        self.breaker.subscribe(self._on_transition)
        self.channel.start()

    async def subscribed(self) -> None:
        """Wait until the listener hears announcements (tests use it to avoid a race)."""
        await self.channel.subscribed()

    async def close(self) -> None:
        await self.channel.close()

    def _on_transition(self, change: Transition) -> None:
        if change.dest != OPEN or change.trigger != "trip":
            return  # only trips on this worker's own failures count towards the quorum
        self.channel.spawn(self._report())

    async def _report(self) -> None:
        try:
            seen, first = await self._trip(
                keys=[self._trips, self._announced],
                args=[self.worker_id, self.window_s, self.quorum],
            )
            if int(first):
                await self.client.publish(self.channel.name, f"{self.worker_id} {int(seen)}")
        except UNREACHABLE as exc:
            emit(
                "breaker.signal_lost",
                level="WARNING",
                provider=self.breaker.name,
                worker=self.worker_id,
                error=type(exc).__name__,
            )
            return
        emit(
            "breaker.signal",
            provider=self.breaker.name,
            worker=self.worker_id,
            tripped_workers=int(seen),
            quorum=self.quorum,
            announced=bool(int(first)),
        )

    def _heard(self, data: str) -> None:
        sender, _, seen = data.partition(" ")
        if sender == self.worker_id:
            return
        self.breaker.trip_from_peers(
            f"{seen} workers tripped within {self.window_s:g}s (quorum {self.quorum})"
        )
