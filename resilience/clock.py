"""Where Breakwater gets its time.

Durations come from the running event loop (`loop.time()`), so a
virtual-time loop speeds every timer up without touching our code. Calendar
time (log timestamps, budget periods) comes from `wall_time`, the one place
that reads the system clock; while a loop with a wall epoch runs (the virtual
loop registers itself with `follow_loop`) it is derived from that loop's
clock instead, so simulated days roll over in simulated time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol

Clock = Callable[[], float]
"""A function returning seconds: loop seconds for durations, epoch seconds for wall time."""


def loop_time() -> float:
    """The running loop's clock. Must be called from inside the loop."""
    return asyncio.get_running_loop().time()


class EpochLoop(Protocol):
    """A loop whose wall time is `wall_epoch + time()`, and whose clock can be held."""

    wall_epoch: float

    def time(self) -> float: ...

    def hold(self, delta: int) -> None: ...


class _Running(threading.local):
    """The epoch loop running on each thread.

    A thread-local rather than asyncio.get_running_loop(), which makes a
    getpid() system call on every use; the class-level default keeps reads of
    an unset thread off getattr's slow missing-attribute path.
    """

    loop: EpochLoop | None = None


_running = _Running()


@contextmanager
def follow_loop(loop: EpochLoop) -> Iterator[None]:
    """While the block runs, `wall_time` on this thread is `loop.wall_epoch + loop.time()`."""
    previous = _running.loop
    _running.loop = loop
    try:
        yield
    finally:
        _running.loop = previous


def wall_time() -> float:
    """Seconds since the Unix epoch, UTC.

    Inside `follow_loop(loop)` (the virtual loop does this while it runs) it is
    `loop.wall_epoch + loop.time()`, so timestamps and budget periods follow
    virtual time.
    """
    loop = _running.loop
    if loop is not None:
        return loop.wall_epoch + loop.time()
    return time.time()  # clock-ok: the single wall-clock read in Breakwater


def iso_utc(epoch_s: float) -> str:
    """Format epoch seconds as ISO-8601 UTC with millisecond precision."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def thread_work() -> Iterator[None]:
    """Mark an await on work another thread does for us (a database call, say).

    On a virtual-time loop the clock must not jump while such work runs, or
    timeouts fire before the thread answers, in real time. Libraries with
    their own threads (aiosqlite) are wrapped in this; on any other loop it
    does nothing.
    """
    loop = _running.loop
    if loop is None:
        yield
        return
    loop.hold(+1)
    try:
        yield
    finally:
        loop.hold(-1)
