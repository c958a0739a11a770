"""A token bucket on the loop clock, with FIFO waiters and server-driven pauses.

The bucket starts full with `capacity` units and refills continuously at
`refill_per_s`. Grants only ever spend units the bucket holds, which is
what makes the bound exact: over any interval of length d, at most
`capacity + refill_per_s * d` units are granted.

Waiters are served strictly in arrival order by one timer that wakes for the
head of the queue, so a large request is never starved by small ones. A 429's
Retry-After pauses the bucket (`pause_until`), and the provider's
x-ratelimit headers can pull our level down to what the server reports
(`sync`).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from resilience.errors import RateLimited


class Throttle(Protocol):
    """What a provider client tells a rate limiter: the server's rate-limit headers.

    `TokenBucket` is one; a shared limiter (`resilience.shared.gate`) gives
    each client an object of its own that passes the feedback on to Redis.
    A 429 is not in it: the guard alone pauses the buckets for one.
    """

    @property
    def capacity(self) -> float:
        """The most one call can take: a client keeps its requests under it."""
        ...

    def sync(self, remaining: float | None, reset_after_s: float | None) -> None:
        """The server says `remaining` units are left (x-ratelimit-remaining-*)."""
        ...


@dataclass(slots=True)
class _Waiter:
    units: float
    future: asyncio.Future[None]


class TokenBucket:
    """`capacity` units, refilled at `refill_per_s` units per second of loop time."""

    def __init__(self, capacity: float, refill_per_s: float, *, name: str = "bucket") -> None:
        if capacity <= 0:
            raise ValueError("TokenBucket capacity must be positive")
        if refill_per_s <= 0:
            raise ValueError("TokenBucket refill_per_s must be positive")
        self.name = name
        self.capacity = float(capacity)
        self.refill_per_s = float(refill_per_s)
        self._level = self.capacity
        self._stamp: float | None = None  # loop time `_level` was measured at
        self._paused_until = 0.0
        self._waiters: deque[_Waiter] = deque()
        self._queued = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"TokenBucket({self.name!r}, capacity={self.capacity:g}, "
            f"refill_per_s={self.refill_per_s:g})"
        )

    # -- reading -----------------------------------------------------------

    def level(self) -> float:
        """Units available now (negative never; zero while paused)."""
        now = asyncio.get_running_loop().time()
        self._refill(now)
        return self._level if now >= self._paused_until else 0.0

    @property
    def paused_until(self) -> float:
        return self._paused_until

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- taking ------------------------------------------------------------

    def try_acquire(self, n: float = 1, now: float | None = None) -> bool:
        """Take `n` units if they are there now and nobody is queued. Never waits.

        `now` is the running loop's time, for a caller that has just read it:
        the guard reads it once for both of its buckets, because finding the
        running loop is a system call (a pid check) on every read.
        """
        if not 0 < n <= self.capacity:
            self._check(n)
        if now is None:
            now = asyncio.get_running_loop().time()
        if self._waiters or now < self._paused_until:
            return False
        if now != self._stamp:
            self._refill(now)
        level = self._level
        if level >= n:
            self._level = level - n if level > n else 0.0  # never below zero, without max()
            return True
        return False

    async def acquire(self, n: float = 1, max_wait: float | None = None) -> None:
        """Take `n` units, waiting in FIFO order.

        If the wait would exceed `max_wait` seconds, raise `RateLimited` at once
        (with `retry_after_s` set to the estimated wait) instead of waiting.
        """
        if self.try_acquire(n):
            return
        loop = asyncio.get_running_loop()
        wait = self.estimate_wait(n)
        if max_wait is not None and wait > max_wait:
            raise RateLimited(self.name, wait, f"needs {n:g} units, would wait {wait:.3f}s")
        waiter = _Waiter(n, loop.create_future())
        self._waiters.append(waiter)
        self._queued += n
        self._schedule(loop)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if not waiter.future.cancelled():
                # Granted just as we were cancelled: the units were never used.
                self._level = min(self.capacity, self._level + n)
            elif waiter in self._waiters:  # `_schedule` may have dropped it already
                self._waiters.remove(waiter)
                self._queued -= n
            self._schedule(loop)
            raise

    def estimate_wait(self, n: float = 1) -> float:
        """Seconds until `n` units would be granted behind the current queue."""
        self._check(n)
        now = asyncio.get_running_loop().time()
        start = max(now, self._paused_until)
        self._refill(now)
        need = self._queued + n - self._level
        return max(0.0, start - now + need / self.refill_per_s) if need > 0 else start - now

    # -- feedback from the server -----------------------------------------

    def pause_until(self, t: float) -> None:
        """Grant nothing before loop time `t`, and restart from empty after it.

        Restarting empty means a 429 is followed by a smooth ramp at the refill
        rate, not by a burst of `capacity` the moment the pause ends.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if t <= max(now, self._paused_until):
            return
        self._refill(now)
        self._level = min(self._level, 0.0)
        self._stamp = t
        self._paused_until = t
        self._schedule(loop)

    def sync(self, remaining: float | None, reset_after_s: float | None) -> None:
        """Align with a server report: `remaining` units left, full again in `reset_after_s`.

        The level only ever moves down (never trust a header to grant more than
        we think we have), and a server at zero pauses us until its reset.
        Missing or negative values are ignored.
        """
        if remaining is None or remaining < 0:
            return
        now = asyncio.get_running_loop().time()
        self._refill(now)
        if remaining < self._level:
            self._level = float(remaining)
        if remaining <= 0 and reset_after_s is not None and reset_after_s > 0:
            self.pause_until(now + reset_after_s)

    # -- internals ---------------------------------------------------------

    def _check(self, n: float) -> None:
        if n <= 0:
            raise ValueError(f"{self.name}: units must be positive, got {n!r}")
        if n > self.capacity:
            raise ValueError(
                f"{self.name}: {n:g} units can never be granted by a bucket of {self.capacity:g}"
            )

    def _refill(self, now: float) -> None:
        stamp = self._stamp
        if stamp is None:
            self._stamp = now
        elif now > stamp:
            level = self._level + (now - stamp) * self.refill_per_s
            self._level = level if level < self.capacity else self.capacity
            self._stamp = now

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Grant what the head of the queue can have now; set a timer for the rest."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = loop.time()
        waiters = self._waiters
        while waiters and waiters[0].future.done():
            self._queued -= waiters.popleft().units  # cancelled before we got to it
        if not waiters:
            return
        if now >= self._paused_until:
            self._refill(now)
            # Never a unit early: a server bucket with no tolerance would answer 429.
            while waiters and self._level >= waiters[0].units:
                head = waiters.popleft()
                self._queued -= head.units
                if head.future.done():
                    continue
                self._level = max(0.0, self._level - head.units)
                head.future.set_result(None)
            if not waiters:
                return
            due = now + (waiters[0].units - self._level) / self.refill_per_s
            # A deficit below the clock's resolution must still move time forward.
            due = max(due, math.nextafter(now, math.inf))
        else:
            due = self._paused_until
        self._timer = loop.call_at(due, self._schedule, loop)
