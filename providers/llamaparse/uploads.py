"""The LlamaParse upload limit shared by every worker through Redis.

LlamaCloud limits parse uploads per organization (50 in any 10 s on v2), so
each worker keeping its own bucket would let N workers upload N times the
limit. `SharedUploads` keeps one bucket in Redis, through the same gate and
script that share the guards' rate limits (`resilience.shared.gate`), and
falls back to a local bucket at the fallback fraction while Redis is down.

The gate shapes buckets by the minute, so the bucket is asked for in those
terms: `6 * limit` a minute with a burst of one upload, which refills at
`limit - 1/6` per 10 s and so grants at most `limit` in any 10 s. A 429 is
not this bucket's to act on: the guard that sees it pauses its own limits.
"""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis

from providers.llamaparse.settings import UPLOAD_WINDOW_S
from resilience import correlation
from resilience.shared.gate import RedisGate
from resilience.shared.policy import SharedPolicy

GATE_NAME = "llamaparse-uploads"


class SharedUploads:
    """At most `limit` uploads in any 10 s across every worker on this Redis."""

    def __init__(self, client: Redis, limit: int, *, policy: SharedPolicy, worker_id: str) -> None:
        if limit < 1:
            raise ValueError("SharedUploads limit must be at least 1")
        per_minute = round(limit * 60 / UPLOAD_WINDOW_S)
        self.gate = RedisGate(
            client,
            GATE_NAME,
            rpm=per_minute,
            policy=replace(policy, burst_fraction=1 / per_minute),
            worker_id=worker_id,
        )

    def __repr__(self) -> str:
        return f"SharedUploads({self.gate!r})"

    async def acquire(self) -> None:
        """Wait for an upload slot (no cost and no budget: the guard holds those)."""
        await self.gate.admit(0.0, 0.0, correlation.current() or "", None)
