"""LlamaParse webhooks for parses waiting in other processes, relayed through Redis.

A webhook reaches one `breakwater serve`; the parse waiting for it may run
in any worker process, on any host. With Redis configured, `SharedInbox`
(a `WebhookInbox`) makes that work:

* a parse that starts waiting registers its LlamaParse job id in Redis
  (`<prefix>:webhooks:waiting:<job>`, expiring with the wait), so the server
  that receives the delivery knows the job is ours (`known`) instead of
  answering 404;
* an event the server accepts is published on one channel, and a terminal
  one is also kept for a day, for a parse that starts waiting just after;
* every process's relay (`start`) hands the events it hears to its own
  inbox, which deduplicates them and wakes the waiting parse.

Redis failing is never fatal here: registering or publishing falls back to
what one process can do, and a parse that hears nothing polls LlamaParse
once its webhook deadline passes, as it would without webhooks.
"""

from __future__ import annotations

import math
from typing import Final

import orjson
from redis.asyncio import Redis

from providers.llamaparse.webhooks import WebhookEvent, WebhookInbox, parse_webhook_body
from resilience.events import emit
from resilience.shared.channel import Channel
from resilience.shared.gate import UNREACHABLE

KEEP_EVENT_S: Final = 86_400


def _encode(event: WebhookEvent) -> bytes:
    """The event in the webhook wire format, so `_decode` is the webhook parser itself."""
    return orjson.dumps(
        {
            "event_type": event.event,
            "job_id": event.job_id,
            "status": event.status,
            "data": event.data,
        }
    )


def _decode(raw: bytes | str) -> WebhookEvent:
    return parse_webhook_body(raw.encode() if isinstance(raw, str) else raw)


class SharedInbox(WebhookInbox):
    """A `WebhookInbox` whose accepted events reach every process. Call `start` in a loop."""

    def __init__(
        self, client: Redis, *, prefix: str = "breakwater", max_jobs: int = 10_000
    ) -> None:
        super().__init__(max_jobs=max_jobs)
        self.client = client
        self._prefix = f"{prefix}:webhooks"
        self.channel = Channel(client, f"{self._prefix}:events", self._heard)

    def start(self) -> None:
        """Listen for the events other processes accepted."""
        self.channel.start()

    async def subscribed(self) -> None:
        """Wait until the relay hears events (tests use it to avoid a race)."""
        await self.channel.subscribed()

    async def close(self) -> None:
        await self.channel.close()

    async def known(self, job_id: str) -> bool:
        """Does a parse in some process wait for LlamaParse job `job_id`?"""
        try:
            return bool(await self.client.exists(self._waiting(job_id)))
        except UNREACHABLE:
            return False

    def accept(self, event: WebhookEvent) -> bool:
        """Record `event` here and, if it is new, share it with every process."""
        new = super().accept(event)
        if new:
            self.channel.spawn(self._share(event))
        return new

    async def wait(self, job_id: str, timeout_s: float) -> WebhookEvent | None:
        key = self._waiting(job_id)
        try:
            await self.client.set(key, "1", ex=math.ceil(timeout_s) + 60)
            kept = await self.client.get(self._event(job_id))
        except UNREACHABLE:
            kept = None  # only this process's deliveries can reach the parse now
        if kept is not None:
            super().accept(_decode(kept))
        try:
            return await super().wait(job_id, timeout_s)
        finally:
            try:
                await self.client.delete(key)
            except UNREACHABLE:
                pass  # the key expires on its own

    async def _share(self, event: WebhookEvent) -> None:
        payload = _encode(event)
        try:
            if event.terminal:
                await self.client.set(self._event(event.job_id), payload, ex=KEEP_EVENT_S)
            await self.client.publish(self.channel.name, payload)
        except UNREACHABLE as exc:
            # The parse that waits elsewhere will poll once its webhook deadline passes.
            emit(
                "webhook.share_failed",
                level="WARNING",
                job_id=event.job_id,
                error=type(exc).__name__,
            )

    def _heard(self, data: bytes | str) -> None:
        # The base class's accept: what another process shared is not shared again.
        super().accept(_decode(data))

    def _waiting(self, job_id: str) -> str:
        return f"{self._prefix}:waiting:{job_id}"

    def _event(self, job_id: str) -> str:
        return f"{self._prefix}:event:{job_id}"
