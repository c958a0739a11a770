"""One process's link to the limits it shares with other workers through Redis.

`RedisShared` owns the process's Redis client, a `RedisGate` per provider
that has a rate limit or a budget, and, with breaker sharing on, a
`BreakerSignals` per guard. Build guards with `guard`, and `close` it at
shutdown so deferred ledger corrections reach Redis.
"""

from __future__ import annotations

import random

from resilience.bucket import Throttle
from resilience.config import ProviderSettings, SharedSettings
from resilience.guard import Guard
from resilience.shared.gate import RedisGate, connect, default_worker_id
from resilience.shared.signals import BreakerSignals


class RedisShared:
    """The gates and breaker signals of this process. Make it inside a running loop."""

    def __init__(self, settings: SharedSettings, *, rng: random.Random | None = None) -> None:
        if settings.redis_url is None:
            raise ValueError("RedisShared needs settings with a redis_url")
        self.settings = settings
        self._rng = rng or random.Random()
        self.worker_id = default_worker_id(self._rng)
        self.client = connect(settings.redis_url)
        self.gates: dict[str, RedisGate] = {}
        self.signals: list[BreakerSignals] = []

    def guard(self, name: str, provider: ProviderSettings) -> Guard:
        """Provider `name`'s guard, its limits and budget in Redis when it has any."""
        gate = None
        if provider.shares_limits():
            gate = self.gates[name] = RedisGate(
                self.client,
                name,
                rpm=provider.rpm,
                tpm=provider.tpm,
                budget_limits=provider.budget_limits(),
                policy=self.settings.policy(),
                rng=self._rng,
                worker_id=self.worker_id,
            )
        guard = provider.guard(name, rng=self._rng, shared=gate)
        if self.settings.breaker_sharing == "quorum":
            signals = BreakerSignals(
                self.client, guard.breaker, worker_id=self.worker_id, quorum=self.settings.quorum
            )
            signals.start()
            self.signals.append(signals)
        return guard

    def throttles(self, name: str) -> tuple[Throttle | None, Throttle | None]:
        """(requests, tokens) feedback targets for provider `name`'s client."""
        gate = self.gates.get(name)
        return gate.throttles() if gate is not None else (None, None)

    async def close(self) -> None:
        """Stop listening, flush every gate's deferred corrections, close the client."""
        for signals in self.signals:
            await signals.close()
        for gate in self.gates.values():
            await gate.drain()
        await self.client.aclose()
