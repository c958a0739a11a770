"""What each transition tells its subscribers and the log, field by field, and the policy's bounds.

The breaker's behaviour is in tests/test_breaker.py; these pin the record of it
(who, from where, why, when, on what counts, with which cooldown, for which
job), which the chaos oracle and an operator read, so a transition that
happens but is misreported fails here.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from resilience import Breaker, BreakerPolicy, CircuitOpen, ProviderError, Transition
from resilience.testing import run_virtual
from tests.events import Events, logged_levels


async def fail() -> None:
    raise ProviderError("provider failed", status=503)


async def succeed() -> str:
    return "ok"


async def outcome(breaker: Breaker, fn: Any, job: str) -> None:
    try:
        await breaker.call(fn, correlation_id=job)
    except ProviderError:
        pass


def test_each_transition_carries_who_why_when_and_the_cooldown(events: Events) -> None:
    policy = BreakerPolicy(failure_threshold=3, min_calls=100, cooldown_s=10, cooldown_max_s=100)
    seen: list[Transition] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        breaker = Breaker("embed", policy)
        breaker.subscribe(seen.append)
        for job in ("j1", "j2", "j3"):
            await outcome(breaker, fail, job)
        await asyncio.sleep(10)  # cooldown over: half-open
        await outcome(breaker, fail, "probe-1")  # reopens, cooldown doubled
        await asyncio.sleep(20)
        await outcome(breaker, succeed, "probe-2")  # closes
        return start

    start = run_virtual(main())
    # The counts stay those that tripped it until it closes: probes are judged apart.
    tripped = (3, 3, 1.0)
    assert seen == [
        Transition("embed", "closed", "open", "trip", "3 consecutive failures",
                   start, *tripped, 10.0, "j3"),
        Transition("embed", "open", "half_open", "half_open", "cooldown of 10s elapsed",
                   start + 10, *tripped, None, None),
        Transition("embed", "half_open", "open", "reopen", "probe failed: ProviderError",
                   start + 10, *tripped, 20.0, "probe-1"),
        Transition("embed", "open", "half_open", "half_open", "cooldown of 20s elapsed",
                   start + 30, *tripped, None, None),
        Transition("embed", "half_open", "closed", "close", "1 probe(s) succeeded",
                   start + 30, *tripped, None, "probe-2"),
    ]  # fmt: skip
    logged = events.of("breaker.transition")
    assert [
        (r["provider"], r["from"], r["to"], r["trigger"], r["reason"], r["cooldown_s"])
        for r in logged
    ] == [(t.provider, t.source, t.dest, t.trigger, t.reason, t.cooldown_s) for t in seen]
    assert (logged[0]["failures"], logged[0]["calls"], logged[0]["failure_rate"]) == tripped
    assert [r["correlation_id"] for r in logged] == [t.correlation_id for t in seen]


def test_the_rate_trip_counts_calls_up_to_and_including_min_calls() -> None:
    """At exactly `min_calls` calls and exactly `failure_rate`, the breaker trips."""
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=4, window_s=60)

    async def main() -> list[str]:
        breaker = Breaker("p", policy)
        states = []
        for fn in (succeed, fail, succeed, fail):
            await outcome(breaker, fn, "j")
            states.append(breaker.state)
        return states

    assert run_virtual(main()) == ["closed", "closed", "closed", "open"]


def test_the_window_forgets_a_call_exactly_window_s_old() -> None:
    """A call `window_s` ago has left the window: the rate is judged on the newer calls."""
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=2, window_s=10)

    async def main() -> str:
        breaker = Breaker("p", policy)
        await outcome(breaker, fail, "old")
        await asyncio.sleep(10)
        await outcome(breaker, succeed, "a")
        await outcome(breaker, succeed, "b")
        await outcome(breaker, fail, "c")  # 1 of 3 failed, or 2 of 4 if "old" were kept
        return breaker.state

    assert run_virtual(main()) == "closed"


def test_a_slow_call_trips_only_when_slower_than_the_limit() -> None:
    policy = BreakerPolicy(failure_threshold=1, min_calls=100, slow_call_s=5)

    async def exactly_five() -> str:
        await asyncio.sleep(5)
        return "ok"

    async def main() -> str:
        breaker = Breaker("p", policy)
        await breaker.call(exactly_five)
        return breaker.state

    assert run_virtual(main()) == "closed"


def test_manual_overrides_name_the_breaker_and_carry_their_reason(events: Events) -> None:
    seen: list[Transition] = []

    async def main() -> list[float]:
        breaker = Breaker("parse")
        breaker.subscribe(seen.append)
        breaker.force_open("maintenance")
        after_force = breaker.retry_after_s()
        breaker.force_closed("done")
        breaker.reset()
        return [after_force, breaker.retry_after_s()]

    assert run_virtual(main()) == [BreakerPolicy().cooldown_s, 0.0]
    assert [(t.trigger, t.reason, t.cooldown_s) for t in seen] == [
        ("force_open", "maintenance", None),  # forced open has no cooldown: it waits for us
        ("force_closed", "done", None),
        ("reset", "reset", None),
    ]
    assert [(o["provider"], o["action"]) for o in events.of("breaker.override")] == [
        ("parse", "force_open"),
        ("parse", "force_closed"),
        ("parse", "reset"),
    ]


def test_a_transition_outside_a_loop_is_stamped_not_a_number() -> None:
    seen: list[Transition] = []
    breaker = Breaker("p")
    breaker.subscribe(seen.append)
    breaker.force_open("from a shell")
    (change,) = seen
    assert math.isnan(change.at)
    assert change.correlation_id is None  # no call has run: no job to name


def test_retry_after_counts_down_the_cooldown_to_zero() -> None:
    async def main() -> list[float]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=10))
        closed = breaker.retry_after_s()
        await outcome(breaker, fail, "j")
        at_trip = breaker.retry_after_s()
        await asyncio.sleep(4)
        return [closed, at_trip, breaker.retry_after_s()]

    assert run_virtual(main()) == [0.0, 10.0, 6.0]


def test_call_passes_keyword_arguments_to_the_function() -> None:
    async def echo(a: int, *, b: int) -> tuple[int, int]:
        return a, b

    assert run_virtual(Breaker("p").call(echo, 1, b=2)) == (1, 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"failure_threshold": 0}, "BreakerPolicy.failure_threshold must be at least 1"),
        ({"min_calls": 0}, "BreakerPolicy.min_calls must be at least 1"),
        ({"failure_rate": 0.0}, r"BreakerPolicy.failure_rate must be in \(0, 1\]"),
        ({"failure_rate": 1.01}, r"BreakerPolicy.failure_rate must be in \(0, 1\]"),
        ({"window_s": 0.0}, "BreakerPolicy.window_s must be positive"),
        ({"probe_timeout_s": 0.0}, "BreakerPolicy.probe_timeout_s must be positive"),
        ({"slow_call_s": 0.0}, "BreakerPolicy.slow_call_s must be positive or None"),
        ({"cooldown_multiplier": 0.99}, "BreakerPolicy.cooldown_multiplier must be at least 1"),
        ({"cooldown_max_s": 29.0}, "BreakerPolicy.cooldown_max_s must be at least cooldown_s"),
    ],
)
def test_policy_refuses_out_of_range_values_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        BreakerPolicy(**fields)


def test_policy_accepts_its_boundary_values() -> None:
    """Each bound is inclusive where the docstring says "at least" or "(0, 1]"."""
    policy = BreakerPolicy(
        failure_rate=1.0,
        window_s=0.5,
        probe_timeout_s=0.5,
        slow_call_s=0.5,
        cooldown_s=0.5,
        cooldown_multiplier=1.0,
        cooldown_max_s=0.5,
    )
    assert (policy.failure_rate, policy.cooldown_multiplier, policy.cooldown_max_s) == (
        1.0,
        1.0,
        0.5,
    )


def test_a_broken_subscriber_is_logged_with_its_name_and_the_breaker(events: Events) -> None:
    def broken(change: Transition) -> None:
        raise RuntimeError("metrics down")

    breaker = Breaker("embed")
    breaker.subscribe(broken)
    with logged_levels() as levels:
        breaker.force_open("test")
    assert levels["breaker.subscriber_error"] == "ERROR"
    (error,) = events.of("breaker.subscriber_error")
    assert (error["provider"], error["error"]) == ("embed", "RuntimeError('metrics down')")
    assert error["subscriber"].endswith("broken")


def test_the_logged_failure_rate_is_rounded_to_four_places(events: Events) -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.6, min_calls=3, window_s=60)

    async def main() -> None:
        breaker = Breaker("p", policy)
        for fn in (fail, succeed, fail):
            await outcome(breaker, fn, "j")

    run_virtual(main())
    (trip,) = events.of("breaker.transition")
    assert (trip["calls"], trip["failures"], trip["failure_rate"]) == (3, 1, 0.6667)


def test_a_hung_probe_fails_with_the_limit_in_its_message() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=10, probe_timeout_s=5)

    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def main() -> str:
        breaker = Breaker("p", policy)
        await outcome(breaker, fail, "j")
        await asyncio.sleep(10)
        with pytest.raises(ProviderError) as raised:
            await breaker.call(hangs)
        return str(raised.value)

    assert run_virtual(main()).startswith("p: probe exceeded 5")


def test_a_closed_breaker_never_times_a_call_out() -> None:
    async def slow() -> str:
        await asyncio.sleep(60)  # twice the probe timeout
        return "ok"

    assert run_virtual(Breaker("p", BreakerPolicy(probe_timeout_s=30)).call(slow)) == "ok"


def test_a_rejection_names_the_breaker() -> None:
    async def main() -> str:
        breaker = Breaker("embed")
        breaker.force_open("test")
        with pytest.raises(CircuitOpen) as raised:
            await breaker.call(succeed)
        return raised.value.provider

    assert run_virtual(main()) == "embed"


def test_retry_after_reaches_below_a_second_before_half_open() -> None:
    async def main() -> float:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=10))
        await outcome(breaker, fail, "j")
        await asyncio.sleep(9.5)
        return breaker.retry_after_s()

    assert run_virtual(main()) == 0.5


def test_a_breaker_that_closed_counts_afresh_and_trips_again() -> None:
    """After recovery the window is empty and the next trip is judged from zero."""
    policy = BreakerPolicy(failure_threshold=100, failure_rate=1.0, min_calls=2, cooldown_s=10)

    async def main() -> list[str]:
        breaker = Breaker("p", policy)
        for _ in range(2):
            await outcome(breaker, fail, "j")
        await asyncio.sleep(10)
        await outcome(breaker, succeed, "probe")
        states = [breaker.state]
        await outcome(breaker, fail, "one")  # 1 call < min_calls: stays closed
        states.append(breaker.state)
        await outcome(breaker, fail, "two")  # 2 of 2 failed: trips again
        states.append(breaker.state)
        return states

    assert run_virtual(main()) == ["closed", "closed", "open"]


def test_the_window_forgets_an_old_success_so_new_failures_trip() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=1.0, min_calls=2, window_s=10)

    async def main() -> str:
        breaker = Breaker("p", policy)
        await outcome(breaker, succeed, "old")
        await asyncio.sleep(10)
        await outcome(breaker, fail, "a")
        await outcome(breaker, fail, "b")  # 2 of 2 within the window
        return breaker.state

    assert run_virtual(main()) == "open"


def test_a_forced_close_of_a_cooling_breaker_leaves_it_usable() -> None:
    async def main() -> list[str]:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=10))
        await outcome(breaker, fail, "j")  # open, its half-open timer set
        breaker.force_closed("operator")  # cancels the timer
        await outcome(breaker, fail, "k")  # trips again: a new timer
        states = [breaker.state]
        await asyncio.sleep(10)
        states.append(breaker.state)
        return states

    assert run_virtual(main()) == ["open", "half_open"]


def test_with_two_successes_needed_one_probe_at_a_time_still_holds() -> None:
    policy = BreakerPolicy(
        failure_threshold=1, cooldown_s=10, half_open_max_calls=1, success_threshold=2
    )

    async def slow() -> str:
        await asyncio.sleep(1)
        return "ok"

    async def main() -> list[str]:
        breaker = Breaker("p", policy)
        await outcome(breaker, fail, "j")
        await asyncio.sleep(10)
        await breaker.call(succeed)  # one of two successes: still half-open
        results = await asyncio.gather(
            breaker.call(slow), breaker.call(slow), return_exceptions=True
        )
        return [type(r).__name__ for r in results]

    assert run_virtual(main()) == ["str", "CircuitOpen"]


def test_a_probe_answered_with_a_caller_error_still_proves_the_provider_is_up() -> None:
    async def bad_request() -> None:
        raise ProviderError("bad request", status=400)

    async def main() -> str:
        breaker = Breaker("p", BreakerPolicy(failure_threshold=1, cooldown_s=10))
        await outcome(breaker, fail, "j")
        await asyncio.sleep(10)
        await outcome(breaker, bad_request, "probe")
        return breaker.state

    assert run_virtual(main()) == "closed"


def test_forgetting_one_old_call_keeps_the_newer_ones_counted() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=1.0, min_calls=1, window_s=10)

    async def main() -> str:
        breaker = Breaker("p", policy)
        await outcome(breaker, succeed, "old")
        await asyncio.sleep(5)
        await outcome(breaker, succeed, "a")
        await outcome(breaker, succeed, "b")
        await asyncio.sleep(5)
        await outcome(breaker, fail, "c")  # "old" leaves: 1 failure in 3 calls
        return breaker.state

    assert run_virtual(main()) == "closed"
