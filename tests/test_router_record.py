"""What the router tells the log and its subscribers about each call, and what it passes on.

tests/test_router.py shows which path serves each call; these pin the record
of it (the fallback line's provider, job and error; the subscriber-error
line), the id a real call is made under, the defaults a routed call carries,
and the arguments handed to the mock.
"""

from __future__ import annotations

from typing import Any

import pytest

from resilience import (
    BreakerPolicy,
    Budget,
    CircuitOpen,
    Guard,
    ProviderError,
    RetryPolicy,
    Router,
    ServiceMode,
    TokenBucket,
    correlation,
)
from resilience.router import RoutedCall, fallback_reason
from resilience.testing import run_virtual
from tests.events import Events, logged_levels


async def mock(text: str, *, tag: str = "") -> str:
    return f"mock:{text}{tag}"


def router_with(real: Any, mode: ServiceMode = ServiceMode.HYBRID, **guard: Any) -> Router:
    router = Router(mode)
    guard.setdefault("retry", RetryPolicy(max_attempts=1))
    router.register("embed", real=real, mock=mock, guard=Guard("openai", **guard))
    return router


async def down(text: str, *, tag: str = "") -> str:
    raise ProviderError("down", status=503)


def test_the_circuit_open_reason_is_its_documented_name() -> None:
    assert fallback_reason(CircuitOpen("p", 1.0)) == "circuit_open"


@pytest.mark.parametrize("mode", [ServiceMode.MOCK, ServiceMode.HYBRID])
def test_the_mock_is_given_the_calls_keyword_arguments(mode: ServiceMode) -> None:
    routed = run_virtual(router_with(down, mode).call("embed", "a", tag="!"))
    assert routed.value == "mock:a!"


def test_a_mock_served_for_an_open_breaker_gets_the_keyword_arguments_too() -> None:
    router = router_with(down)
    router.guard("embed").breaker.force_open("test")
    routed = run_virtual(router.call("embed", "a", tag="!"))
    assert (routed.value, routed.reason) == ("mock:a!", "circuit_open")


def test_each_fallback_line_names_the_provider_the_job_and_the_error(events: Events) -> None:
    async def main() -> None:
        router = router_with(down)
        await router.call("embed", "a", correlation_id="job-1")  # retries exhausted
        router.guard("embed").breaker.force_open("test")
        with correlation.bound("job-2"):
            await router.call("embed", "b")  # circuit open: no error met

    run_virtual(main())
    assert [
        (r["provider"], r["capability"], r["reason"], r["correlation_id"], r["error"])
        for r in events.of("fallback.served")
    ] == [
        ("openai", "embed", "retries_exhausted", "job-1", "ProviderError"),
        ("openai", "embed", "circuit_open", "job-2", None),
    ]


@pytest.mark.parametrize(
    ("bound", "explicit", "real_sees", "logged"),
    [
        (None, None, None, "openai-1"),
        ("job-7", None, "job-7", "job-7"),
        ("job-7", "job-7", "job-7", "job-7"),
        ("job-7", "job-9", "job-9", "job-9"),
        (None, "job-9", "job-9", "job-9"),
    ],
)
def test_a_real_call_is_made_under_the_callers_id_else_the_bound_one(
    events: Events, bound: str | None, explicit: str | None, real_sees: str | None, logged: str
) -> None:
    seen: list[str | None] = []

    async def real(text: str) -> str:
        seen.append(correlation.current())
        raise ProviderError("down", status=503)

    async def main() -> None:
        router = router_with(real, breaker=BreakerPolicy(failure_threshold=1))
        if bound is None:
            await router.call("embed", "a", correlation_id=explicit)
        else:
            with correlation.bound(bound):
                await router.call("embed", "a", correlation_id=explicit)

    run_virtual(main())
    assert seen == [real_sees]
    (trip,) = events.of("breaker.transition")
    assert trip["correlation_id"] == logged
    (served,) = events.of("fallback.served")
    assert served["correlation_id"] == logged


def test_a_routed_call_takes_one_unit_and_costs_nothing_unless_told() -> None:
    async def real(text: str) -> str:
        return f"real:{text}"

    async def main() -> list[object]:
        tokens, budget = TokenBucket(1.5, 0.001), Budget(daily_usd=0.5)
        router = router_with(real, ServiceMode.REAL, tokens=tokens, budget=budget)
        routed = await router.call("embed", "a")
        spent, _ = await budget.spent("day")
        return [routed.value, routed.path, tokens.level(), spent]

    assert run_virtual(main()) == ["real:a", "real", pytest.approx(0.5), 0.0]


def test_a_broken_subscriber_is_logged_with_its_name_and_provider(events: Events) -> None:
    def broken(call: RoutedCall) -> None:
        raise RuntimeError("metrics down")

    router = router_with(down, ServiceMode.MOCK)
    router.subscribe(broken)
    with logged_levels() as levels:
        assert run_virtual(router.call("embed", "a")).value == "mock:a"
    assert levels["router.subscriber_error"] == "ERROR"
    (error,) = events.of("router.subscriber_error")
    assert (error["provider"], error["capability"], error["error"]) == (
        "openai",
        "embed",
        "RuntimeError('metrics down')",
    )
    assert error["subscriber"].endswith("broken")


def test_an_unknown_capability_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown capability 'parse' \(registered: none\)"):
        Router().guard("parse")
    router = router_with(down)
    router.register("chat", real=down, mock=mock, guard=Guard("openai-chat"))
    with pytest.raises(KeyError, match=r"unknown capability 'parse' \(registered: chat, embed\)"):
        router.guard("parse")
    with pytest.raises(KeyError, match=r"unknown capability 'parse' \(registered: chat, embed\)"):
        run_virtual(router.call("parse", "a"))
