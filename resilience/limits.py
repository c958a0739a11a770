"""What a guarded call is, and the limits it must pass before it goes out.

A `Call` is one guarded call as the guard carries it through its attempts:
the function and its arguments, what it takes from the buckets (`units`)
and the budget (`cost`), and the correlation id its events are logged with.

`Limits` is what the guard asks before each attempt and tells after it. It
has two implementations with one contract, so one attempt body serves both:

* `LocalLimits`: this process's request and token buckets and its `Budget`;
* `resilience.shared.gate.RedisGate`: the same, kept in Redis for every
  worker, admitted in one script per call.

The guard alone tells the limits about a 429 (`pause`); provider clients
only pass the server's rate-limit headers on (`resilience.bucket.Throttle`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from resilience.bucket import TokenBucket
from resilience.budget import Budget, Reservation

T = TypeVar("T")


# Not frozen: a frozen dataclass costs four times as much to build, once per call.
@dataclass(slots=True, eq=False)
class Call(Generic[T]):
    """One guarded call: `fn(*args, **kwargs)` and what it costs the limits."""

    fn: Callable[..., Awaitable[T]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    units: float
    """Taken from the token bucket (tokens, pages), once per attempt."""
    cost: float
    """Reserved from the budget, in dollars, once per attempt."""
    correlation_id: str
    ready: Callable[[], Awaitable[None]] | None = None
    """A wait of the call's own, before the limits and the breaker's admission, once per
    attempt (LlamaParse's upload throttle): so a call that waited there is admitted, or
    refused by a breaker that opened meanwhile, like one that waited for a bucket."""


class Limits(Protocol):
    """Buckets and a budget in front of a provider, as the guard uses them.

    `admit` takes from the buckets and reserves the budget in one step, so a
    shared store pays one round trip per call, not one per limit. The
    reservation it returns is settled, released or kept, exactly once, with
    the budget that made it (`Reservation.budget`).
    """

    budget: Budget | None

    @property
    def reachable(self) -> bool:
        """False while the limits' store cannot be reached and a fallback serves."""
        ...

    def admit(
        self, units: float, cost: float, correlation_id: str, max_wait_s: float | None, now: float
    ) -> Reservation | Awaitable[Reservation | None] | None:
        """Wait for the buckets, then reserve `cost`; None when there is no budget.

        What needs no waiting may come back as it is, not as an awaitable: the
        guard awaits only an awaitable.

        Raises `RateLimited` when the wait would pass `max_wait_s`, and
        `BudgetExceeded` when the budget refuses. `now` is the loop's time as
        the attempt begins, read once for all: finding the loop is a system call.
        """
        ...

    async def pause(self, retry_after_s: float) -> None:
        """A 429: grant nothing for `retry_after_s`, then ramp up from empty."""
        ...


class LocalLimits:
    """This process's buckets and budget; any of them may be None (no such limit).

    `name` is the provider a reservation is charged to.
    """

    def __init__(
        self,
        name: str,
        requests: TokenBucket | None = None,
        tokens: TokenBucket | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.name = name
        self.requests = requests
        self.tokens = tokens
        self.budget = budget

    def __repr__(self) -> str:
        return f"LocalLimits({self.name!r})"

    @property
    def reachable(self) -> bool:
        """Always: nothing of it lives outside this process."""
        return True

    def admit(
        self, units: float, cost: float, correlation_id: str, max_wait_s: float | None, now: float
    ) -> Reservation | Awaitable[Reservation | None] | None:
        # A plain method: a call that finds its tokens (most do) and an in-memory
        # ledger costs no coroutine at all (see Budget._reserve_at_once).
        requests, tokens = self.requests, self.tokens
        if requests is not None and not requests.try_acquire(1, now):
            return self._admit_waiting(requests, units, cost, correlation_id, max_wait_s)
        if tokens is not None and not tokens.try_acquire(units, now):
            return self._admit_waiting(None, units, cost, correlation_id, max_wait_s)
        budget = self.budget
        if budget is None:
            return None
        reservation = budget._reserve_at_once(self.name, cost, 1, correlation_id)
        if reservation is not None:
            return reservation
        return budget.reserve(self.name, cost, correlation_id=correlation_id)

    async def pause(self, retry_after_s: float) -> None:
        until = asyncio.get_running_loop().time() + retry_after_s
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.pause_until(until)

    async def _admit_waiting(
        self,
        requests: TokenBucket | None,
        units: float,
        cost: float,
        correlation_id: str,
        max_wait_s: float | None,
    ) -> Reservation | None:
        """`admit` for a call that must wait: for `requests` first, when given."""
        if requests is not None:
            await requests.acquire(1, max_wait_s)
        if self.tokens is not None:
            await self.tokens.acquire(units, max_wait_s)
        budget = self.budget
        if budget is None:
            return None
        return await budget.reserve(self.name, cost, correlation_id=correlation_id)
