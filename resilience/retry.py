"""Retries on `backoff`: exponential backoff with full jitter, on the loop clock.

`backoff` runs the loop (tries, give-up, sleeping with `asyncio.sleep`); this
module supplies what it should decide with:

* a wait generator that draws full jitter from a seeded `random.Random`,
  honours the error's `retry_after_s` (up to a cap), and ends the retries
  once `max_elapsed_s` of loop time would be exceeded. backoff's own
  `max_time` reads the system clock, so it is never used;
* a give-up predicate: only failures and 429s are retried. Caller,
  configuration and quota errors end at once, and so does every guard
  rejection: we never retry into an open breaker or a spent budget.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

import backoff
from backoff.types import Details

from resilience.errors import ErrorClass, Rejected, classify

T = TypeVar("T")
A = TypeVar("A")

_RETRYABLE = frozenset({ErrorClass.FAILURE, ErrorClass.RATE_LIMITED})


def is_retryable(exc: BaseException) -> bool:
    """True for failures and 429s; False for rejections and every other error."""
    return not isinstance(exc, Rejected) and classify(exc) in _RETRYABLE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to try again.

    `max_attempts` counts the first try. Delay n (from 1) is drawn uniformly
    from [0, min(max_delay_s, base_delay_s * 2**(n-1))] ("full jitter"), then
    raised to the error's `retry_after_s` if the provider asked for more. A
    `retry_after_s` above `retry_after_cap_s` ends the retries: the provider
    has said the next minutes are lost, so the error (with its retry_after_s)
    goes back to the caller to schedule. `rng` defaults to an OS-seeded
    generator; pass a seeded one for reproducible runs.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_elapsed_s: float | None = None
    retry_after_cap_s: float = 120.0
    rng: random.Random | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("RetryPolicy needs 0 <= base_delay_s <= max_delay_s")
        if self.max_elapsed_s is not None and self.max_elapsed_s <= 0:
            raise ValueError("RetryPolicy.max_elapsed_s must be positive or None")
        if self.retry_after_cap_s < 0:
            raise ValueError("RetryPolicy.retry_after_cap_s must not be negative")

    def delays(self, rng: random.Random) -> Generator[float, BaseException | None, None]:
        """The wait generator `backoff` drives; it is sent each failure in turn."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        exc = yield 0.0  # backoff primes the generator before the first try
        attempt = 0
        while True:
            attempt += 1
            ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
            delay = rng.uniform(0.0, ceiling)
            asked: float | None = getattr(exc, "retry_after_s", None)
            if asked is not None:
                if asked > self.retry_after_cap_s:
                    return
                delay = max(delay, asked)
            limit = self.max_elapsed_s
            if limit is not None and loop.time() - started + delay > limit:
                return
            exc = yield delay

    def after_first_failure(
        self,
        attempt: Callable[[A], Awaitable[T]],
        on_backoff: Callable[[A, Details], None] | None = None,
    ) -> Callable[[A, BaseException], Awaitable[T]]:
        """Build (once) the function that retries `attempt` after its first try failed.

        The caller makes the first try itself and, when it fails with a
        retryable error, calls the result as `retried(subject, error)`.
        backoff receives that error as its own first try, so it waits, counts
        and gives up exactly as if it had run it, and the success path pays
        nothing for retry machinery it did not need. `on_backoff` is told the
        subject with each wait.
        """
        rng = self.rng if self.rng is not None else random.Random()

        async def replay_then_attempt(subject: A, replay: list[BaseException]) -> T:
            if replay:
                raise replay.pop()
            return await attempt(subject)

        def report(details: Details) -> None:
            if on_backoff is not None:
                subject: A = details["args"][0]  # `replay_then_attempt`'s own first argument
                on_backoff(subject, details)

        retrying: Callable[[A, list[BaseException]], Awaitable[T]] = backoff.on_exception(
            self.delays,
            Exception,
            max_tries=self.max_attempts,
            giveup=lambda exc: not is_retryable(exc),
            jitter=None,
            on_backoff=[report],
            logger=None,
            rng=rng,
        )(replay_then_attempt)

        def retried(subject: A, first: BaseException) -> Awaitable[T]:
            return retrying(subject, [first])

        return retried
