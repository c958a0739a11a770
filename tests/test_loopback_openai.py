"""The OpenAI client against the emulator over real loopback HTTP, through Router + Guard.

Every test serves `simulations.emulators.Emulator` on 127.0.0.1 and sends
with the real `AiohttpTransport`; the loop is asyncio's own, so time here is
real, and timing claims are made on the loop clock (`loop.time()`). "Official"
vectors are the emulator's deterministic ones, fetched as plain JSON floats
from a clean emulator, so they do not depend on our base64 decoder.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from providers.openai.client import (
    DEFAULT_MODEL,
    MAX_REQUEST_INPUTS,
    MAX_REQUEST_TOKENS,
    Embeddings,
    OpenAIConfig,
    OpenAIEmbeddings,
)
from providers.openai.mock import MockEmbedder
from resilience import (
    BreakerPolicy,
    CircuitOpen,
    Guard,
    ProviderError,
    RetryPolicy,
    Router,
    ServiceMode,
    Transition,
)
from simulations.emulators import Emulator, FaultPlan, OpenAIPlan, RunningEmulator
from tests.events import Events
from tests.loopback import Wire, serving, transport

KEY = "sk-loopback-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
EMBEDDINGS = "POST /v1/embeddings"
HELLO_7500 = "hello" + " hello" * 7499
"""7,500 tokens: "hello" and each " hello" are one cl100k token apiece."""
TEXTS = [f"document {n}: the {word} report" for n, word in enumerate("abcdefghijkl" * 2)]


def config(running: RunningEmulator, *, read_timeout_s: float = 5.0) -> OpenAIConfig:
    return OpenAIConfig(
        api_key=KEY, base_url=running.openai_base_url, read_timeout_s=read_timeout_s
    )


@asynccontextmanager
async def client_of(
    running: RunningEmulator,
    wire: Wire | None = None,
    *,
    read_timeout_s: float = 5.0,
    dimensions: int | None = None,
) -> AsyncIterator[OpenAIEmbeddings]:
    async with transport(wire) as sender:
        yield OpenAIEmbeddings(
            config(running, read_timeout_s=read_timeout_s), sender, dimensions=dimensions
        )


def routed(
    client: OpenAIEmbeddings,
    *,
    mode: ServiceMode = ServiceMode.HYBRID,
    policy: BreakerPolicy | None = None,
    attempts: int = 1,
) -> Router:
    guard = Guard(
        "openai",
        policy or BreakerPolicy(failure_threshold=5),
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, rng=random.Random(7)),
    )
    router = Router(mode)
    mock = MockEmbedder(dimensions=client.dimensions)
    router.register("embed", real=client.embed_batch, mock=mock.embed_batch, guard=guard)
    return router


async def official(texts: list[str], *, dimensions: int | None = None) -> list[list[float]]:
    """The emulator's vectors for `texts`, as JSON floats from a clean emulator."""
    body: dict[str, Any] = {"model": DEFAULT_MODEL, "input": texts, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    async with (
        serving(Emulator(seed=99)) as running,
        aiohttp.ClientSession() as session,
        session.post(f"{running.openai_base_url}/embeddings", json=body, headers=AUTH) as answer,
    ):
        assert answer.status == 200
        document = await answer.json()
    data = sorted(document["data"], key=lambda item: item["index"])
    assert [item["index"] for item in data] == list(range(len(texts)))
    return [item["embedding"] for item in data]


def assert_all_real(result: Embeddings, count: int) -> None:
    assert len(result.vectors) == count
    assert result.paths == ["real"] * count
    assert result.reasons == [None] * count
    assert not result.degraded


# -- 1. batching bounds ------------------------------------------------------------


def test_2500_short_inputs_go_in_two_requests_and_none_is_refused() -> None:
    texts = [f"short input number {n}" for n in range(2500)]

    async def main() -> None:
        emulator = Emulator(seed=1)
        async with serving(emulator) as running, client_of(running, dimensions=64) as client:
            assert [len(batch) for batch in client.plan(texts)] == [MAX_REQUEST_INPUTS, 452]
            result = await client.embed(texts, routed(client))
            # The inputs either side of the request boundary, checked against the emulator.
            edge = [2046, 2047, 2048, 2049]
            expected = await official([texts[n] for n in edge], dimensions=64)
        assert_all_real(result, 2500)
        assert [result.vectors[n] for n in edge] == expected
        assert client.stats.requests == 2
        stats = emulator.stats()
        assert stats.requests == {EMBEDDINGS: {200: 2}}  # no 400: 2,048 inputs was accepted

    asyncio.run(main())


def test_inputs_over_300k_tokens_are_cut_at_the_limit_and_none_is_refused() -> None:
    texts = [HELLO_7500] * 41  # 307,500 tokens

    async def main() -> None:
        emulator = Emulator(seed=1)
        async with serving(emulator) as running, client_of(running) as client:
            batches = client.plan(texts)
            # The first request carries exactly the 300,000 tokens the API allows.
            assert [batch.tokens for batch in batches] == [MAX_REQUEST_TOKENS, 7500]
            result = await client.embed(texts, routed(client))
            (expected,) = await official([HELLO_7500])
        assert_all_real(result, 41)
        assert result.vectors == [expected] * 41
        assert client.stats.requests == 2
        assert emulator.stats().requests == {EMBEDDINGS: {200: 2}}

    asyncio.run(main())


# -- 2. base64, order by index, partial batches --------------------------------------


def test_base64_vectors_decode_to_the_official_float_vectors() -> None:
    async def main() -> None:
        wire = Wire()
        async with serving(Emulator(seed=2)) as running, client_of(running, wire) as client:
            result = await client.embed(TEXTS, routed(client))
        assert [exchange.json()["encoding_format"] for exchange in wire.exchanges] == ["base64"]
        assert_all_real(result, len(TEXTS))
        assert result.vectors == await official(TEXTS)
        assert all(len(vector) == 1536 for vector in result.vectors)

    asyncio.run(main())


def test_shuffled_items_are_put_back_in_input_order_by_index() -> None:
    plan = FaultPlan(openai=OpenAIPlan(shuffle_rate=1.0))

    async def main() -> None:
        emulator = Emulator(seed=2, faults=plan)
        async with serving(emulator) as running, client_of(running) as client:
            result = await client.embed(TEXTS, routed(client))
        assert emulator.stats().faults["openai"]["shuffled"] == 1
        assert_all_real(result, len(TEXTS))
        assert result.vectors == await official(TEXTS)

    asyncio.run(main())


def test_a_partial_batch_resends_only_the_missing_input(events: Events) -> None:
    # Seed 3 malforms the first answer and not the second (the stats below say so);
    # shuffling first makes the dropped item a random one rather than the last.
    plan = FaultPlan(
        seed=3,
        openai=OpenAIPlan(malformed_rate=0.5, malformed_kinds=("missing_item",), shuffle_rate=1.0),
    )

    async def main() -> None:
        emulator = Emulator(faults=plan)
        wire = Wire()
        async with serving(emulator) as running, client_of(running, wire) as client:
            result = await client.embed(TEXTS, routed(client), correlation_id="job-7")
        faults = emulator.stats().faults["openai"]
        assert (faults["malformed"], faults["shuffled"]) == (1, 2)
        first, resend = (exchange.json()["input"] for exchange in wire.exchanges)
        assert first == TEXTS
        assert len(resend) == 1
        assert resend[0] in TEXTS
        assert (client.stats.requests, client.stats.retried_missing) == (2, 1)
        [event] = events.of("openai.partial_batch")
        assert (event["missing"], event["correlation_id"]) == (1, "job-7")
        assert_all_real(result, len(TEXTS))
        assert result.vectors == await official(TEXTS)

    asyncio.run(main())


# -- 3. a 429's retry-after-ms is honoured ------------------------------------------


def test_a_429_is_retried_no_sooner_than_its_retry_after_ms() -> None:
    # 1,000 tokens a minute: the first request spends them all, so the second must
    # wait for 5 tokens to refill (about 0.3 s).
    plan = FaultPlan(openai=OpenAIPlan(tpm=1000))
    first = "hello" + " hello" * 999
    second = "hello hello hello hello hello"

    async def main() -> None:
        emulator = Emulator(seed=4, faults=plan)
        wire = Wire()
        async with serving(emulator) as running, client_of(running, wire) as client:
            router = routed(client, attempts=3)
            assert not (await client.embed([first], router)).degraded
            result = await client.embed([second], router)
        assert_all_real(result, 1)
        assert result.vectors == await official([second])
        statuses = [exchange.status for exchange in wire.exchanges]
        assert statuses == [200, 429, 200]
        limited, retried = wire.exchanges[1], wire.exchanges[2]
        asked_s = int(limited.headers["retry-after-ms"]) / 1000.0
        assert 0.1 < asked_s < 1.0
        assert limited.ended is not None
        gap = retried.started - limited.ended
        assert asked_s <= gap <= asked_s + 0.5
        assert client.stats.rate_limited == 1
        assert emulator.stats().rate_limited == 1
        assert emulator.stats().requests == {EMBEDDINGS: {200: 2, 429: 1}}

    asyncio.run(main())


# -- 4 and 5. an outage opens the breaker; the heal closes it -------------------------

OUTAGE = FaultPlan(openai=OpenAIPlan(outages=((0.0, 3600.0),), outage_status=503))
COOLDOWN_S = 0.3


class Watcher:
    """Records every breaker transition and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[Transition] = []
        self._changed = asyncio.Event()

    def __call__(self, change: Transition) -> None:
        self.seen.append(change)
        self._changed.set()

    @property
    def moves(self) -> list[tuple[str, str]]:
        return [(change.source, change.dest) for change in self.seen]

    async def until(self, dest: str, timeout_s: float = 2.0) -> Transition:
        async with asyncio.timeout(timeout_s):
            while True:
                for change in self.seen:
                    if change.dest == dest:
                        return change
                self._changed.clear()
                await self._changed.wait()


def outage_router(client: OpenAIEmbeddings) -> tuple[Router, Watcher]:
    policy = BreakerPolicy(failure_threshold=2, cooldown_s=COOLDOWN_S)
    router = routed(client, policy=policy, attempts=2)
    watcher = Watcher()
    router.guard("embed").breaker.subscribe(watcher)
    return router, watcher


async def open_by_outage(
    emulator: Emulator, client: OpenAIEmbeddings, router: Router
) -> tuple[Embeddings, Embeddings, int]:
    """Trip the breaker in an outage, then embed while it is open.

    Returns both results and how many requests reached the emulator while open.
    """
    mock = MockEmbedder()
    tripped = await client.embed(["alpha", "beta"], router)
    breaker = router.guard("embed").breaker
    assert breaker.state == "open"
    before = emulator.stats().count(EMBEDDINGS)
    while_open = await client.embed(["gamma", "delta", "alpha"], router)
    assert breaker.state == "open"
    reached = emulator.stats().count(EMBEDDINGS) - before
    assert tripped.vectors == [mock.vector("alpha"), mock.vector("beta")]
    assert while_open.vectors == [mock.vector(t) for t in ("gamma", "delta", "alpha")]
    return tripped, while_open, reached


def test_an_outage_opens_the_breaker_and_hybrid_serves_the_mock_without_calling() -> None:
    async def main() -> None:
        emulator = Emulator(seed=5, faults=OUTAGE)
        async with serving(emulator) as running, client_of(running) as client:
            router, watcher = outage_router(client)
            tripped, while_open, reached = await open_by_outage(emulator, client, router)
        assert tripped.degraded
        assert tripped.paths == ["mock", "mock"]
        assert tripped.reasons == ["retries_exhausted"] * 2
        assert while_open.degraded
        assert while_open.paths == ["mock"] * 3
        assert while_open.reasons == ["circuit_open"] * 3
        assert reached == 0  # not one request while the breaker was open
        stats = emulator.stats()
        assert stats.requests == {EMBEDDINGS: {503: 2}}  # the try and its retry
        assert stats.faults["openai"]["outage"] == 2
        assert watcher.moves == [("closed", "open")]
        assert watcher.seen[0].trigger == "trip"

    asyncio.run(main())


def test_after_the_heal_a_probe_closes_the_breaker_and_results_are_real_again() -> None:
    async def main() -> None:
        emulator = Emulator(seed=5, faults=OUTAGE)
        async with serving(emulator) as running, client_of(running) as client:
            router, watcher = outage_router(client)
            await open_by_outage(emulator, client, router)
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{running.base_url}/_control/faults", json={}) as healed,
            ):
                assert healed.status == 200
            half_open = await watcher.until("half_open")
            tripped_at = watcher.seen[0].at
            assert COOLDOWN_S <= half_open.at - tripped_at <= COOLDOWN_S + 0.5
            before = emulator.stats().count(EMBEDDINGS, 200)
            result = await client.embed(TEXTS, router)
            probes = emulator.stats().count(EMBEDDINGS, 200) - before
        breaker = router.guard("embed").breaker
        assert breaker.state == "closed"
        assert watcher.moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        assert probes == 1
        assert_all_real(result, len(TEXTS))
        assert result.vectors == await official(TEXTS)

    asyncio.run(main())


# -- 6. a hang ends in the client's timeout ------------------------------------------


def test_a_hang_times_out_counts_as_a_failure_and_raises_in_real_mode() -> None:
    timeout_s = 0.3
    plan = FaultPlan(openai=OpenAIPlan(hang_rate=1.0))

    async def main() -> None:
        emulator = Emulator(seed=6, faults=plan)
        loop = asyncio.get_running_loop()
        async with (
            serving(emulator) as running,
            client_of(running, read_timeout_s=timeout_s) as client,
        ):
            policy = BreakerPolicy(failure_threshold=2, cooldown_s=30.0)
            router = routed(client, mode=ServiceMode.REAL, policy=policy)
            breaker = router.guard("embed").breaker
            assert breaker.consecutive_failures == 0
            for failures in (1, 2):
                started = loop.time()
                with pytest.raises(ProviderError) as raised:
                    await client.embed(["hang on"], router)
                elapsed = loop.time() - started
                assert type(raised.value) is ProviderError
                assert (raised.value.status, raised.value.code) == (None, "timeout")
                assert timeout_s <= elapsed <= timeout_s + 0.5
                if failures == 1:
                    assert (breaker.consecutive_failures, breaker.state) == (1, "closed")
            assert breaker.state == "open"
            with pytest.raises(CircuitOpen):
                await client.embed(["hang on"], router)
        assert emulator.stats().faults["openai"]["hang"] == 2  # the third never left

    asyncio.run(main())


# -- 7. a malformed answer is a ProviderError without a status and a breaker failure ----


@pytest.mark.parametrize("kind", ["invalid_json", "wrong_shape", "wrong_dims"])
def test_a_malformed_answer_is_a_provider_error_that_trips_the_breaker(kind: str) -> None:
    plan = FaultPlan(openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=(kind,)))

    async def main() -> None:
        emulator = Emulator(seed=7, faults=plan)
        async with serving(emulator) as running, client_of(running) as client:
            policy = BreakerPolicy(failure_threshold=1, cooldown_s=30.0)
            router = routed(client, mode=ServiceMode.REAL, policy=policy)
            with pytest.raises(ProviderError) as raised:
                await client.embed(TEXTS, router)
            breaker = router.guard("embed").breaker
        assert type(raised.value) is ProviderError
        assert (raised.value.status, raised.value.code) == (None, "malformed_response")
        assert raised.value.request_id is not None
        assert raised.value.request_id.startswith("req_")
        assert breaker.state == "open"
        assert emulator.stats().faults["openai"]["malformed"] == 1

    asyncio.run(main())


def test_a_persistently_short_answer_ends_in_a_provider_error() -> None:
    plan = FaultPlan(openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=("missing_item",)))

    async def main() -> None:
        emulator = Emulator(seed=7, faults=plan)
        async with serving(emulator) as running, client_of(running) as client:
            router = routed(client, mode=ServiceMode.REAL)
            with pytest.raises(ProviderError) as raised:
                await client.embed(["one", "two"], router)
        # The first answer is short (one of two); the re-send of the missing one
        # comes back empty, which is a malformed answer, not a partial one.
        assert type(raised.value) is ProviderError
        assert (raised.value.status, raised.value.code) == (None, "malformed_response")
        assert client.stats.retried_missing == 1
        assert emulator.stats().faults["openai"]["malformed"] == 2

    asyncio.run(main())


def test_a_persistently_short_answer_counts_against_the_breaker() -> None:
    plan = FaultPlan(openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=("missing_item",)))

    async def main() -> None:
        emulator = Emulator(seed=7, faults=plan)
        async with serving(emulator) as running, client_of(running) as client:
            policy = BreakerPolicy(failure_threshold=1, cooldown_s=30.0)
            router = routed(client, mode=ServiceMode.REAL, policy=policy)
            with pytest.raises(ProviderError):
                await client.embed(["one", "two"], router)
            assert router.guard("embed").breaker.state == "open"

    asyncio.run(main())


def test_a_malformed_answer_in_hybrid_mode_is_served_by_the_mock() -> None:
    plan = FaultPlan(openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=("wrong_dims",)))

    async def main() -> None:
        emulator = Emulator(seed=7, faults=plan)
        async with serving(emulator) as running, client_of(running) as client:
            router = routed(client, attempts=2)
            result = await client.embed(["alpha"], router)
        assert (result.paths, result.reasons) == (["mock"], ["retries_exhausted"])
        assert result.vectors == [MockEmbedder().vector("alpha")]
        assert emulator.stats().faults["openai"]["malformed"] == 2

    asyncio.run(main())
