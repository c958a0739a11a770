"""The router: MOCK, REAL or HYBRID per capability, with degraded fallback.

* MOCK never touches the real implementation.
* REAL raises the typed error (`CircuitOpen`, `RateLimited`,
  `BudgetExceeded`, or the provider's last error), which carries when to
  try again.
* HYBRID serves the deterministic mock whenever the real path would raise one
  of those, and says why in `Routed.reason`. The breaker machine drives it:
  while the breaker is open the mock is served without touching the guard.
  Caller errors (a bad request) and configuration errors (a bad key) are
  raised even in HYBRID: a mock would hide a bug that needs a person.

A value the mock served has `path == "mock"`; callers persist that, so
degraded results can be redone once the real provider is healthy.

`Router.subscribe` hands every routed call's outcome (a `RoutedCall`) to its
callbacks, as `Breaker.subscribe` does for transitions: metrics count calls
there rather than wrapping each caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar

from resilience import correlation
from resilience.breaker import OPEN
from resilience.errors import (
    BudgetExceeded,
    CircuitOpen,
    ErrorClass,
    RateLimited,
    Rejected,
    classify,
)
from resilience.events import emit
from resilience.guard import Guard
from resilience.limits import Call

T = TypeVar("T")

Path = Literal["real", "mock"]


class ServiceMode(StrEnum):
    MOCK = "mock"
    REAL = "real"
    HYBRID = "hybrid"


# Reading an enum member through its class costs a descriptor call in Python 3.11,
# so `call` compares against these instead.
_MOCK: Final = ServiceMode.MOCK
_HYBRID: Final = ServiceMode.HYBRID


class Routed(NamedTuple, Generic[T]):
    """A routed call's value, which path produced it, and why that path.

    `reason` is None for a real result, "mode" when MOCK mode chose the mock,
    otherwise one of "circuit_open", "rate_limited", "budget", "quota" or
    "retries_exhausted".
    """

    value: T
    path: Path
    reason: str | None

    @property
    def degraded(self) -> bool:
        return self.path == "mock"


@dataclass(frozen=True, slots=True)
class RoutedCall:
    """One routed call's outcome, as passed to `Router.subscribe` callbacks.

    `provider` is the name of the capability's guard. `outcome` is "ok" for a
    real result, the reason a mock served it (`Routed.reason`: "mode",
    "circuit_open", ...), or for a call that raised, `call_outcome` of the
    error; `path` is "real" for a raised call, since the real path raised it.
    """

    capability: str
    provider: str
    outcome: str
    path: Path


def call_outcome(exc: BaseException) -> str:
    """The outcome of a routed call that raised: the refusal's reason or the error class."""
    if isinstance(exc, Rejected):
        return exc.reason
    return classify(exc).value


@dataclass(frozen=True, slots=True)
class _Route:
    real: Callable[..., Awaitable[Any]]
    mock: Callable[..., Awaitable[Any]]
    guard: Guard
    ready: Callable[[], Awaitable[None]] | None


