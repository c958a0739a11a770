"""A Redis pub/sub channel a process listens on for as long as it runs.

Both opt-in relays (breaker signals, shared webhooks) need the same parts:
subscribe, hand every message to a callback, and when Redis drops the
connection, wait a moment and subscribe again, since a relay that died with
one outage would stay silent for the rest of the process's life; plus the
publishing tasks they start from synchronous callbacks, awaited at close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

from redis.asyncio import Redis

from resilience.shared.gate import UNREACHABLE

RESUBSCRIBE_S: Final = 1.0


class Channel:
    """Channel `name` on `client`: `heard(data)` for each message once `start`ed."""

    def __init__(self, client: Redis, name: str, heard: Callable[[Any], None]) -> None:
        self.client = client
        self.name = name
        self._heard = heard
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()

    def start(self) -> None:
        """Listen, on the running loop, until `close`."""
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def subscribed(self) -> None:
        """Wait until the subscription stands (tests use it to avoid a race)."""
        await self._subscribed.wait()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a publish, say) in the background; `close` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop listening, then let the spawned work still running finish."""
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        for task in list(self._tasks):
            await task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.name)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._heard(message["data"])
            except UNREACHABLE:
                self._subscribed.clear()
                await asyncio.sleep(RESUBSCRIBE_S)
