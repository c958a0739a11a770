"""Where Breakwater gets its time.

Durations come from the running event loop (`loop.time()`), so a
virtual-time loop speeds every timer up without touching our code. Calendar
time (log timestamps, budget periods) comes from `wall_time`, the one place
that reads the system clock; on a loop that carries a `wall_epoch` (the
virtual loop does) it is derived from the loop clock instead, so simulated
days roll over in simulated time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""A function returning seconds: loop seconds for durations, epoch seconds for wall time."""


def loop_time() -> float:
    """The running loop's clock. Must be called from inside the loop."""
    return asyncio.get_running_loop().time()


def wall_time() -> float:
    """Seconds since the Unix epoch, UTC.

    On a loop with a `wall_epoch` attribute this is `wall_epoch + loop.time()`,
    which makes log timestamps and budget periods follow virtual time.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    epoch: float | None = getattr(loop, "wall_epoch", None)
    if loop is not None and epoch is not None:
        return epoch + loop.time()
    return time.time()  # clock-ok: the single wall-clock read in Breakwater


def iso_utc(epoch_s: float) -> str:
    """Format epoch seconds as ISO-8601 UTC with millisecond precision."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
