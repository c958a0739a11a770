"""LlamaParse's webhook deliveries: signed, delayed, and as unreliable as the plan says.

Each delivery is POSTed through a `providers.transport.Transport`: real HTTP
when the emulator serves sockets, or any in-process transport in a
simulation, so a webhook can land in a handler with no sockets at all.

The body is the emulator's event (LlamaCloud documents no event layout; the
APIs build it): `{"event_type": "parse.success", "job_id", "status",
"data": {...}}`, signed as LlamaCloud signs: `LC-Signature: sha256=<hex
HMAC-SHA256(secret, raw body)>`. v1 deliveries use the emulator's secret;
a v2 webhook configuration brings its own, or none (then no signature).

Everything random about a delivery (delay, drop, duplicate, bad signature)
is drawn when the job is created, in that order, so a run replays exactly.
A non-2xx answer, no answer, or no answer within `timeout_s` is retried
after each pause in `retry_backoff_s`; a duplicate is the same request sent
again right after the first success.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from providers.transport import AiohttpTransport, HttpRequest, Transport, TransportError
from simulations.emulators.chaos import draw_range
from simulations.emulators.faults import WebhookPlan
from simulations.emulators.stats import Stats

SIGNATURE_HEADER: Final = "LC-Signature"


def sign(secret: str, body: bytes) -> str:
    """The `LC-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class _Delivery:
    request: HttpRequest
    at: float
    drop: bool
    duplicate: bool
    plan: WebhookPlan


class WebhookSender:
    """Schedules and performs deliveries; counts them in `stats`.

    With no transport given, one `AiohttpTransport` is made on first use and
    closed by `close`.
    """

    def __init__(self, secret: str, stats: Stats, transport: Transport | None = None) -> None:
        self.secret = secret
        self._stats = stats
        self._transport = transport
        self._owned: AiohttpTransport | None = None
        self._plan = WebhookPlan()
        self._rng = random.Random(0)
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, plan: WebhookPlan, rng: random.Random) -> None:
        """Use `plan` for deliveries scheduled from now on; already-scheduled ones keep theirs."""
        self._plan = plan
        self._rng = rng

    def schedule(
        self,
        url: str,
        body: bytes,
        ready_at: float,
        *,
        secret: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Task[None]:
        """Deliver `body` to `url` once loop time passes `ready_at` plus the plan's delay.

        Signed with `secret` (none when None), with `headers` added; cancelling
        the returned task abandons the delivery.
        """
        plan, rng = self._plan, self._rng
        delay_s = draw_range(rng, plan.delay_s)
        drop = rng.random() < plan.drop_rate
        duplicate = rng.random() < plan.duplicate_rate
        bad_signature = rng.random() < plan.bad_signature_rate and secret is not None
        sent = {**(headers or {}), "Content-Type": "application/json"}
        if secret is not None:
            sent[SIGNATURE_HEADER] = sign(f"not-{secret}" if bad_signature else secret, body)
        delivery = _Delivery(
            HttpRequest("POST", url, sent, body), ready_at + delay_s, drop, duplicate, plan
        )
        self._stats.webhook("scheduled")
        if bad_signature:
            self._stats.webhook("bad_signature")
        task = asyncio.get_running_loop().create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, delivery: _Delivery) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, delivery.at - loop.time()))
        if delivery.drop:
            self._stats.webhook("dropped")
            return
        pauses = delivery.plan.retry_backoff_s
        for attempt in range(len(pauses) + 1):
            if attempt:
                await asyncio.sleep(pauses[attempt - 1])
            if await self._attempt(delivery):
                self._stats.webhook("delivered")
                if delivery.duplicate:
                    self._stats.webhook("duplicated")
                    await self._attempt(delivery)
                return
        self._stats.webhook("failed")

    async def _attempt(self, delivery: _Delivery) -> bool:
        """One POST; True on a 2xx answer."""
        self._stats.webhook("attempts")
        transport = self._transport
        if transport is None:
            transport = self._owned = self._owned or AiohttpTransport()
        try:
            async with asyncio.timeout(delivery.plan.timeout_s):
                response = await transport.send(delivery.request)
        except (TransportError, TimeoutError, aiohttp.ClientError):
            return False
        return 200 <= response.status < 300

    def cancel_pending(self) -> None:
        """Abandon every delivery not yet finished."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks)
        self.cancel_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owned is not None:
            await self._owned.close()
            self._owned = None
