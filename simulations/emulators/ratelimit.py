"""The two limiters the providers use, on the loop clock, and Go-style durations.

OpenAI documents its limits as continuously replenishing ("x-ratelimit-reset-*:
the time until the rate limit resets to its initial state"), so `MinuteBucket`
is a token bucket holding a minute's allowance and refilling at limit/60 per
second. LlamaCloud documents "15 requests per 10-second window", read here as
a sliding window (`SlidingWindow`): an upload is refused while `limit` others
were accepted in the last `window_s` seconds.

These are deliberately separate from `resilience.bucket`: an emulator that
shared the client's limiter would agree with the client's bugs.
"""

from __future__ import annotations

import math
from collections import deque


class MinuteBucket:
    """`limit` units per minute: holds at most `limit`, refills at `limit / 60` per second."""

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self._rate = limit / 60.0
        self._level = float(limit)
        self._stamp = now

    def level(self, now: float) -> float:
        if now > self._stamp:
            self._level = min(float(self.limit), self._level + (now - self._stamp) * self._rate)
            self._stamp = now
        return self._level

    def wait_for(self, units: int, now: float) -> float:
        """Seconds until `units` are available (0 if they are now)."""
        return max(0.0, (units - self.level(now)) / self._rate)

    def take(self, units: int, now: float) -> None:
        self._level = self.level(now) - units

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self.level(now)) / self._rate


class SlidingWindow:
    """At most `limit` acceptances in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._accepted: deque[float] = deque()

    def try_accept(self, now: float) -> float | None:
        """None if accepted; otherwise the seconds until a slot frees up."""
        while self._accepted and self._accepted[0] <= now - self.window_s:
            self._accepted.popleft()
        if len(self._accepted) < self.limit:
            self._accepted.append(now)
            return None
        return self._accepted[0] + self.window_s - now


def go_duration(seconds: float) -> str:
    """`seconds` as OpenAI writes durations (Go's format): `20ms`, `2.812s`, `6m0s`, `1h0m0s`.

    Rounded up to the millisecond, so a client that waits this long is not early.
    """
    millis = max(0, math.ceil(seconds * 1000.0 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
