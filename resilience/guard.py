"""The guard: one pipeline that every provider call goes through.

Each attempt, in order (Polly-style composition):

1. the breaker: an open breaker rejects at once, before anything waits;
2. the call's own wait, if it has one (`Call.ready`: LlamaParse's upload
   throttle), then the limits (`resilience.limits`): the request bucket, the
   token bucket (`units`), then the budget, which reserves `cost` or raises
   `BudgetExceeded`;
3. admission by the breaker (a half-open probe permit, if half-open), after
   every wait, so a probe permit is never held while a call waits;
4. the call, timed and recorded by the breaker.

Retries (on `backoff`) wrap the whole attempt, so every retry goes through
the limits and the breaker again. A 429 pauses the buckets until its
Retry-After; the guard is the one place that does. After the call the
budget is settled: a value with a `cost_usd` attribute replaces the estimate
(and its `tokens` are recorded); a failure with a known outcome (the provider
answered) is refunded; an unknown outcome (a timeout, a dropped connection,
a cancellation) keeps its estimate charged.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from backoff.types import Details

from resilience import correlation
from resilience.breaker import Breaker, BreakerPolicy
from resilience.bucket import TokenBucket
from resilience.budget import Budget, Reservation
from resilience.errors import CircuitOpen, ErrorClass, ProviderError, classify
from resilience.events import emit
from resilience.limits import Call, Limits, LocalLimits
from resilience.retry import RetryPolicy, is_retryable

T = TypeVar("T")
P = ParamSpec("P")

Amount = float | Callable[..., float]
"""A call's `units` or `cost`: a number, or a function of the call's arguments."""


def _rate_limit_pause_s(exc: BaseException) -> float | None:
    """How long a 429 asked every caller to wait (its Retry-After), or None if it was not one."""
    if (
        isinstance(exc, ProviderError)
        and exc.retry_after_s is not None
        and classify(exc) is ErrorClass.RATE_LIMITED
    ):
        return exc.retry_after_s
    return None


def _amount(amount: Amount, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    return amount(*args, **kwargs) if callable(amount) else amount


def _outcome_known(exc: BaseException) -> bool:
    """Did the provider answer? Only then do we know it did not bill us."""
    return isinstance(exc, ProviderError) and exc.status is not None


class Guard:
    """Breaker, buckets, retries and budget around one provider.

    `requests` limits calls per second and `tokens` limits `units` per second;
    either may be None. `max_wait_s` bounds how long a call waits for a bucket
    before failing fast with `RateLimited` (None waits as long as it takes).
    `shared` replaces the buckets and the budget with limits kept for many
    processes (then `requests` and `tokens` stay None, and `budget` is theirs).
    """

    def __init__(
        self,
        name: str,
        breaker: BreakerPolicy | Breaker | None = None,
        requests: TokenBucket | None = None,
        tokens: TokenBucket | None = None,
        retry: RetryPolicy | None = None,
        budget: Budget | None = None,
        *,
        max_wait_s: float | None = None,
        shared: Limits | None = None,
    ) -> None:
        if shared is not None and any(x is not None for x in (requests, tokens, budget)):
            raise ValueError("a guard with shared limits takes no local buckets or budget")
        self.name = name
        self.breaker = breaker if isinstance(breaker, Breaker) else Breaker(name, breaker)
        self.requests = requests
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.shared = shared
        self.limits: Limits = (
            shared if shared is not None else LocalLimits(name, requests, tokens, budget)
        )
        self.max_wait_s = max_wait_s
        self._ids = itertools.count(1)
        self._retrying = self.retry.after_first_failure(self._again, self._on_backoff)

    def __repr__(self) -> str:
        return f"Guard({self.name!r}, breaker={self.breaker.state!r})"

    @property
    def budget(self) -> Budget | None:
        """The budget calls are charged to (the shared one, with shared limits)."""
        return self.limits.budget

    def new_correlation_id(self) -> str:
        return f"{self.name}-{next(self._ids)}"

    def call(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        units: float = 1,
        cost: float = 0.0,
        correlation_id: str | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]:
        """Run `fn(*args, **kwargs)` through the guard: `await guard.call(...)`.

        Raises `CircuitOpen`, `RateLimited` or `BudgetExceeded` when the guard
        refuses, or the provider's last error when retries end. (A plain method
        returning `_attempt`'s coroutine, so the call costs one coroutine, not two.)
        """
        bound = correlation.current()
        if correlation_id is None or correlation_id == bound:
            cid = bound or self.new_correlation_id()
            return self._attempt(Call(fn, args, kwargs, units, cost, cid))
        return self._attempt_bound(Call(fn, args, kwargs, units, cost, correlation_id))

    def protect(
        self, *, units: Amount = 1, cost: Amount = 0.0
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
        """Decorator form, keeping the function's signature: `@guard.protect(cost=0.002)`.

        `units` and `cost` are numbers, or functions called with the call's
        own arguments, e.g. `units=lambda batch: batch.tokens`.
        """

        def decorator(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
                amounts = _amount(units, args, kwargs), _amount(cost, args, kwargs)
                cid = correlation.current() or self.new_correlation_id()
                call = Call(fn, args, kwargs, *amounts, cid)
                return await self._attempt(call)

            return guarded

        return decorator

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """`@guard`: `protect()` with one unit and no cost per call."""
        return self.protect()(fn)

    async def _attempt(self, call: Call[T], first: bool = True) -> T:
        """One try through limits and breaker; the first hands a retryable failure to retries.

        Retries start only after the first try failed, so success pays for no
        retry machinery, and each retry is this same attempt (`first=False`).
        """
        breaker = self.breaker
        if breaker.rejecting:
            raise CircuitOpen(self.name, breaker.retry_after_s())
        limits = self.limits
        loop = asyncio.get_running_loop()
        try:
            if call.ready is not None:
                await call.ready()
            now = loop.time()
            admitted = limits.admit(
                call.units, call.cost, call.correlation_id, self.max_wait_s, now
            )
            reservation = (
                admitted
                if admitted is None or isinstance(admitted, Reservation)
                else await admitted
            )
            ticket = breaker.acquire()
            if ticket is None:  # it opened, or its probes went out, while this call waited
                if reservation is not None:
                    await reservation.budget.release(reservation, error_class="circuit_open")
                raise CircuitOpen(self.name, breaker.retry_after_s())
            # Only slow-call detection reads `started`: without it the clock is not read again.
            started = loop.time() if breaker.policy.slow_call_s is not None else now
            # Awaited here rather than in `breaker.execute`: one coroutine fewer per call.
            try:
                pending = call.fn(*call.args, **call.kwargs)
                result = await (breaker.bounded(pending) if ticket.probe else pending)
            except BaseException as exc:
                breaker.finish(ticket, exc, started, loop.time(), call.correlation_id)
                pause_s = _rate_limit_pause_s(exc)
                if pause_s is not None:
                    await limits.pause(pause_s)
                if reservation is not None:
                    await _settle_failure(reservation, exc)
                raise
            breaker.finish(ticket, None, started, loop.time(), call.correlation_id)
            if reservation is not None:
                actual: float | None = getattr(result, "cost_usd", None)
                used: int = getattr(result, "tokens", 0)
                budget = reservation.budget
                if not budget._settle_at_once(reservation, actual, used):
                    await budget.settle(reservation, actual, tokens=used)
            return result
        except Exception as exc:
            if not first or self.retry.max_attempts == 1 or not is_retryable(exc):
                raise
            failed = exc
        retried: T = await self._retrying(call, failed)
        return retried

    async def _attempt_bound(self, call: Call[T]) -> T:
        """`_attempt` with the call's own correlation id bound, for the provider to read.

        Only a caller's explicit id needs it: one taken from the context is
        bound already, and a fresh one names the guard's events alone (its
        provider requests carry no id), so the common paths pay nothing.
        """
        with correlation.bound(call.correlation_id):
            return await self._attempt(call)

    def _again(self, call: Call[T]) -> Coroutine[Any, Any, T]:
        """A retry: the same attempt, which leaves further retries to `backoff`."""
        return self._attempt(call, first=False)

    def _on_backoff(self, call: Call[Any], details: Details) -> None:
        exc = details.get("exception")
        error = exc if isinstance(exc, BaseException) else None
        emit(
            "guard.retry",
            provider=self.name,
            correlation_id=call.correlation_id,
            attempt=details["tries"],
            wait_s=round(details["wait"], 6),
            error=type(error).__name__,
            error_class=classify(error) if error is not None else None,
        )


async def _settle_failure(reservation: Reservation, exc: BaseException) -> None:
    """Refund a call the provider answered with an error; keep the charge when unknown."""
    error_class = "cancelled" if isinstance(exc, asyncio.CancelledError) else classify(exc)
    if _outcome_known(exc):
        await reservation.budget.release(reservation, error_class=error_class)
    else:
        await reservation.budget.keep(reservation, error_class=error_class)
