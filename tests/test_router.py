"""Router modes and every fallback reason."""

from __future__ import annotations

import asyncio
import random

import pytest

from resilience import (
    BreakerPolicy,
    Budget,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    Guard,
    ProviderError,
    RateLimited,
    RetryPolicy,
    Router,
    ServiceMode,
    TokenBucket,
)
from resilience.router import RoutedCall
from resilience.testing import run_virtual
from tests.events import Events


class Provider:
    """A scripted real implementation: raises the queued errors, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, text: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"real:{text}"


async def mock(text: str) -> str:
    return f"mock:{text}"


def make_router(
    mode: ServiceMode,
    real: Provider,
    *,
    breaker: BreakerPolicy | None = None,
    requests: TokenBucket | None = None,
    budget: Budget | None = None,
    attempts: int = 2,
) -> Router:
    guard = Guard(
        "emb",
        breaker or BreakerPolicy(failure_threshold=5),
        requests=requests,
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, rng=random.Random(0)),
        budget=budget,
        max_wait_s=1.0,
    )
    router = Router(mode)
    router.register("embed", real=real, mock=mock, guard=guard)
    return router


def test_mock_mode_never_touches_the_real_implementation() -> None:
    real = Provider()
    routed = run_virtual(make_router(ServiceMode.MOCK, real).call("embed", "a"))
    assert (routed.value, routed.path, routed.reason, routed.degraded) == (
        "mock:a",
        "mock",
        "mode",
        True,
    )
    assert real.calls == 0


def test_real_mode_success_is_not_degraded() -> None:
    routed = run_virtual(make_router(ServiceMode.REAL, Provider()).call("embed", "a"))
    assert (routed.value, routed.path, routed.reason, routed.degraded) == (
        "real:a",
        "real",
        None,
        False,
    )


@pytest.mark.parametrize(
    ("errors", "expected_reason"),
    [
        ([ProviderError("down", status=503)] * 2, "retries_exhausted"),
        ([TimeoutError()] * 2, "retries_exhausted"),
        ([ProviderError("slow down", status=429, retry_after_s=0.1)] * 2, "rate_limited"),
        ([ProviderError("no money", status=402)], "quota"),
        ([ProviderError("no money", status=429, code="insufficient_quota")], "quota"),
    ],
)
def test_hybrid_falls_back_on_provider_errors(
    errors: list[BaseException], expected_reason: str, events: Events
) -> None:
    routed = run_virtual(make_router(ServiceMode.HYBRID, Provider(*errors)).call("embed", "a"))
    assert (routed.value, routed.path, routed.reason) == ("mock:a", "mock", expected_reason)
    (served,) = events.of("fallback.served")
    assert served["reason"] == expected_reason
    assert served["capability"] == "embed"
    assert served["correlation_id"] == "emb-1"


def test_hybrid_serves_the_mock_while_the_breaker_is_open() -> None:
    real = Provider(*[ProviderError("down", status=503)] * 2)
    router = make_router(ServiceMode.HYBRID, real, breaker=BreakerPolicy(failure_threshold=2))

    async def main() -> list[tuple[str, str | None]]:
        first = await router.call("embed", "a")  # its two failures trip the breaker
        second = await router.call("embed", "b")
        return [(first.path, first.reason), (second.path, second.reason)]

    assert run_virtual(main()) == [("mock", "retries_exhausted"), ("mock", "circuit_open")]
    assert real.calls == 2


def test_hybrid_falls_back_when_the_bucket_cannot_grant_in_time() -> None:
    router = make_router(ServiceMode.HYBRID, Provider(), requests=TokenBucket(1, 0.01))

    async def main() -> list[str | None]:
        return [(await router.call("embed", t)).reason for t in "ab"]

    assert run_virtual(main()) == [None, "rate_limited"]


def test_hybrid_falls_back_when_the_budget_is_spent() -> None:
    router = make_router(ServiceMode.HYBRID, Provider(), budget=Budget(daily_usd=1.0))

    async def main() -> list[str | None]:
        return [(await router.call("embed", t, cost=0.6)).reason for t in "ab"]

    assert run_virtual(main()) == [None, "budget"]


@pytest.mark.parametrize("status", [400, 401, 403])
def test_hybrid_raises_caller_and_configuration_errors(status: int) -> None:
    router = make_router(ServiceMode.HYBRID, Provider(ProviderError("no", status=status)))
    with pytest.raises(ProviderError) as caught:
        run_virtual(router.call("embed", "a"))
    assert caught.value.status == status


def test_real_mode_raises_the_typed_errors_with_retry_after() -> None:
    async def main() -> list[tuple[type[BaseException], float | None]]:
        seen: list[tuple[type[BaseException], float | None]] = []
        tripping = make_router(
            ServiceMode.REAL,
            Provider(*[ProviderError("down", status=503)] * 2),
            breaker=BreakerPolicy(failure_threshold=2, cooldown_s=30),
        )
        for _ in range(2):
            try:
                await tripping.call("embed", "a")
            except (CircuitOpen, ProviderError) as exc:
                seen.append((type(exc), getattr(exc, "retry_after_s", None)))
        limited = make_router(ServiceMode.REAL, Provider(), requests=TokenBucket(1, 0.1))
        await limited.call("embed", "a")
        with pytest.raises(RateLimited) as rate:
            await limited.call("embed", "b")
        seen.append((RateLimited, rate.value.retry_after_s))
        broke = make_router(ServiceMode.REAL, Provider(), budget=Budget(daily_usd=0.5))
        with pytest.raises(BudgetExceeded) as budget:
            await broke.call("embed", "a", cost=1.0)
        seen.append((BudgetExceeded, budget.value.retry_after_s > 0))
        return seen

    seen = run_virtual(main())
    assert seen[0] == (ProviderError, None)  # the call that tripped it: its last error
    assert seen[1] == (CircuitOpen, pytest.approx(30.0, abs=0.1))
    assert seen[2] == (RateLimited, pytest.approx(10.0))
    assert seen[3] == (BudgetExceeded, True)


def test_mode_changes_at_run_time() -> None:
    real = Provider()
    router = make_router(ServiceMode.MOCK, real)

    async def main() -> list[str]:
        paths = [(await router.call("embed", "a")).path]
        router.mode = "real"
        paths.append((await router.call("embed", "a")).path)
        router.mode = ServiceMode.MOCK
        paths.append((await router.call("embed", "a")).path)
        return paths

    assert run_virtual(main()) == ["mock", "real", "mock"]
    assert real.calls == 1


def test_unknown_capability_and_duplicate_registration() -> None:
    router = make_router(ServiceMode.REAL, Provider())
    with pytest.raises(KeyError, match="unknown capability 'parse'"):
        run_virtual(router.call("parse", "x"))
    with pytest.raises(ValueError, match="already registered"):
        router.register("embed", real=mock, mock=mock, guard=router.guard("embed"))
    with pytest.raises(ValueError, match="'sideways'"):
        router.mode = "sideways"


def test_half_open_probe_success_returns_to_real_results() -> None:
    real = Provider(*[ProviderError("down", status=503)] * 2)
    router = make_router(
        ServiceMode.HYBRID, real, breaker=BreakerPolicy(failure_threshold=2, cooldown_s=10)
    )

    async def main() -> list[str]:
        paths = [(await router.call("embed", "a")).path]
        await asyncio.sleep(10)
        paths.append((await router.call("embed", "b")).path)
        paths.append(router.guard("embed").breaker.state)
        return paths

    assert run_virtual(main()) == ["mock", "real", "closed"]


def test_a_configuration_error_from_a_client_is_raised_not_retried_or_mocked() -> None:
    real = Provider(ConfigError("OPENAI_API_KEY is not set"))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        run_virtual(make_router(ServiceMode.HYBRID, real, attempts=4).call("embed", "a"))
    assert real.calls == 1


# -- subscribers: one RoutedCall per routed call ---------------------------------------


def test_subscribers_see_every_call_with_its_outcome_and_path() -> None:
    calls: list[RoutedCall] = []
    hybrid = make_router(
        ServiceMode.HYBRID,
        Provider(*[ProviderError("down", status=503)] * 2),
        breaker=BreakerPolicy(failure_threshold=2),
    )
    real = make_router(ServiceMode.REAL, Provider(), budget=Budget(daily_usd=1.0))
    caller_error = make_router(ServiceMode.HYBRID, Provider(ProviderError("no", status=400)))
    for router in (hybrid, real, caller_error):
        router.subscribe(calls.append)

    async def main() -> None:
        await hybrid.call("embed", "a")  # retries exhausted, and the breaker trips
        await hybrid.call("embed", "b")  # served by the mock without touching the guard
        hybrid.mode = ServiceMode.MOCK
        await hybrid.call("embed", "c")
        await real.call("embed", "d", cost=0.6)
        with pytest.raises(BudgetExceeded):
            await real.call("embed", "e", cost=0.6)
        with pytest.raises(ProviderError):
            await caller_error.call("embed", "f")

    run_virtual(main())
    assert calls == [
        RoutedCall("embed", "emb", "retries_exhausted", "mock"),
        RoutedCall("embed", "emb", "circuit_open", "mock"),
        RoutedCall("embed", "emb", "mode", "mock"),
        RoutedCall("embed", "emb", "ok", "real"),
        RoutedCall("embed", "emb", "budget", "real"),
        RoutedCall("embed", "emb", "caller", "real"),
    ]


def test_a_broken_subscriber_never_breaks_the_call(events: Events) -> None:
    def broken(_: RoutedCall) -> None:
        raise RuntimeError("listener bug")

    seen: list[RoutedCall] = []
    router = make_router(ServiceMode.REAL, Provider())
    router.subscribe(broken)
    router.subscribe(seen.append)
    routed = run_virtual(router.call("embed", "a"))
    assert (routed.value, routed.path) == ("real:a", "real")
    assert seen == [RoutedCall("embed", "emb", "ok", "real")]
    (error,) = events.of("router.subscriber_error")
    assert error["capability"] == "embed"
    assert "listener bug" in error["error"]
