"""The emulator's framework-free HTTP core: parsed requests, routes, JSON answers.

Handlers take an `Incoming` (method, path, case-insensitive headers, raw
body) and return a `providers.transport.HttpResponse`, so the same code
answers over real HTTP (via the aiohttp adapter) and in-process (via
`InProcessTransport`), where no framework is involved at all.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from providers.transport import HttpRequest, HttpResponse


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request as handlers see it. `received_at` is loop time on arrival."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    received_at: float
    query: MultiDictProxy[str]
    """Repeated keys kept (`expand=text&expand=markdown`, as Stainless SDKs send lists)."""

    @classmethod
    def from_request(cls, request: HttpRequest, now: float) -> Incoming:
        url = URL(request.url)
        return cls(
            method=request.method.upper(),
            path=url.path,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=request.body,
            received_at=now,
            query=url.query,
        )


Handler = Callable[[Incoming, Mapping[str, str]], Awaitable[HttpResponse]]
"""An endpoint: the request and the values of the route's `{name}` segments."""


class AnswerLost(Exception):
    """Raised by a handler that did its work (made a job) but whose answer must never leave.

    The core then hangs the request, as if the reply were lost on the way
    back: unlike a hang drawn before the handler, this one has side effects.
    """


_SEGMENT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    """`method` + `template` (e.g. `/api/v1/parsing/job/{job_id}`) -> `handler`."""

    method: str
    template: str
    handler: Handler
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = _SEGMENT.split(self.template)
        regex = "".join(
            re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
            for index, part in enumerate(parts)
        )
        object.__setattr__(self, "_pattern", re.compile(f"{regex}/?"))

    @property
    def label(self) -> str:
        """The name statistics count this endpoint under."""
        return f"{self.method} {self.template}"

    def match(self, path: str) -> dict[str, str] | None:
        found = self._pattern.fullmatch(path)
        return None if found is None else found.groupdict()


class ProviderApi(Protocol):
    """One emulated provider: its routes and its own way of saying things went wrong."""

    @property
    def name(self) -> str: ...

    @property
    def routes(self) -> Sequence[Route]: ...

    def fault_response(self, status: int, incoming: Incoming) -> HttpResponse:
        """An injected error with `status`, in this provider's error shape."""
        ...

    def not_found(self, incoming: Incoming) -> HttpResponse:
        """What the provider answers for a path or method it does not serve."""
        ...

    def malform(self, response: HttpResponse, kind: str) -> HttpResponse:
        """`response` (a 200) broken in the way `kind` names."""
        ...


def json_response(
    status: int, document: Any, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    return HttpResponse.build(
        status,
        {"Content-Type": "application/json", **(headers or {})},
        orjson.dumps(document),
    )


def malform_generic(response: HttpResponse, kind: str) -> HttpResponse:
    """The kinds every provider shares: `invalid_json` and `wrong_shape`."""
    if kind == "invalid_json":
        body = response.body[: len(response.body) // 2]
    elif kind == "wrong_shape":
        body = orjson.dumps({"result": orjson.loads(response.body)})
    else:
        raise ValueError(f"not a generic malformed kind: {kind!r}")
    return HttpResponse(response.status, response.headers, body)


def status_phrase(status: int) -> str:
    """`Service Unavailable` for 503; a plain `Error` for codes HTTP gives no name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
