"""Listening on a Redis pub/sub channel for as long as a process runs.

Both opt-in relays (breaker signals, shared webhooks) need the same loop:
subscribe, hand every message to a callback, and when Redis drops the
connection, wait a moment and subscribe again, since a relay that died with
one outage would stay silent for the rest of the process's life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import Redis

from resilience.redis_gate import UNREACHABLE

RESUBSCRIBE_S: Final = 1.0


async def listen(
    client: Redis, channel: str, heard: Callable[[Any], None], subscribed: asyncio.Event
) -> None:
    """Call `heard(data)` for every message on `channel`, until cancelled.

    `subscribed` is set while the subscription stands, so callers (tests)
    can wait for it before publishing.
    """
    while True:
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        heard(message["data"])
        except UNREACHABLE:
            subscribed.clear()
            await asyncio.sleep(RESUBSCRIBE_S)


async def stop(listener: asyncio.Task[None] | None, tasks: set[asyncio.Task[None]]) -> None:
    """Cancel `listener` and wait for it, then let the `tasks` still running finish."""
    if listener is not None:
        listener.cancel()
        try:
            await listener
        except asyncio.CancelledError:
            pass
    for task in list(tasks):
        await task
