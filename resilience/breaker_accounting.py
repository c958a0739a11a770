"""aiobreaker as the breaker's closed-state failure accounting.

`resilience.breaker.Breaker` is a `transitions` machine; this adapter is the
one place that talks to aiobreaker, and its contract with the machine is:

* `record(outcome)` replays one finished call's outcome (None: a success)
  into aiobreaker, which counts it: only errors `classify` calls
  `ErrorClass.FAILURE` are failures; every other outcome is a success, and
  a success zeroes the run of consecutive failures. aiobreaker reports each
  outcome back through `counted(failed)`, once, while `record` runs.
* `record` returns True when that outcome made aiobreaker open on its own
  (`failure_threshold` failures in a row): the machine must `trip`. The
  machine owns all timing, so aiobreaker's own open -> half-open timing
  (which mixes `utcnow()` and `now()`) is never consulted.
* `follow(state)` pushes every change of the machine's state into aiobreaker,
  and `open()` opens it when the machine trips for another reason (the
  failure rate); neither reports back, and afterwards `state` equals the
  machine's. Following a close zeroes aiobreaker's counter.
* Only the machine calls it, and only while closed does it `record`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import aiobreaker
from aiobreaker.state import CircuitBreakerError, CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from resilience.errors import ErrorClass, classify

_AIOBREAKER_STATE: Final = {
    "closed": CircuitBreakerState.CLOSED,
    "open": CircuitBreakerState.OPEN,
    "half_open": CircuitBreakerState.HALF_OPEN,
}
"""aiobreaker's state for each of the machine's (`resilience.breaker.STATES`)."""


class _Replayed(Exception):
    """A finished call's outcome, replayed into aiobreaker for accounting."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


def _replay(outcome: BaseException | None) -> None:
    if outcome is not None:
        raise _Replayed(outcome)


def is_failure(exc: BaseException) -> bool:
    """Whether an outcome counts against the breaker (also judges half-open probes)."""
    original = exc.original if isinstance(exc, _Replayed) else exc
    return classify(original) is ErrorClass.FAILURE


def _not_a_failure(exc: BaseException) -> bool:
    return not is_failure(exc)


class _Listener(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, owner: FailureAccounting) -> None:
        self._owner = owner

    def failure(self, breaker: Any, exception: BaseException) -> None:
        self._owner.counted(True)

    def success(self, breaker: Any) -> None:
        self._owner.counted(False)

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        self._owner._on_state(new.state)


class FailureAccounting:
    """Consecutive failures of one closed breaker, counted by aiobreaker. See the module."""

    def __init__(self, name: str, failure_threshold: int, counted: Callable[[bool], None]) -> None:
        self.counted = counted
        # Kept to read the counter directly: `fail_counter` is a property over it.
        self.storage = CircuitMemoryStorage(CircuitBreakerState.CLOSED)
        """aiobreaker's counter; `storage.counter == 0` is the breaker's per-call fast path."""
        self._aio = aiobreaker.CircuitBreaker(
            fail_max=failure_threshold,
            state_storage=self.storage,
            exclude=[_not_a_failure],
            listeners=[_Listener(self)],
            name=name,
        )
        self._following = False
        self._tripped = False

    @property
    def failures(self) -> int:
        """Failures in a row since the last success or close."""
        return int(self._aio.fail_counter)

    @property
    def state(self) -> str:
        """aiobreaker's view of the state: always the machine's."""
        current = self._aio.current_state
        return next(k for k, v in _AIOBREAKER_STATE.items() if v is current)

    def record(self, outcome: BaseException | None) -> bool:
        """Count one closed-state outcome; True when it made aiobreaker trip."""
        self._tripped = False
        try:
            self._aio.call(_replay, outcome)
        except (_Replayed, CircuitBreakerError):
            pass
        return self._tripped

    def open(self) -> None:
        """Open aiobreaker because the machine tripped on its own account."""
        self._following = True
        try:
            self._aio.open()
        finally:
            self._following = False

    def follow(self, dest: str) -> None:
        """Take the machine's new state. Closing always goes through: it zeroes the counter."""
        state = _AIOBREAKER_STATE[dest]
        if state is not CircuitBreakerState.CLOSED and self._aio.current_state is state:
            return
        self._following = True
        try:
            if state is CircuitBreakerState.OPEN:
                self._aio.open()
            elif state is CircuitBreakerState.HALF_OPEN:
                self._aio.half_open()
            else:
                self._aio.close()
        finally:
            self._following = False

    def _on_state(self, new: CircuitBreakerState) -> None:
        if not self._following and new is CircuitBreakerState.OPEN:
            self._tripped = True
