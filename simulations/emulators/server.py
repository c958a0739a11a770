"""Serving the emulator over real HTTP with aiohttp.

The adapter is one catch-all route that turns the aiohttp request into an
`HttpRequest`, awaits `Emulator.handle`, and writes the `HttpResponse` back:
routing, faults and control all live in the framework-free core.

Handlers are cancelled when their client disconnects, so a hung request does
not outlive the client that gave up on it; shutting down also ends hangs and
pending webhooks (`Emulator.close`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from providers.transport import HttpRequest
from simulations.emulators.core import Emulator

MAX_UPLOAD_BYTES = 320 * 1024 * 1024
"""LlamaParse takes files up to 300 MB; the form around one adds a little."""


def create_app(emulator: Emulator) -> web.Application:
    """An aiohttp application serving `emulator` on every path."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        answer = await emulator.handle(
            HttpRequest(request.method, str(request.url), request.headers, await request.read())
        )
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    async def close_emulator(_app: web.Application) -> None:
        await emulator.close()

    app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.on_shutdown.append(close_emulator)
    return app


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started server. `port` is the bound port (useful when 0 was asked for)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What `openai.AsyncOpenAI(base_url=...)` takes."""
        return f"{self.base_url}/v1"

    @property
    def llamaparse_base_url(self) -> str:
        """What LlamaCloud clients take as their base URL (routes start /api/...)."""
        return self.base_url

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    """Serve `emulator` on `host:port` (0: any free port) until `close`."""
    runner = web.AppRunner(
        create_app(emulator), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port: int = runner.addresses[0][1]
    return RunningEmulator(runner, host, bound_port)


async def serve(
    emulator: Emulator,
    host: str,
    port: int,
    *,
    on_start: Callable[[RunningEmulator], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    running = await start(emulator, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        if on_start is not None:
            on_start(running)
        await stop.wait()
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        await running.close()
