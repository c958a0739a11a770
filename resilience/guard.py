"""The guard: one pipeline that every provider call goes through.

Each attempt, in order (Polly-style composition):

1. the breaker: an open breaker rejects at once, before anything waits;
2. the request bucket, then the token bucket (`units`);
3. admission by the breaker (a half-open probe permit, if half-open);
4. the budget: `cost` is reserved, or `BudgetExceeded` is raised;
5. the call, timed and recorded by the breaker.

Retries (on `backoff`) wrap the whole attempt, so every retry goes through
the buckets and the breaker again. A 429 pauses both buckets until its
Retry-After. After the call the budget is settled: a value with a
`cost_usd` attribute replaces the estimate (and its `tokens` are recorded);
a failure with a known outcome (the provider answered) is refunded; an
unknown outcome (a timeout, a dropped connection, a cancellation) keeps its
estimate charged.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from backoff.types import Details

from resilience.breaker import Breaker, BreakerPolicy
from resilience.bucket import TokenBucket
from resilience.budget import Budget, Reservation
from resilience.errors import CircuitOpen, ErrorClass, ProviderError, classify
from resilience.events import emit
from resilience.retry import RetryPolicy, is_retryable

T = TypeVar("T")


class SharedLimits(Protocol):
    """Buckets and a budget shared with other processes (`resilience.shared.gate.RedisGate`).

    `admit` takes from the buckets and reserves the budget in one step, so a
    shared store pays one round trip per call, not one per limit.
    """

    budget: Budget | None

    @property
    def reachable(self) -> bool:
        """False while the shared store cannot be reached and a fallback serves."""
        ...

    async def admit(
        self, units: float, cost: float, correlation_id: str, max_wait_s: float | None
    ) -> Reservation | None: ...

    async def settle(
        self, reservation: Reservation, actual_cost: float | None, *, tokens: int
    ) -> None: ...

    async def release(self, reservation: Reservation, *, error_class: str) -> None: ...

    async def keep(self, reservation: Reservation, *, error_class: str) -> None: ...

    async def pause(self, retry_after_s: float) -> None: ...


def _rate_limit_pause_s(exc: BaseException) -> float | None:
    """How long a 429 asked every caller to wait (its Retry-After), or None if it was not one."""
    if (
        isinstance(exc, ProviderError)
        and exc.retry_after_s is not None
        and classify(exc) is ErrorClass.RATE_LIMITED
    ):
        return exc.retry_after_s
    return None


def _outcome_known(exc: BaseException) -> bool:
    """Did the provider answer? Only then do we know it did not bill us."""
    return isinstance(exc, ProviderError) and exc.status is not None


class Guard:
    """Breaker, buckets, retries and budget around one provider.

    `requests` limits calls per second and `tokens` limits `units` per second;
    either may be None. `max_wait_s` bounds how long a call waits for a bucket
    before failing fast with `RateLimited` (None waits as long as it takes).
    `shared` replaces the buckets and the budget with ones kept for many
    processes (then `budget` is the shared one, and `requests`, `tokens` None).
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
        shared: SharedLimits | None = None,
    ) -> None:
        if shared is not None and any(x is not None for x in (requests, tokens, budget)):
            raise ValueError("a guard with shared limits takes no local buckets or budget")
        self.name = name
        self.breaker = breaker if isinstance(breaker, Breaker) else Breaker(name, breaker)
        self.requests = requests
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.budget = shared.budget if shared is not None else budget
        self.shared = shared
        self.max_wait_s = max_wait_s
        # One attempt, chosen once here so the local hot path never asks which.
        self._try_once: Callable[..., Coroutine[Any, Any, Any]] = (
            self._attempt if shared is None else functools.partial(self._attempt_shared, shared)
        )
        self._ids = itertools.count(1)
        self._retrying = self.retry.after_first_failure(self._retry, self._on_backoff)

    def __repr__(self) -> str:
        return f"Guard({self.name!r}, breaker={self.breaker.state!r})"

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
        returning `run`'s coroutine, so the call costs one coroutine, not two.)
        """
        return self.run(fn, args, kwargs, units, cost, correlation_id)

    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        units: float = 1,
        cost: float = 0.0,
        correlation_id: str | None = None,
    ) -> T:
        """`call` with the arguments already packed, as the router holds them."""
        cid = correlation_id or self.new_correlation_id()
        kwargs = kwargs if kwargs is not None else {}
        if self.breaker.rejecting:
            raise CircuitOpen(self.name, self.breaker.retry_after_s())
        try:
            result: T = await self._try_once(fn, args, kwargs, units, cost, cid)
        except Exception as exc:
            if self.retry.max_attempts == 1 or not is_retryable(exc):
                raise
            first = exc
        else:
            return result
        retried: T = await self._retrying(fn, args, kwargs, units, cost, cid, replay=[first])
        return retried

    def decorate(
        self, *, units: float = 1, cost: float = 0.0
    ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
        """Decorator form: `@guard.decorate(cost=0.002)` (or plain `@guard`)."""

        def decorator(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
            @functools.wraps(fn)
            async def guarded(*args: Any, **kwargs: Any) -> T:
                return await self.call(fn, *args, units=units, cost=cost, **kwargs)

            return guarded

        return decorator

    def __call__(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        return self.decorate()(fn)

    async def _retry(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        units: float,
        cost: float,
        cid: str,
    ) -> Any:
        """A later attempt: like the first (see `call`), refused at once by an open breaker."""
        if self.breaker.rejecting:
            raise CircuitOpen(self.name, self.breaker.retry_after_s())
        return await self._try_once(fn, args, kwargs, units, cost, cid)

    async def _attempt(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        units: float,
        cost: float,
        cid: str,
    ) -> Any:
        """One try through buckets, breaker and budget. The caller saw the breaker not open."""
        breaker = self.breaker
        # Finding the running loop costs a system call, so it is found once per attempt.
        loop = asyncio.get_running_loop()
        now = loop.time()
        # try_acquire first: most calls find tokens and need no coroutine to wait.
        requests, tokens = self.requests, self.tokens
        if requests is not None and not requests.try_acquire(1, now):
            await requests.acquire(1, self.max_wait_s)
            now = loop.time()  # time passed while it waited
        if tokens is not None and not tokens.try_acquire(units, now):
            await tokens.acquire(units, self.max_wait_s)
        ticket = breaker.acquire()
        if ticket is None:
            raise CircuitOpen(self.name, breaker.retry_after_s())
        budget = self.budget
        reservation: Reservation | None = None
        answers_now = budget is not None and budget.answers_now
        if budget is not None:
            try:
                if answers_now:  # an in-memory ledger: no coroutine needed
                    reservation = budget.reserve_now(self.name, cost, correlation_id=cid)
                else:
                    reservation = await budget.reserve(self.name, cost, correlation_id=cid)
            except BaseException:
                breaker.release(ticket)
                raise
            if not answers_now and not breaker.admits(ticket):
                # Others tripped the breaker while this call waited for the ledger.
                breaker.release(ticket)
                await budget.release(reservation, error_class="circuit_open")
                raise CircuitOpen(self.name, breaker.retry_after_s())
        # Only slow-call detection reads `started`, so without it the clock is not read again.
        started = loop.time() if breaker.policy.slow_call_s is not None else now
        # Awaited here rather than in `breaker.execute`: one coroutine fewer per call.
        try:
            call = fn(*args, **kwargs)
            result = await (breaker.bounded(call) if ticket.probe else call)
        except BaseException as exc:
            breaker.finish(ticket, exc, started, loop.time(), cid)
            pause_s = _rate_limit_pause_s(exc)
            if pause_s is not None:
                self._pause_buckets(pause_s)
            if budget is not None and reservation is not None:
                await _settle_failure(budget, reservation, exc)
            raise
        breaker.finish(ticket, None, started, loop.time(), cid)
        if budget is not None and reservation is not None:
            actual: float | None = getattr(result, "cost_usd", None)
            used: int = getattr(result, "tokens", 0)
            if answers_now:
                budget.settle_now(reservation, actual, tokens=used)
            else:
                await budget.settle(reservation, actual, tokens=used)
        return result

    async def _attempt_shared(
        self,
        shared: SharedLimits,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        units: float,
        cost: float,
        cid: str,
    ) -> Any:
        """`_attempt` with shared limits: one `admit` for buckets and budget, then the breaker.

        The breaker comes after the (possibly waiting) admission, as after the
        local buckets, so a probe permit is never held while a call waits.
        """
        reservation = await shared.admit(units, cost, cid, self.max_wait_s)
        breaker = self.breaker
        ticket = breaker.acquire()
        if ticket is None:
            if reservation is not None:
                await shared.release(reservation, error_class="circuit_open")
            raise CircuitOpen(self.name, breaker.retry_after_s())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            call = fn(*args, **kwargs)
            result = await (breaker.bounded(call) if ticket.probe else call)
        except BaseException as exc:
            breaker.finish(ticket, exc, started, loop.time(), cid)
            pause_s = _rate_limit_pause_s(exc)
            if pause_s is not None:
                await shared.pause(pause_s)
            if reservation is not None:
                await _settle_failure(shared, reservation, exc)
            raise
        breaker.finish(ticket, None, started, loop.time(), cid)
        if reservation is not None:
            actual: float | None = getattr(result, "cost_usd", None)
            await shared.settle(reservation, actual, tokens=getattr(result, "tokens", 0))
        return result

    def _pause_buckets(self, pause_s: float) -> None:
        until = asyncio.get_running_loop().time() + pause_s
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.pause_until(until)

    def _on_backoff(self, details: Details) -> None:
        exc = details.get("exception")
        error = exc if isinstance(exc, BaseException) else None
        emit(
            "guard.retry",
            provider=self.name,
            correlation_id=details["args"][5],
            attempt=details["tries"],
            wait_s=round(details["wait"], 6),
            error=type(error).__name__,
            error_class=classify(error) if error is not None else None,
        )


async def _settle_failure(
    budget: Budget | SharedLimits, reservation: Reservation, exc: BaseException
) -> None:
    """Refund a call the provider answered with an error; keep the charge when unknown."""
    error_class = "cancelled" if isinstance(exc, asyncio.CancelledError) else classify(exc)
    if _outcome_known(exc):
        await budget.release(reservation, error_class=error_class)
    else:
        await budget.keep(reservation, error_class=error_class)
