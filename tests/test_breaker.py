"""The breaker's rules, each shown on the virtual-time loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transitions import MachineError

from resilience import Breaker, BreakerPolicy, CircuitOpen, ProviderError, Transition
from resilience.testing import run_virtual
from tests.events import Events


async def fail(status: int | None = 503) -> None:
    raise ProviderError("provider failed", status=status)


async def succeed() -> str:
    return "ok"


async def attempt(breaker: Breaker, fn: Callable[[], Awaitable[Any]]) -> str:
    """Call through the breaker; return what happened as a word."""
    try:
        await breaker.call(fn)
    except CircuitOpen:
        return "rejected"
    except ProviderError:
        return "failed"
    return "ok"


def test_trips_after_failure_threshold_consecutive_failures(events: Events) -> None:
    async def main() -> list[tuple[str, str]]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=3, min_calls=100))
        seen = []
        for _ in range(4):
            seen.append((await attempt(breaker, fail), breaker.state))
        return seen

    assert run_virtual(main()) == [
        ("failed", "closed"),
        ("failed", "closed"),
        ("failed", "open"),
        ("rejected", "open"),
    ]
    (trip,) = events.of("breaker.transition")
    assert (trip["from"], trip["to"], trip["trigger"]) == ("closed", "open", "trip")
    assert trip["failures"] == 3
    assert trip["reason"] == "3 consecutive failures"


def test_a_success_resets_the_consecutive_count() -> None:
    async def main() -> str:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=3, min_calls=100))
        for _ in range(10):
            await attempt(breaker, fail)
            await attempt(breaker, fail)
            await attempt(breaker, succeed)
        return breaker.state

    assert run_virtual(main()) == "closed"


def test_trips_on_failure_rate_only_after_min_calls(events: Events) -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=10, window_s=60)

    async def main() -> list[str]:
        breaker = Breaker("p", policy)
        states = []
        # Alternate: rate is 0.5 from the 2nd call on, but min_calls holds it closed.
        for i in range(10):
            await attempt(breaker, fail if i % 2 == 0 else succeed)
            states.append(breaker.state)
        await attempt(breaker, fail)
        states.append(breaker.state)
        return states

    states = run_virtual(main())
    assert states[:10] == ["closed"] * 10
    assert states[10] == "open"
    (trip,) = events.of("breaker.transition")
    assert trip["calls"] == 11
    assert trip["reason"].startswith("failure rate 0.55")


def test_failure_rate_window_forgets_old_calls() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=4, window_s=10)

    async def main() -> str:
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        await attempt(breaker, fail)
        await asyncio.sleep(11)  # those two fall out of the window
        for _ in range(3):
            await attempt(breaker, succeed)
        await attempt(breaker, fail)  # 1 failure in 4 calls: 0.25
        return breaker.state

    assert run_virtual(main()) == "closed"


def test_slow_calls_count_as_failures_but_return_their_value() -> None:
    policy = BreakerPolicy(failure_threshold=2, slow_call_s=1.0, min_calls=100)

    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    async def main() -> tuple[list[str], str]:
        breaker = Breaker("p", policy)
        values = [await breaker.call(slow), await breaker.call(slow)]
        return values, breaker.state

    assert run_virtual(main()) == (["late", "late"], "open")


def test_cooldown_runs_on_the_loop_and_half_open_is_scheduled(events: Events) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=30)

    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        marks = [(loop.time(), breaker.state)]
        await asyncio.sleep(29.999)
        marks.append((loop.time(), breaker.state))
        await asyncio.sleep(0.001)
        marks.append((loop.time(), breaker.state))  # no traffic needed
        return marks

    marks = run_virtual(main())
    assert [m[1] for m in marks] == ["open", "open", "half_open"]
    assert marks[2][0] == pytest.approx(30.0)
    half_open = events.of("breaker.transition")[1]
    assert half_open["to"] == "half_open"
    assert half_open["correlation_id"] is None  # moved by the timer, not by a call


def test_open_rejects_at_once_with_retry_after_and_never_calls() -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        raise ProviderError("down", status=503)

    async def main() -> float:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=30))
        await attempt(breaker, counted)
        await asyncio.sleep(10)
        with pytest.raises(CircuitOpen) as caught:
            await breaker.call(counted)
        return caught.value.retry_after_s

    assert run_virtual(main()) == pytest.approx(20.0)
    assert calls == 1


@pytest.mark.parametrize("max_calls", [1, 3])
def test_probe_cap_under_fifty_concurrent_callers(max_calls: int) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=10, half_open_max_calls=max_calls)
    reached = 0

    async def probe() -> str:
        nonlocal reached
        reached += 1
        await asyncio.sleep(1)
        return "ok"

    async def main() -> tuple[list[str], str]:
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        await asyncio.sleep(10)
        assert breaker.state == "half_open"
        outcomes = await asyncio.gather(*(attempt(breaker, probe) for _ in range(50)))
        return outcomes, breaker.state

    outcomes, state = run_virtual(main())
    assert reached == max_calls
    assert outcomes.count("ok") == max_calls
    assert outcomes.count("rejected") == 50 - max_calls
    assert state == "closed"


def test_success_threshold_needs_that_many_probe_successes() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5, success_threshold=3)

    async def main() -> list[str]:
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        await asyncio.sleep(5)
        states = []
        for _ in range(3):
            await attempt(breaker, succeed)
            states.append(breaker.state)
        return states

    assert run_virtual(main()) == ["half_open", "half_open", "closed"]


def test_cancelled_probe_releases_its_permit_without_counting() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5)

    async def main() -> tuple[str, int, str, str]:
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        await asyncio.sleep(5)
        probe = asyncio.create_task(breaker.call(asyncio.sleep, 100))
        await asyncio.sleep(1)
        blocked = await attempt(breaker, succeed)  # the only permit is taken
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        state_after_cancel = breaker.state
        permits = breaker.probes_in_flight
        return blocked, permits, state_after_cancel, await attempt(breaker, succeed)

    assert run_virtual(main()) == ("rejected", 0, "half_open", "ok")


def test_hung_probe_times_out_as_a_failure_and_frees_the_permit(events: Events) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=5, probe_timeout_s=30)

    async def main() -> tuple[float, str, float]:
        loop = asyncio.get_running_loop()
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        await asyncio.sleep(5)
        started = loop.time()
        with pytest.raises(ProviderError, match="probe exceeded"):
            await breaker.call(asyncio.sleep, 10_000)
        return loop.time() - started, breaker.state, breaker.cooldown_s

    waited, state, cooldown = run_virtual(main())
    assert waited == pytest.approx(30.0)
    assert state == "open"
    assert cooldown == 10.0  # reopened: 5 s x 2


def test_cancellation_never_counts_as_a_failure() -> None:
    async def main() -> tuple[str, int]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1))
        for _ in range(5):
            task = asyncio.create_task(breaker.call(asyncio.sleep, 100))
            await asyncio.sleep(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return breaker.state, breaker.consecutive_failures

    assert run_virtual(main()) == ("closed", 0)


async def until_half_open(breaker: Breaker) -> None:
    """Wait for the breaker's next move into half_open, using its transition events."""
    reached = asyncio.Event()
    breaker.subscribe(lambda change: reached.set() if change.dest == "half_open" else None)
    if breaker.state != "half_open":
        await reached.wait()


