"""`AppTransport`: an aiohttp application as a `providers.transport.Transport`, with no sockets.

The emulator's webhook sender POSTs through a transport; in a simulation
this one hands each request to the real API application (`state.app.server`),
through its routing and middlewares, as aiohttp's own test utilities build
a request. Nothing of ours is replaced: only the socket is missing.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, web
from aiohttp.test_utils import make_mocked_request

from providers.transport import HttpRequest, HttpResponse


class _Socketless:
    """What aiohttp asks of a connection's transport and protocol when none exists.

    Cheaper than the `unittest.mock` stand-ins `make_mocked_request` would
    otherwise build per request, which cost milliseconds each.
    """

    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128
    peername = None
    sockname = None
    ssl_context = None

    def __init__(self) -> None:
        self.transport = self

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        """A request body is fed whole; there is nothing to pause."""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """See `pause_reading`."""


_SOCKETLESS = _Socketless()


class AppTransport:
    """Deliver requests to `app` in process. `app` may be set after construction."""

    def __init__(self, app: web.Application | None = None) -> None:
        self.app = app

    async def send(self, request: HttpRequest) -> HttpResponse:
        app = self.app
        if app is None:
            raise RuntimeError("AppTransport has no application yet")
        if not app.frozen:
            app.freeze()
        loop = asyncio.get_running_loop()
        payload = StreamReader(_SOCKETLESS, 2**16, loop=loop)  # type: ignore[arg-type]
        payload.feed_data(request.body)
        payload.feed_eof()
        path = "/" + request.url.split("://", 1)[-1].split("/", 1)[-1]
        headers = {**request.headers, "Content-Length": str(len(request.body))}
        incoming = make_mocked_request(
            request.method,
            path,
            headers=headers,
            app=app,
            payload=payload,
            loop=loop,
            protocol=_SOCKETLESS,
            transport=_SOCKETLESS,
            writer=_SOCKETLESS,
        )
        response = await app._handle(incoming)
        body = response.body if isinstance(response, web.Response) else None
        return HttpResponse.build(
            response.status, dict(response.headers), body if isinstance(body, bytes) else b""
        )


__all__ = ["AppTransport"]
