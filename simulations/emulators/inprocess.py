"""`InProcessTransport`: a `providers.transport.Transport` that is the emulator itself.

Requests go straight to `Emulator.handle`, with no sockets, so on a
virtual-time loop every emulated delay is exact and instant. A hung request
ends the way it does over HTTP: when the client's own timeout cancels it.
"""

from __future__ import annotations

from providers.transport import HttpRequest, HttpResponse
from simulations.emulators.core import Emulator


class InProcessTransport:
    """Answers every request with `emulator.handle`, whatever host the URL names."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def send(self, request: HttpRequest) -> HttpResponse:
        return await self.emulator.handle(request)
