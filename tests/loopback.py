"""Helpers for the emulator suites: the emulator in process on virtual time or served
on 127.0.0.1, a wire recorder, and a webhook receiver app built on
`providers.llamaparse.webhooks.check_delivery`.

Nothing here stands in for our own code. `Wire` only listens to aiohttp's
own trace hooks on the session the real `AiohttpTransport` sends with, and
the receiver is the smallest real aiohttp app that mounts `check_delivery`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from providers.llamaparse.webhooks import WebhookEvent, WebhookInbox, WebhookVerdict, check_delivery
from providers.transport import AiohttpTransport
from resilience.clock import wall_time
from resilience.testing import run_virtual
from simulations.emulators import Emulator, InProcessTransport, RunningEmulator, start

T = TypeVar("T")

MAX_WEBHOOK_BYTES = 1024 * 1024


def in_process(emulator: Emulator, scenario: Callable[[InProcessTransport], Awaitable[T]]) -> T:
    """Run `scenario` against `emulator` in process on a virtual-time loop, then close it."""

    async def main() -> T:
        try:
            return await scenario(InProcessTransport(emulator))
        finally:
            await emulator.close()

    return run_virtual(main())


@asynccontextmanager
async def serving(emulator: Emulator) -> AsyncIterator[RunningEmulator]:
    """`emulator` over real HTTP on 127.0.0.1, on a free port, until the block ends."""
    running = await start(emulator, "127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


@dataclass(slots=True)
class Exchange:
    """One request the client sent, timed on the loop clock."""

    method: str
    url: str
    started: float
    body: bytes = b""
    ended: float | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return orjson.loads(self.body)


class Wire:
    """Records each request of one aiohttp session through aiohttp's trace hooks."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._start)
        config.on_request_chunk_sent.append(self._chunk)
        config.on_request_end.append(self._end)
        return config

    async def _start(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        ctx.exchange = Exchange(params.method, str(params.url), asyncio.get_running_loop().time())
        self.exchanges.append(ctx.exchange)

    async def _chunk(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        ctx.exchange.body += params.chunk

    async def _end(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        exchange: Exchange = ctx.exchange
        exchange.ended = asyncio.get_running_loop().time()
        exchange.status = params.response.status
        exchange.headers = {k.lower(): v for k, v in params.response.headers.items()}


@asynccontextmanager
async def transport(wire: Wire | None = None) -> AsyncIterator[AiohttpTransport]:
    """A real `AiohttpTransport`, its session traced by `wire` when one is given."""
    if wire is None:
        owned = AiohttpTransport()
        try:
            yield owned
        finally:
            await owned.close()
        return
    async with aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session:
        yield AiohttpTransport(session)


class WebhookReceiver:
    """An API server's webhook endpoint: `check_delivery` decides, the answer says so.

    `bodies` and `verdicts` hold every delivery's raw body and decision;
    `processed` the events the app acted on (new ones only: a duplicate is
    acknowledged and ignored).
    """

    def __init__(self, secret: str, inbox: WebhookInbox | None = None) -> None:
        self.secret = secret
        self.inbox = inbox if inbox is not None else WebhookInbox()
        self.bodies: list[bytes] = []
        self.verdicts: list[WebhookVerdict] = []
        self.processed: list[WebhookEvent] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        verdict = check_delivery(
            self.secret,
            request.headers,
            body,
            max_bytes=MAX_WEBHOOK_BYTES,
            inbox=self.inbox,
            now=wall_time(),
        )
        self.verdicts.append(verdict)
        if verdict.error is not None:
            return web.json_response(verdict.error, status=verdict.status)
        if verdict.event is not None and self.inbox.accept(verdict.event):
            self.processed.append(verdict.event)
        return web.json_response({"received": True, "duplicate": verdict.duplicate})


@asynccontextmanager
async def receiving(receiver: WebhookReceiver) -> AsyncIterator[str]:
    """Serve `receiver` on 127.0.0.1; yields its webhook URL."""
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES * 2)
    app.router.add_post("/webhooks/llamaparse", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/llamaparse"
    finally:
        await runner.cleanup()


@contextmanager
def served_in_thread(emulator: Emulator) -> Iterator[RunningEmulator]:
    """`emulator` over real HTTP on 127.0.0.1, its own loop in a background thread.

    For synchronous clients (the official SDKs' blocking APIs, or ones that
    call `asyncio.run` themselves), which would stall a server on their own loop.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    served: list[RunningEmulator] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        served.append(loop.run_until_complete(start(emulator, "127.0.0.1", 0)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="emulator", daemon=True)
    thread.start()
    if not ready.wait(10.0):
        raise RuntimeError("the emulator did not start within 10 s")
    try:
        yield served[0]
    finally:
        asyncio.run_coroutine_threadsafe(served[0].close(), loop).result(10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()
