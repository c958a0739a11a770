"""The transport seam: provider clients speak `HttpRequest` -> `HttpResponse`.

As in httpx, the network is a replaceable part. `AiohttpTransport` sends
requests over one pooled aiohttp `ClientSession` (real HTTP, loopback in
tests); a simulation passes an in-process transport that hands the same
requests straight to the emulator's handlers, with no sockets, so virtual
time stays exact. Clients apply their own deadlines around `send` with
`asyncio.timeout`, so a hung peer times out the same way on either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from resilience import ProviderError


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, fully encoded: `body` is the bytes that go on the wire."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        # Headers carry credentials; a repr must never show them.
        return f"HttpRequest({self.method} {self.url}, {len(self.body)} bytes)"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One response. `headers` is case-insensitive, as HTTP headers are."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @classmethod
    def build(
        cls, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> HttpResponse:
        return cls(status, CIMultiDictProxy(CIMultiDict(headers or {})), body)

    def json(self) -> Any:
        """The body parsed as JSON (raises `orjson.JSONDecodeError` if it is not)."""
        return orjson.loads(self.body)


class Transport(Protocol):
    """Anything that can answer an `HttpRequest`."""

    async def send(self, request: HttpRequest) -> HttpResponse: ...


class TransportError(ProviderError):
    """The request got no HTTP answer: refused, reset, or the peer went away.

    It has no status, so the breaker counts it as a failure and it is retried.
    """


class AiohttpTransport:
    """Real HTTP over one pooled `aiohttp.ClientSession`.

    Pass a session to share its pool (and its lifetime) with the caller;
    otherwise one is created on first use with the given connect and read
    timeouts, and `close` ends it.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        pool_size: int = 100,
    ) -> None:
        self._session = session
        self._owned = session is None
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._pool_size = pool_size

    async def send(self, request: HttpRequest) -> HttpResponse:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size)
            session = self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=connector
            )
        try:
            async with session.request(
                request.method, request.url, headers=dict(request.headers), data=request.body
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)
        except aiohttp.ClientConnectionError as exc:
            raise TransportError(
                f"{request.method} {request.url}: {exc.__class__.__name__}"
            ) from exc

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None