def fallback_reason(exc: BaseException) -> str | None:
    """The HYBRID fallback reason for an error, or None if it must be raised."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, BudgetExceeded):
        return "budget"
    error_class = classify(exc)
    if error_class is ErrorClass.QUOTA:
        return "quota"
    if error_class is ErrorClass.RATE_LIMITED:
        return "rate_limited"
    if error_class is ErrorClass.FAILURE:
        return "retries_exhausted"
    return None


class Router:
    """Routes each capability to its real or mock implementation by mode."""

    def __init__(self, mode: ServiceMode | str = ServiceMode.HYBRID) -> None:
        self._mode = ServiceMode(mode)
        self._routes: dict[str, _Route] = {}
        self._subscribers: list[Callable[[RoutedCall], None]] = []

    @property
    def mode(self) -> ServiceMode:
        return self._mode

    @mode.setter
    def mode(self, mode: ServiceMode | str) -> None:
        self._mode = ServiceMode(mode)

    def register(
        self,
        capability: str,
        *,
        real: Callable[..., Awaitable[Any]],
        mock: Callable[..., Awaitable[Any]],
        guard: Guard,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Route `capability` to `real` through `guard`, or to `mock`. `ready` is a wait of
        `real`'s own that the guard awaits before admitting each attempt (`Call.ready`)."""
        if capability in self._routes:
            raise ValueError(f"capability {capability!r} is already registered")
        self._routes[capability] = _Route(real, mock, guard, ready)

    def guard(self, capability: str) -> Guard:
        return self._route(capability).guard

    @property
    def capabilities(self) -> tuple[str, ...]:
        return tuple(self._routes)

    def subscribe(self, callback: Callable[[RoutedCall], None]) -> None:
        """Call `callback` after every routed call, with its outcome and path."""
        self._subscribers.append(callback)

    async def call(
        self,
        capability: str,
        /,
        *args: Any,
        units: float = 1,
        cost: float = 0.0,
        correlation_id: str | None = None,
        **kwargs: Any,
    ) -> Routed[Any]:
        route = self._routes.get(capability)  # not `_route`: a call fewer on every call
        if route is None:
            raise _unknown(capability, self._routes)
        mode = self._mode
        if mode is _MOCK:
            value = await route.mock(*args, **kwargs)
            if self._subscribers:
                self._publish(capability, route, "mode", "mock")
            return Routed(value, "mock", "mode")
        guard = route.guard
        bound = correlation.current()
        cid = correlation_id or bound or guard.new_correlation_id()
        if mode is _HYBRID and guard.breaker.state == OPEN:
            return await self._fallback(route, capability, "circuit_open", cid, args, kwargs)
        try:
            # The guard's own entry, given a `Call`: re-packing for `guard.call` costs 10 %.
            call = Call(route.real, args, kwargs, units, cost, cid, route.ready)
            # A caller's own id, unless already bound, must be bound for the provider to read.
            explicit = correlation_id is not None and correlation_id != bound
            value = await (guard._attempt_bound(call) if explicit else guard._attempt(call))
        except Exception as exc:
            reason = fallback_reason(exc) if mode is _HYBRID else None
            if reason is None:
                if self._subscribers:
                    self._publish(capability, route, call_outcome(exc), "real")
                raise
            return await self._fallback(route, capability, reason, cid, args, kwargs, exc)
        if self._subscribers:
            self._publish(capability, route, "ok", "real")
        # namedtuple's `_make` builds it in half the time the class call takes.
        return Routed._make((value, "real", None))

    async def serve_mock(
        self,
        capability: str,
        reason: str,
        error: BaseException | None,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Routed[Any]:
        """Serve `capability`'s mock for `reason`, as HYBRID does when the guard refuses.

        For a caller that met the refusal itself before calling (a budget it
        reserves on its own for work that outlives one call); logged and
        published as every fallback is.
        """
        route = self._route(capability)
        cid = correlation.current() or route.guard.new_correlation_id()
        return await self._fallback(route, capability, reason, cid, args, kwargs, error)

    async def _fallback(
        self,
        route: _Route,
        capability: str,
        reason: str,
        correlation_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: BaseException | None = None,
    ) -> Routed[Any]:
        value = await route.mock(*args, **kwargs)
        emit(
            "fallback.served",
            provider=route.guard.name,
            capability=capability,
            reason=reason,
            correlation_id=correlation_id,
            error=type(error).__name__ if error is not None else None,
        )
        if self._subscribers:
            self._publish(capability, route, reason, "mock")
        return Routed(value, "mock", reason)

    def _publish(self, capability: str, route: _Route, outcome: str, path: Path) -> None:
        call = RoutedCall(capability, route.guard.name, outcome, path)
        for callback in self._subscribers:
            try:
                callback(call)
            except Exception as exc:
                # A broken listener must never break the call it reports on.
                emit(
                    "router.subscriber_error",
                    level="ERROR",
                    provider=route.guard.name,
                    capability=capability,
                    subscriber=getattr(callback, "__qualname__", repr(callback)),
                    error=repr(exc),
                )

    def _route(self, capability: str) -> _Route:
        route = self._routes.get(capability)
        if route is None:
            raise _unknown(capability, self._routes)
        return route


def _unknown(capability: str, routes: dict[str, _Route]) -> KeyError:
    known = ", ".join(sorted(routes)) or "none"
    return KeyError(f"unknown capability {capability!r} (registered: {known})")
