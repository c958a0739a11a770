"""The correlation id of the work in hand: one context variable, owned here.

A job's correlation id (the upload's `X-Correlation-ID`, else the job id)
must reach every provider request, every log line and every audit row of
that job. Threading it as an argument through router, guard, breaker,
budget and client would put it in every signature on the way, and one
forgotten hop loses it silently. A `ContextVar` follows the task instead,
and asyncio copies it into every task a call starts.

Who does what: the worker binds a job's id around the job's steps; the
router and the guard bind the id of each call they make (the caller's, or
a fresh one); events and provider clients only read it (`current`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Final

HEADER: Final = "X-Correlation-ID"
"""The HTTP header that carries it: into the API on upload, and out to the providers."""

_current: ContextVar[str | None] = ContextVar("breakwater_correlation_id", default=None)


def current() -> str | None:
    """The correlation id bound around the running code, or None outside any."""
    return _current.get()


def bind(correlation_id: str) -> Token[str | None]:
    """Bind `correlation_id` until `unbind` (for hot paths shaped as try/except)."""
    return _current.set(correlation_id)


def unbind(token: Token[str | None]) -> None:
    """Restore what was bound before the `bind` that gave `token`."""
    _current.reset(token)


@contextmanager
def bound(correlation_id: str) -> Iterator[str]:
    """Bind `correlation_id` for the block (and the tasks it starts); yields it back."""
    token = _current.set(correlation_id)
    try:
        yield correlation_id
    finally:
        _current.reset(token)