def test_cooldown_grows_on_each_failed_probe_and_resets_on_close() -> None:
    policy = BreakerPolicy(
        failure_threshold=1, cooldown_s=10, cooldown_multiplier=2, cooldown_max_s=35
    )

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        breaker = Breaker("p", policy)
        await attempt(breaker, fail)
        opened = loop.time()
        gaps = []
        for _ in range(4):  # the probe fails each time
            await until_half_open(breaker)
            gaps.append(loop.time() - opened)
            await attempt(breaker, fail)
            opened = loop.time()
        await until_half_open(breaker)
        await attempt(breaker, succeed)
        gaps.append(breaker.cooldown_s)
        return gaps

    assert run_virtual(main()) == [10.0, 20.0, 35.0, 35.0, 10.0]


def test_manual_control_is_logged_with_its_reason(events: Events) -> None:
    async def main() -> list[str]:
        breaker = Breaker("p")
        breaker.force_open("maintenance window")
        states = [breaker.state]
        await asyncio.sleep(10_000)  # forced open does not move by itself
        states.append(breaker.state)
        breaker.force_closed("maintenance over")
        states.append(breaker.state)
        breaker.reset("operator reset")
        states.append(breaker.state)
        return states

    assert run_virtual(main()) == ["open", "open", "closed", "closed"]
    overrides = events.of("breaker.override")
    assert [(o["action"], o["reason"]) for o in overrides] == [
        ("force_open", "maintenance window"),
        ("force_closed", "maintenance over"),
        ("reset", "operator reset"),
    ]
    triggers = [t["trigger"] for t in events.of("breaker.transition")]
    assert triggers == ["force_open", "force_closed", "reset"]


def test_illegal_trigger_raises() -> None:
    breaker = Breaker("p")
    with pytest.raises(MachineError):
        breaker._fire("close", "closing a closed breaker is not an edge")
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("status", "code", "counts"),
    [
        (None, None, True),
        (408, None, True),
        (409, None, True),
        (500, None, True),
        (503, None, True),
        (429, None, False),
        (400, None, False),
        (404, None, False),
        (422, None, False),
        (401, None, False),
        (403, None, False),
        (402, None, False),
        (429, "insufficient_quota", False),
    ],
)
def test_classification_table_decides_what_trips(
    status: int | None, code: str | None, counts: bool
) -> None:
    async def raise_it() -> None:
        raise ProviderError("x", status=status, code=code)

    async def main() -> tuple[str, int]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=2, min_calls=100))
        for _ in range(2):
            with pytest.raises(ProviderError):
                await breaker.call(raise_it)
        return breaker.state, breaker.consecutive_failures

    state, failures = run_virtual(main())
    assert state == ("open" if counts else "closed")
    assert failures == (2 if counts else 0)


