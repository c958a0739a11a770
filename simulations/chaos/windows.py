"""The windows where a remote parse's budget and its row disagree, read from a task's frames.

`state.pipeline.remote` changes the budget ledger and the remote parse rows
in separate writes (the ledger may live in Redis), so between two of them
the ledger holds a little more than the rows account for: reserved before
the intent is written, the row failed or dropped before its reservation is
released, the result stored before the reservation is settled at its cost.
Each SQLite statement is a yield point here, so a running task can be
stopped in such a window when a rule looks, and a killed one stays there for
good: its crash table's "the estimate stays charged until the period ends".

`open_windows` finds them by walking a task's chain of awaiting coroutines
for the remote-parse steps that open one, so the spend invariant allows
exactly what a stopped or killed task may hold, and no more. Whether the
write inside the window had committed when the task stopped is not visible
from its frames, so each window may or may not hold its amount.

The budget itself has such windows for every guarded call, outside any
remote parse: `Budget.reserve` charges the ledger before its caller holds
the reservation, and `settle` and `release` close the reservation, write
the ledger, and only then write the usage log. A task killed inside one
leaves the reservation's estimate in the ledger with no usage record (the
estimate, not the actual cost: the two are equal for OpenAI, whose tokens
we count exactly). Those windows are not in a crash table (`documented` is
False); each names the budget's `scope`, so a check of one provider's
money allows only its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import CodeType, CoroutineType
from typing import Any, Final

from providers import LLAMAPARSE
from resilience.budget import Budget, Reservation
from state.pipeline.remote import RemoteParses
from state.store.remote import RemoteJob


@dataclass(frozen=True, slots=True)
class Window:
    """A task stopped where the ledger may hold `usd` more than the rows account for."""

    what: str
    usd: float
    documented: bool
    """Listed in `state.pipeline.remote`'s crash table."""
    scope: str = LLAMAPARSE
    """The budget whose ledger may hold `usd` more than its usage log or rows say."""


def _reserved(scope: Mapping[str, Any]) -> float:
    row = scope.get("row")
    return float((row.reservation or {}).get("cost", 0.0)) if isinstance(row, RemoteJob) else 0.0


_STEPS: Final[dict[CodeType, tuple[str, bool]]] = {
    RemoteParses._intend.__code__: ("reserved, before the intent is written", True),
    RemoteParses._finish.__code__: ("stored, before the reservation is settled", True),
    RemoteParses._undo.__code__: ("intent dropped, before its reservation is released", False),
    RemoteParses._fail.__code__: ("row failed, before its reservation is released", False),
}


_BUDGET_STEPS: Final[dict[CodeType, str]] = {
    Budget.reserve.__code__: "reserved, before the caller held the reservation",
    Budget.settle.__code__: "settling, before the usage log recorded it",
    Budget.release.__code__: "releasing, before the usage log recorded it",
}


BUDGET_WINDOWS: Final = frozenset(_BUDGET_STEPS.values())
"""The `what` of the budget's own windows."""


def _budget_window(code: CodeType, scope: Mapping[str, Any]) -> Window | None:
    budget, reservation = scope.get("self"), scope.get("reservation")
    if not isinstance(budget, Budget):
        return None
    if code is Budget.reserve.__code__:
        usd = float(scope.get("cost", 0.0))
    else:
        usd = reservation.cost if isinstance(reservation, Reservation) else 0.0
    return Window(_BUDGET_STEPS[code], usd, False, budget.scope)


def _amount(code: CodeType, scope: Mapping[str, Any]) -> float:
    if code is RemoteParses._intend.__code__:
        return float(scope.get("estimate", 0.0))
    if code is RemoteParses._finish.__code__:
        return _reserved(scope) - float(getattr(scope.get("parsed"), "cost_usd", 0.0))
    return _reserved(scope)


def open_windows(tasks: Iterable[asyncio.Task[Any]]) -> list[Window]:
    """The windows `tasks` are stopped in (at most one per task: its innermost remote-parse
    step, else the budget step it is in)."""
    found = []
    for task in tasks:
        window = None
        remote = False
        coro: object = task.get_coro()
        while isinstance(coro, CoroutineType) and coro.cr_frame is not None:
            frame = coro.cr_frame
            step = _STEPS.get(frame.f_code)
            if step is not None:
                window = Window(step[0], _amount(frame.f_code, frame.f_locals), step[1])
                remote = True
            elif frame.f_code in _BUDGET_STEPS and not remote:
                window = _budget_window(frame.f_code, frame.f_locals)
            coro = coro.cr_await
        if window is not None:
            found.append(window)
    return found


def sums(windows: Iterable[Window]) -> set[float]:
    """Every total a subset of `windows` may hold (rounded to a nano-dollar)."""
    totals = {0.0}
    for window in windows:
        totals |= {round(total + window.usd, 9) for total in totals}
    return totals


__all__ = ["BUDGET_WINDOWS", "Window", "open_windows", "sums"]
