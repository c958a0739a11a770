"""A virtual-time asyncio event loop for tests and simulations.

`VirtualTimeLoop` is a normal selector event loop whose clock only moves when
the loop would otherwise wait: when no callback is ready and no I/O is
pending, it jumps straight to the next timer. `asyncio.sleep`, `wait_for`,
`asyncio.timeout`, `call_later` and `backoff`'s sleeps work unchanged, so an
hour of provider latency runs in microseconds.

We wrote this (about 60 lines) rather than depend on looptime or aiotools'
VirtualClock: looptime is built around a pytest plugin and patches the loop
in place, and aiotools patches `loop.time` from a context manager. We want a
loop object that simulations own outright, with a fixed wall-clock epoch so
log timestamps and budget periods are reproducible too.

Real I/O still works: sockets and thread callbacks (`call_soon_threadsafe`)
are polled without blocking before time jumps. Virtual time is exact for
in-process work; with real sockets, time jumps whenever no descriptor is ready
at that instant.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from resilience.clock import follow_loop

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_WALL_EPOCH = 1_767_225_600.0
"""2026-01-01T00:00:00Z: where virtual wall-clock time starts by default."""


class _VirtualSelector(selectors.BaseSelector):
    """Polls the real selector without blocking, and advances virtual time instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self._loop.held:
            # Nothing to jump to, or another thread is working for us and will
            # answer in real time: wait for real I/O (or its call_soon_threadsafe).
            return self._real.select(None)
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Any:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual and jumps to the next timer.

    `wall_epoch` anchors `resilience.clock.wall_time` on this loop:
    wall time is `wall_epoch + loop.time()`.
    """

    def __init__(self, *, start: float = 0.0, wall_epoch: float = DEFAULT_WALL_EPOCH) -> None:
        self._now = start
        self._holds = 0
        self.wall_epoch = wall_epoch
        super().__init__(selector=_VirtualSelector(self))
        # Timers within this of `now` are due; virtual time needs no slack.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    @property
    def held(self) -> bool:
        """True while work on another thread is awaited (see `clock.thread_work`)."""
        return self._holds > 0

    def hold(self, delta: int) -> None:
        """Count one more (+1) or one fewer (-1) piece of thread work in flight."""
        self._holds += delta

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        # Executor work answers in real time: hold the clock until it does.
        future = super().run_in_executor(executor, func, *args)
        self.hold(+1)
        future.add_done_callback(lambda _: self.hold(-1))
        return future

    def run_forever(self) -> None:
        with follow_loop(self):
            super().run_forever()

    def advance(self, seconds: float) -> None:
        """Move virtual time forward. Timers that become due run on the next iteration."""
        if seconds < 0:
            raise ValueError("virtual time cannot go backwards")
        self._now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, wall_epoch: float = DEFAULT_WALL_EPOCH) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop`, like `asyncio.run`."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(wall_epoch=wall_epoch)) as runner:
        return runner.run(main)