def test_connection_errors_and_timeouts_are_failures() -> None:
    async def refuse() -> None:
        raise ConnectionRefusedError

    async def time_out() -> None:
        raise TimeoutError

    async def main() -> str:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=2))
        for fn in (refuse, time_out):
            with pytest.raises((ConnectionRefusedError, TimeoutError)):
                await breaker.call(fn)
        return breaker.state

    assert run_virtual(main()) == "open"


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from([None, 503, 429, 400, 401, 200])),
        st.tuples(st.just("sleep"), st.floats(min_value=0.0, max_value=120.0)),
        st.tuples(st.just("manual"), st.sampled_from(["force_open", "force_closed", "reset"])),
    ),
    max_size=60,
)


@given(actions=ACTIONS, threshold=st.integers(1, 4), probes=st.integers(1, 3))
def test_aiobreaker_and_the_machine_never_disagree(
    actions: list[tuple[str, Any]], threshold: int, probes: int
) -> None:
    policy = BreakerPolicy(
        failure_threshold=threshold,
        min_calls=3,
        failure_rate=0.6,
        window_s=30,
        cooldown_s=10,
        half_open_max_calls=probes,
        probe_timeout_s=5,
    )

    async def main() -> None:
        breaker = Breaker("p", policy)
        pending: list[asyncio.Task[str]] = []
        for kind, arg in actions:
            if kind == "call":
                fn = succeed if arg == 200 else (lambda s=arg: fail(s))

                async def delayed(fn: Callable[[], Awaitable[Any]] = fn) -> Any:
                    await asyncio.sleep(0.5)
                    return await fn()

                pending.append(asyncio.create_task(attempt(breaker, delayed)))
                await asyncio.sleep(0)
            elif kind == "sleep":
                await asyncio.sleep(arg)
            else:
                getattr(breaker, arg)("property test")
            assert breaker.aiobreaker_state == breaker.state
            assert 0 <= breaker.probes_in_flight <= policy.half_open_max_calls
        await asyncio.gather(*pending)
        assert breaker.aiobreaker_state == breaker.state

    run_virtual(main())


def test_a_failing_subscriber_never_breaks_the_breaker_or_the_call(events: Events) -> None:
    seen: list[str] = []

    def broken(change: Transition) -> None:
        raise RuntimeError("listener bug")

    async def main() -> tuple[str, str, str]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=5))
        breaker.subscribe(broken)
        breaker.subscribe(lambda change: seen.append(change.dest))
        first = await attempt(breaker, fail)  # trips inside the call
        await asyncio.sleep(5)  # half-open fires from a timer
        second = await attempt(breaker, succeed)
        return first, second, breaker.state

    assert run_virtual(main()) == ("failed", "ok", "closed")
    assert seen == ["open", "half_open", "closed"]
    errors = events.of("breaker.subscriber_error")
    assert len(errors) == 3
    assert errors[0]["error"] == "RuntimeError('listener bug')"


def test_a_caller_can_run_the_call_itself_and_report_it_with_finish() -> None:
    """What the guard does: acquire, await the call, then `finish` (no `execute`)."""
    policy = BreakerPolicy(failure_threshold=2, min_calls=100, slow_call_s=1.0, cooldown_s=5)

    async def run(breaker: Breaker, fn: Callable[[], Awaitable[Any]]) -> str:
        loop = asyncio.get_running_loop()
        ticket = breaker.acquire()
        if ticket is None:
            return "rejected"
        started = loop.time()
        try:
            call = fn()
            await (breaker.bounded(call) if ticket.probe else call)
        except BaseException as exc:
            breaker.finish(ticket, exc, started, loop.time(), "cid")
            return "failed"
        breaker.finish(ticket, None, started, loop.time(), "cid")
        return "ok"

    async def slow() -> None:
        await asyncio.sleep(2)

    async def main() -> list[tuple[str, str, int]]:
        breaker = Breaker("p", policy)
        seen = []
        for fn in (fail, succeed, fail, slow, succeed):
            seen.append((await run(breaker, fn), breaker.state, breaker.consecutive_failures))
        await asyncio.sleep(5)
        seen.append((await run(breaker, succeed), breaker.state, breaker.consecutive_failures))
        return seen

    assert run_virtual(main()) == [
        ("failed", "closed", 1),
        ("ok", "closed", 0),
        ("failed", "closed", 1),
        ("ok", "open", 2),  # slow: its value is kept, but it counts as a failure
        ("rejected", "open", 2),
        ("ok", "closed", 0),  # the probe
    ]


def test_finish_gives_a_cancelled_probe_its_permit_back() -> None:
    async def main() -> tuple[int, int]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=5))
        await attempt(breaker, fail)
        await asyncio.sleep(5)
        ticket = breaker.acquire()
        assert ticket is not None
        assert ticket.probe
        taken = breaker.probes_in_flight
        breaker.finish(ticket, asyncio.CancelledError(), 5.0, 6.0)
        return taken, breaker.probes_in_flight

    assert run_virtual(main()) == (1, 0)
