"""The circuit breaker: an explicit state machine with aiobreaker's accounting.

Two parts, each doing one job:

* A `transitions` machine holds the state (closed, open, half_open). Every
  change of state is one of its triggers, an illegal trigger raises, and the
  machine owns all timing: the open -> half_open move is scheduled with
  `loop.call_later`, so logs and health checks show half_open on time.
* aiobreaker counts consecutive failures while closed, behind the small
  adapter in `resilience.breaker_accounting` (its contract is in that
  module's docstring): outcomes are replayed into it only while the machine
  is closed, it says when it tripped, and the machine pushes every state
  change back into it, so the two agree.

Half-open probes are gated by counted permits (Resilience4j's model): at
most `half_open_max_calls` run at once, each bounded by `probe_timeout_s`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from transitions import Machine

from resilience.breaker_accounting import FailureAccounting, is_failure
from resilience.errors import CircuitOpen, ProviderError
from resilience.events import emit

T = TypeVar("T")

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
STATES: Final = (CLOSED, OPEN, HALF_OPEN)

# trigger name, source states, destination
_TRANSITIONS: Final = (
    ("trip", CLOSED, OPEN),
    ("peer_trip", CLOSED, OPEN),
    ("half_open", OPEN, HALF_OPEN),
    ("close", HALF_OPEN, CLOSED),
    ("reopen", HALF_OPEN, OPEN),
    ("force_open", "*", OPEN),
    ("force_closed", "*", CLOSED),
    ("reset", "*", CLOSED),
)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker trips and how it recovers.

    It trips on `failure_threshold` consecutive failures, or when the failure
    rate over the last `window_s` seconds reaches `failure_rate` once at least
    `min_calls` calls were seen in that window. With `slow_call_s` set, a
    successful call slower than that still counts as a failure (its result is
    returned). After `cooldown_s` it lets `half_open_max_calls` probes through;
    `success_threshold` probe successes close it, and a probe failure reopens
    it with the cooldown multiplied by `cooldown_multiplier`, up to
    `cooldown_max_s`.
    """

    failure_threshold: int = 5
    failure_rate: float = 0.5
    window_s: float = 60.0
    min_calls: int = 20
    slow_call_s: float | None = None
    cooldown_s: float = 30.0
    cooldown_multiplier: float = 2.0
    cooldown_max_s: float = 300.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "min_calls", "half_open_max_calls", "success_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"BreakerPolicy.{name} must be at least 1")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("BreakerPolicy.failure_rate must be in (0, 1]")
        for name in ("window_s", "cooldown_s", "cooldown_max_s", "probe_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BreakerPolicy.{name} must be positive")
        if self.slow_call_s is not None and not self.slow_call_s > 0:
            raise ValueError("BreakerPolicy.slow_call_s must be positive or None")
        if self.cooldown_multiplier < 1.0:
            raise ValueError("BreakerPolicy.cooldown_multiplier must be at least 1")
        if self.cooldown_max_s < self.cooldown_s:
            raise ValueError("BreakerPolicy.cooldown_max_s must be at least cooldown_s")


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state, as passed to `Breaker.subscribe` callbacks and logged."""

    provider: str
    source: str
    dest: str
    trigger: str
    reason: str
    at: float
    """Loop time of the change."""
    failures: int
    calls: int
    failure_rate: float
    cooldown_s: float | None
    correlation_id: str | None


class SlowCall(Exception):
    """Recorded (never raised to callers) when a call outlasts `slow_call_s`."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """Admission to a call. Outcomes from a ticket of an earlier epoch are ignored.

    Every call admitted in one epoch gets the same ticket: all it says is when
    (which epoch) and how (as a probe or not) the call was let in.
    """

    epoch: int
    probe: bool


@dataclass(slots=True)
class _Window:
    """Outcomes of the last `span` seconds, with running totals."""

    span: float
    entries: deque[tuple[float, bool]] = field(default_factory=deque)
    calls: int = 0
    failures: int = 0

    def add(self, now: float, failed: bool) -> None:
        """Count an outcome at loop time `now` and forget those older than `span`."""
        entries = self.entries
        entries.append((now, failed))
        self.calls += 1
        self.failures += failed
        horizon = now - self.span
        # The entry just added is younger than the horizon, so the loop stops at it.
        while entries[0][0] <= horizon:
            _, old_failed = entries.popleft()
            self.calls -= 1
            self.failures -= old_failed

    def clear(self) -> None:
        self.entries.clear()
        self.calls = self.failures = 0

    @property
    def rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


class _Model:
    """The object the `transitions` machine attaches `state` and `trigger` to."""

    state: str
    trigger: Callable[..., bool]


class Breaker:
    """A circuit breaker for one provider.

    Use `call` to run a coroutine through it, or `acquire` + `execute` when a
    guard needs to do work (rate limiting, budgeting) between admission and
    the call. A caller that awaits the call itself reports it with `finish`
    instead of `execute`. `state` is one of "closed", "open", "half_open".
    """

    def __init__(self, name: str, policy: BreakerPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._model = _Model()
        self._machine = Machine(
            model=self._model,
            states=list(STATES),
            transitions=[list(t) for t in _TRANSITIONS],
            initial=CLOSED,
            auto_transitions=False,
        )
        self._accounting = FailureAccounting(name, self.policy.failure_threshold, self._on_counted)
        self._counter = self._accounting.storage  # read on every call: one lookup fewer
        self._window = _Window(self.policy.window_s)
        self._epoch = 0
        self._ticket = Ticket(0, probe=False)
        self._cooldown = self.policy.cooldown_s
        self._open_until = 0.0
        self._forced = False
        self._timer: asyncio.TimerHandle | None = None
        self._probes = 0
        self._probe_successes = 0
        self._pending: tuple[str, str] | None = None
        self._correlation_id: str | None = None
        self._replayed_at = 0.0  # loop time of the outcome being replayed into aiobreaker
        self._subscribers: list[Callable[[Transition], None]] = []

    def __repr__(self) -> str:
        return f"Breaker({self.name!r}, state={self.state!r})"

    # -- reading -----------------------------------------------------------

    @property
    def state(self) -> str:
        return self._model.state

    @property
    def aiobreaker_state(self) -> str:
        """aiobreaker's view of the state; always equal to `state`."""
        return self._accounting.state

    @property
    def consecutive_failures(self) -> int:
        return self._accounting.failures

    @property
    def cooldown_s(self) -> float:
        """The cooldown the next (or current) open period uses."""
        return self._cooldown

    @property
    def probes_in_flight(self) -> int:
        return self._probes

    @property
    def rejecting(self) -> bool:
        """Whether `acquire` would refuse now: open, or half-open with every probe permit out.

        The guard asks before it waits on a rate limiter, so a call the
        breaker will refuse neither waits for a token nor spends one.
        """
        state = self._model.state
        return state == OPEN or (
            state == HALF_OPEN and self._probes >= self.policy.half_open_max_calls
        )

    def retry_after_s(self) -> float:
        """Seconds until a call could be admitted; 0.0 when closed."""
        state = self._model.state
        if state == CLOSED:
            return 0.0
        if state == OPEN:
            if self._forced:
                return self.policy.cooldown_s
            return max(0.0, self._open_until - asyncio.get_running_loop().time())
        return self.policy.probe_timeout_s

    def subscribe(self, callback: Callable[[Transition], None]) -> None:
        """Call `callback` after every transition (Resilience4j-style events)."""
        self._subscribers.append(callback)

    # -- calling -----------------------------------------------------------

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        correlation_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` through the breaker, or raise `CircuitOpen`."""
        ticket = self.acquire()
        if ticket is None:
            raise CircuitOpen(self.name, self.retry_after_s())
        return await self.execute(ticket, fn, args, kwargs, correlation_id)

    def acquire(self) -> Ticket | None:
        """Admit one call, or return None when the breaker rejects it.

        Returning None instead of raising keeps the reject path free of
        exception machinery, so rejecting costs less than calling.
        """
        state = self._model.state
        if state == CLOSED:
            return self._ticket
        if state == HALF_OPEN and self._probes < self.policy.half_open_max_calls:
            self._probes += 1
            return self._ticket
        return None

    def admits(self, ticket: Ticket) -> bool:
        """Whether a call admitted with `ticket` may still start.

        False once the breaker has left the state the ticket was issued in,
        unless it is closed now: a call that waited (for a budget
        reservation, say) while others tripped the breaker must not go out.
        """
        return ticket.epoch == self._epoch or self._model.state == CLOSED

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket whose call never ran (no outcome is recorded)."""
        if ticket.probe and ticket.epoch == self._epoch:
            self._probes -= 1

    async def execute(
        self,
        ticket: Ticket,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> T:
        """Run `fn(*args, **kwargs)`, admitted by `ticket`, and record its outcome.

        `correlation_id` is what a transition caused by this call is logged with.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            call = fn(*args, **(kwargs or {}))
            result = await (self.bounded(call) if ticket.probe else call)
        except BaseException as exc:
            self.finish(ticket, exc, started, loop.time(), correlation_id)
            raise
        self.finish(ticket, None, started, loop.time(), correlation_id)
        return result

    def finish(
        self,
        ticket: Ticket,
        outcome: BaseException | None,
        started: float,
        ended: float,
        correlation_id: str | None = None,
    ) -> None:
        """Record how a call admitted by `ticket` ended; `execute` does this for its calls.

        `outcome` is what the call raised, or None; `started` and `ended` are
        the loop times around it. A cancelled call only gives its ticket back,
        and a `BaseException` that is not an `Exception` is not an outcome.
        """
        if outcome is None:
            slow = self.policy.slow_call_s
            if slow is not None and ended - started > slow:
                outcome = SlowCall(f"{self.name}: call took longer than {slow}s")
            elif ticket.epoch == self._epoch and not ticket.probe and self._counter.counter == 0:
                # Most calls: aiobreaker would only zero a zero counter, and a success
                # cannot trip, so counting it in the window is all there is to do.
                self._window.add(ended, False)
                return
        elif isinstance(outcome, asyncio.CancelledError):
            self.release(ticket)
            return
        elif not isinstance(outcome, Exception):
            return
        self._record(ticket, outcome, correlation_id, ended)

    async def bounded(self, call: Awaitable[T]) -> T:
        """Await a half-open probe's call, failing it with `ProviderError` after `probe_timeout_s`.

        A caller that runs calls itself (see `finish`) awaits probes through this.
        """
        deadline = asyncio.timeout(self.policy.probe_timeout_s)
        try:
            async with deadline:
                return await call
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            limit = self.policy.probe_timeout_s
            raise ProviderError(f"{self.name}: probe exceeded {limit}s") from exc

    # -- manual control ----------------------------------------------------

    def trip_from_peers(self, reason: str) -> None:
        """Open as if tripped here, because other workers' breakers tripped (a shared quorum).

        Unlike `force_open`, the cooldown and half-open probes follow as usual,
        so this worker finds out for itself when the provider is back. Only a
        closed breaker moves: one already open or probing knows more.
        """
        if self._model.state == CLOSED:
            self._fire("peer_trip", reason)

    def force_open(self, reason: str) -> None:
        """Open and stay open (no scheduled half-open) until `force_closed` or `reset`."""
        self._forced = True
        self._fire("force_open", reason)
        emit("breaker.override", provider=self.name, action="force_open", reason=reason)

    def force_closed(self, reason: str) -> None:
        """Close now, whatever the state, clearing the counts."""
        self._fire("force_closed", reason)
        emit("breaker.override", provider=self.name, action="force_closed", reason=reason)

    def reset(self, reason: str = "reset") -> None:
        """Close and forget everything: counts, window and cooldown growth."""
        self._fire("reset", reason)
        emit("breaker.override", provider=self.name, action="reset", reason=reason)

    # -- recording ---------------------------------------------------------

    def _record(
        self,
        ticket: Ticket,
        outcome: BaseException | None,
        correlation_id: str | None,
        now: float,
    ) -> None:
        """Count an outcome `finish` could not settle at once: replay it, or judge a probe."""
        if ticket.epoch != self._epoch:
            return  # the breaker changed state while this call ran
        if not ticket.probe:
            self._correlation_id = correlation_id
            self._replayed_at = now
            if self._accounting.record(outcome) and self._pending is None:
                threshold = self.policy.failure_threshold
                self._pending = ("trip", f"{threshold} consecutive failures")
            self._flush_pending()
            return
        self._correlation_id = correlation_id
        self._probes -= 1
        if outcome is not None and is_failure(outcome):
            self._fire("reopen", f"probe failed: {type(outcome).__name__}")
            return
        self._probe_successes += 1
        if self._probe_successes >= self.policy.success_threshold:
            self._fire("close", f"{self._probe_successes} probe(s) succeeded")

    def _on_counted(self, failed: bool) -> None:
        """aiobreaker counted the outcome being replayed: keep the rate window."""
        window = self._window
        window.add(self._replayed_at, failed)
        if (
            failed
            and self._pending is None
            and window.calls >= self.policy.min_calls
            and window.rate >= self.policy.failure_rate
        ):
            self._pending = ("trip", f"failure rate {window.rate:.2f} over {window.calls} calls")
            self._accounting.open()

    def _flush_pending(self) -> None:
        # Fired after aiobreaker returns, so the machine never runs inside it.
        if self._pending is not None:
            trigger, reason = self._pending
            self._pending = None
            self._fire(trigger, reason)

    # -- the machine -------------------------------------------------------

    def _fire(self, trigger: str, reason: str) -> None:
        source = self._model.state
        failures, calls, rate = self.consecutive_failures, self._window.calls, self._window.rate
        self._model.trigger(trigger)  # raises MachineError on an illegal edge
        dest = self._model.state
        self._epoch += 1
        self._ticket = Ticket(self._epoch, probe=dest == HALF_OPEN)
        self._enter(dest, trigger)
        cooldown = self._cooldown if dest == OPEN and not self._forced else None
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = math.nan  # manual control from outside a loop
        change = Transition(
            self.name,
            source,
            dest,
            trigger,
            reason,
            now,
            failures,
            calls,
            rate,
            cooldown,
            self._correlation_id,
        )
        self._correlation_id = None
        emit(
            "breaker.transition",
            provider=self.name,
            **{"from": source, "to": dest},
            trigger=trigger,
            reason=reason,
            failures=failures,
            calls=calls,
            failure_rate=round(rate, 4),
            cooldown_s=cooldown,
            correlation_id=change.correlation_id,
        )
        for callback in self._subscribers:
            try:
                callback(change)
            except Exception as exc:
                # A broken listener must never break the breaker or the call it runs in.
                emit(
                    "breaker.subscriber_error",
                    level="ERROR",
                    provider=self.name,
                    subscriber=getattr(callback, "__qualname__", repr(callback)),
                    error=repr(exc),
                )

    def _enter(self, dest: str, trigger: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._probes = 0
        self._probe_successes = 0
        if dest == OPEN:
            if trigger == "reopen":
                grown = self._cooldown * self.policy.cooldown_multiplier
                self._cooldown = min(grown, self.policy.cooldown_max_s)
            if trigger != "force_open":
                self._forced = False
                loop = asyncio.get_running_loop()
                self._open_until = loop.time() + self._cooldown
                self._timer = loop.call_later(self._cooldown, self._cooldown_over)
        elif dest == CLOSED:
            self._forced = False
            self._cooldown = self.policy.cooldown_s
            self._window.clear()
        self._accounting.follow(dest)

    def _cooldown_over(self) -> None:
        self._timer = None
        self._fire("half_open", f"cooldown of {self._cooldown:g}s elapsed")
