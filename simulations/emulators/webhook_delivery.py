"""LlamaParse's webhook deliveries: signed, delayed, and as unreliable as the plan says.

Each delivery is POSTed through a `providers.transport.Transport`: real HTTP
when the emulator serves sockets, or any in-process transport in a
simulation, so a webhook can land in a handler with no sockets at all.

The body is the emulator's event (LlamaCloud documents no event layout; the
APIs build it): `{"event_type": "parse.success", "job_id", "status",
"data": {...}}`, signed as LlamaCloud signs: `LC-Signature: sha256=<hex
HMAC-SHA256(secret, raw body)>`. v1 deliveries use the emulator's secret;
a v2 webhook configuration brings its own, or none (then no signature).

With a Standard Webhooks secret given (`standard_secret`, base64, optionally
`whsec_`-prefixed), every signed delivery also carries the Standard Webhooks
headers, as a relay in front of the receiver would add them: `webhook-id`,
the same on every attempt and on the duplicate; `webhook-timestamp`, the
wall-clock second of each attempt (`resilience.clock.wall_time`, virtual in
a simulation); and `webhook-signature: v1,<base64 HMAC-SHA256(key,
"{id}.{timestamp}.{body}")>`. The signing is written here from the spec, not
borrowed from the receiver's code, so a slip in either is not shared.

Everything random about a delivery (delay, drop, duplicate, bad signature)
is drawn when the job is created, in that order, so a run replays exactly.
A non-2xx answer, no answer, or no answer within `timeout_s` is retried
after each pause in `retry_backoff_s`; a duplicate is the same request sent
again right after the first success.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from providers.transport import AiohttpTransport, HttpRequest, Transport, TransportError
from resilience.clock import wall_time
from simulations.emulators.chaos import draw_range
from simulations.emulators.faults import WebhookPlan
from simulations.emulators.stats import Stats

SIGNATURE_HEADER: Final = "LC-Signature"


def sign(secret: str, body: bytes) -> str:
    """The `LC-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_key(secret: str) -> bytes:
    """A Standard Webhooks secret's key: base64, after an optional `whsec_` prefix."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt at delivering `body`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{digest}",
    }


@dataclass(frozen=True, slots=True)
class _Standard:
    """How a delivery is signed the Standard Webhooks way: its message id and key."""

    msg_id: str
    key: bytes


@dataclass(frozen=True, slots=True)
class _Delivery:
    request: HttpRequest
    at: float
    drop: bool
    duplicate: bool
    plan: WebhookPlan
    standard: _Standard | None


class WebhookSender:
    """Schedules and performs deliveries; counts them in `stats`.

    With no transport given, one `AiohttpTransport` is made on first use and
    closed by `close`. `standard_secret` adds the Standard Webhooks headers to
    every signed delivery (see the module doc).
    """

    def __init__(
        self,
        secret: str,
        stats: Stats,
        transport: Transport | None = None,
        *,
        standard_secret: str | None = None,
    ) -> None:
        self.secret = secret
        self._standard_key = None if standard_secret is None else standard_key(standard_secret)
        self._messages = 0
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
        standard = None
        if secret is not None:
            sent[SIGNATURE_HEADER] = sign(f"not-{secret}" if bad_signature else secret, body)
            if self._standard_key is not None:
                self._messages += 1
                key = self._standard_key + (b"-forged" if bad_signature else b"")
                standard = _Standard(f"msg_{self._messages:08d}", key)
        delivery = _Delivery(
            HttpRequest("POST", url, sent, body),
            ready_at + delay_s,
            drop,
            duplicate,
            plan,
            standard,
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
        request = delivery.request
        standard = delivery.standard
        if standard is not None:
            stamp = sign_standard(standard.key, standard.msg_id, int(wall_time()), request.body)
            request = HttpRequest(
                request.method, request.url, {**request.headers, **stamp}, request.body
            )
        try:
            async with asyncio.timeout(delivery.plan.timeout_s):
                response = await transport.send(request)
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
