"""The OpenAI embeddings client against canned HTTP answers: no server, no sockets.

`FakeNetwork` stands in for the network only (a `Transport`); every class of
ours runs for real, the router and guard included.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from providers.openai.client import (
    MAX_INPUT_TOKENS,
    MAX_REQUEST_INPUTS,
    MAX_REQUEST_TOKENS,
    Batch,
    OpenAIConfig,
    OpenAIEmbeddings,
)
from providers.openai.mock import MockEmbedder
from providers.tokens import count_tokens
from providers.transport import HttpRequest, HttpResponse, TransportError
from resilience import (
    BreakerPolicy,
    Budget,
    ConfigError,
    ErrorClass,
    Guard,
    ProviderError,
    RetryPolicy,
    Router,
    ServiceMode,
    TokenBucket,
    classify,
    correlation,
)
from resilience.testing import run_virtual
from tests.events import Events

KEY = "sk-test-SECRET123"
CONFIG = OpenAIConfig(KEY, base_url="http://emulator.test/v1/")
DIMS = 8
HELLO_9000 = "hello" + " hello" * 8999
"""9,000 tokens: "hello" and each " hello" are one token apiece."""

Responder = Callable[[HttpRequest], HttpResponse]


class FakeNetwork:
    """A test double of the network: answers in turn, the last answer forever after."""

    def __init__(self, *answers: HttpResponse | Responder) -> None:
        self.answers = list(answers)
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer if isinstance(answer, HttpResponse) else answer(request)

    def inputs(self, n: int) -> list[str]:
        inputs: list[str] = orjson.loads(self.requests[n].body)["input"]
        return inputs


class Silence:
    """A network that never answers."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(math.inf)
        raise AssertionError("unreachable")


def b64(values: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def basis(position: int, dims: int = DIMS) -> list[float]:
    """The vector the canned server returns for the input at `position` of a request."""
    return [1.0 if i == position % dims else 0.0 for i in range(dims)]


def reply(
    *,
    drop: Sequence[int] = (),
    reverse: bool = False,
    dims: int = DIMS,
    headers: dict[str, str] | None = None,
) -> Responder:
    """A 200 like OpenAI's for whatever the request asked, minus the `drop`ped positions."""

    def respond(request: HttpRequest) -> HttpResponse:
        inputs = orjson.loads(request.body)["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": b64(basis(i, dims))}
            for i in range(len(inputs))
            if i not in drop
        ]
        tokens = sum(count_tokens(text) for text in inputs)
        body = {
            "object": "list",
            "data": data[::-1] if reverse else data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return HttpResponse.build(
            200, {"x-request-id": "req_ok", **(headers or {})}, orjson.dumps(body)
        )

    return respond


def error(status: int, message: str, kind: str, code: str | None, **headers: str) -> HttpResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return HttpResponse.build(status, {"x-request-id": "req_err", **headers}, orjson.dumps(body))


def client(network: Any, **options: Any) -> OpenAIEmbeddings:
    options.setdefault("dimensions", DIMS)
    return OpenAIEmbeddings(CONFIG, network, **options)


def one_batch(embedder: OpenAIEmbeddings, *texts: str) -> Batch:
    [batch] = embedder.plan(list(texts))
    return batch


def router_for(
    embedder: OpenAIEmbeddings,
    mock: MockEmbedder,
    *,
    mode: ServiceMode = ServiceMode.HYBRID,
    attempts: int = 2,
    budget: Budget | None = None,
) -> Router:
    guard = Guard(
        "openai",
        BreakerPolicy(failure_threshold=5),
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, rng=random.Random(0)),
        budget=budget,
    )
    router = Router(mode)
    router.register("embed", real=embedder.embed_batch, mock=mock.embed_batch, guard=guard)
    return router


# -- configuration -------------------------------------------------------------


def test_config_from_env_reads_every_variable_and_hides_the_key() -> None:
    config = OpenAIConfig.from_env(
        {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
            "OPENAI_ORG_ID": "org-1",
            "OPENAI_PROJECT_ID": "proj-1",
        }
    )
    assert (config.api_key, config.base_url) == (KEY, "http://127.0.0.1:8080/v1")
    assert (config.organization, config.project) == ("org-1", "proj-1")
    assert (config.connect_timeout_s, config.read_timeout_s) == (5.0, 60.0)
    assert KEY not in repr(config)
    assert KEY not in repr(client(FakeNetwork(reply())))
    defaults = OpenAIConfig.from_env({"OPENAI_API_KEY": KEY, "OPENAI_ORG_ID": " "})
    assert defaults.base_url == "https://api.openai.com/v1"
    assert defaults.organization is None


@pytest.mark.parametrize("environ", [{}, {"OPENAI_API_KEY": "  "}])
def test_config_from_env_requires_the_key(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIConfig.from_env(environ)


def test_ada_002_refuses_dimensions_before_any_request() -> None:
    network = FakeNetwork(reply())
    with pytest.raises(ValueError, match="text-embedding-ada-002 does not accept dimensions"):
        OpenAIEmbeddings(CONFIG, network, model="text-embedding-ada-002", dimensions=512)
    assert network.requests == []
    assert (
        OpenAIEmbeddings(CONFIG, network, model="text-embedding-ada-002").vector_dimensions == 1536
    )


@pytest.mark.parametrize(
    ("model", "dimensions"),
    [
        ("text-embedding-3-small", 0),
        ("text-embedding-3-small", 1537),
        ("text-embedding-3-large", 3073),
    ],
)
def test_dimensions_must_be_within_the_native_size(model: str, dimensions: int) -> None:
    with pytest.raises(ValueError, match=r"must be 1\.\."):
        OpenAIEmbeddings(CONFIG, FakeNetwork(reply()), model=model, dimensions=dimensions)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'text-embedding-4'.*text-embedding-3-small"):
        OpenAIEmbeddings(CONFIG, FakeNetwork(reply()), model="text-embedding-4")


# -- planning ------------------------------------------------------------------


def test_2049_short_inputs_make_two_requests() -> None:
    batches = client(FakeNetwork(reply())).plan([f"text {i}" for i in range(2049)])
    assert [len(batch) for batch in batches] == [MAX_REQUEST_INPUTS, 1]
    assert batches[1].indices == (2048,)
    assert batches[0].tokens == sum(count_tokens(f"text {i}") for i in range(2048))
    assert batches[0].estimated_cost_usd == pytest.approx(batches[0].tokens * 0.02 / 1e6)


def test_650k_tokens_make_exactly_three_requests() -> None:
    text = "hello" + " hello" * 6499  # 6,500 tokens
    batches = client(FakeNetwork(reply())).plan([text] * 100)
    assert sum(batch.tokens for batch in batches) == 650_000
    assert len(batches) == 3 == math.ceil(650_000 / MAX_REQUEST_TOKENS)
    assert all(batch.tokens <= MAX_REQUEST_TOKENS for batch in batches)
    assert [i for batch in batches for i in batch.indices] == list(range(100))


def test_every_request_but_the_last_is_full() -> None:
    """Next-fit's guarantee, which makes it minimal unless the total sits just under a multiple."""
    rng = random.Random(3)
    sizes = [rng.choice([3, 40, 900, 5000, 8191]) for _ in range(500)]
    texts = ["hello" + " hello" * (size - 1) for size in sizes]
    batches = client(FakeNetwork(reply())).plan(texts)
    assert sum(batch.tokens for batch in batches) == sum(sizes)
    for batch in batches[:-1]:
        assert (
            len(batch) == MAX_REQUEST_INPUTS or batch.tokens > MAX_REQUEST_TOKENS - MAX_INPUT_TOKENS
        )
    assert len(batches) == math.ceil(sum(sizes) / MAX_REQUEST_TOKENS)


def test_a_small_tokens_bucket_caps_each_request() -> None:
    bucket = TokenBucket(100_000, 100_000 / 60)
    text = "hello" + " hello" * 6499
    batches = client(FakeNetwork(reply()), buckets=(None, bucket)).plan([text] * 100)
    assert all(batch.tokens <= 100_000 for batch in batches)
    assert len(batches) == 7


def test_a_long_input_is_truncated_counted_and_logged(events: Events) -> None:
    embedder = client(FakeNetwork(reply()))
    [batch] = embedder.plan(["short", HELLO_9000])
    assert batch.indices == (0, 1)
    assert batch.token_counts == (1, MAX_INPUT_TOKENS)
    assert HELLO_9000.startswith(batch.texts[1])
    assert embedder.stats.truncated == 1
    [event] = events.of("openai.long_input")
    assert (event["index"], event["tokens"], event["action"], event["pieces"]) == (
        1,
        9000,
        "truncated",
        1,
    )


def test_a_long_input_can_be_split_instead(events: Events) -> None:
    embedder = client(FakeNetwork(reply()), long_inputs="split")
    [batch] = embedder.plan([HELLO_9000, "short"])
    assert batch.indices == (0, 0, 1)
    assert batch.token_counts == (8191, 809, 1)
    assert "".join(batch.texts[:2]) == HELLO_9000
    assert embedder.stats.split == 1
    [event] = events.of("openai.long_input")
    assert (event["index"], event["action"], event["pieces"]) == (0, "split", 2)


@pytest.mark.parametrize(("texts", "index"), [(["ok", " \n\t"], 1), (["", "ok"], 0)])
def test_a_blank_input_is_refused_before_anything_is_sent(texts: list[str], index: int) -> None:
    network = FakeNetwork(reply())
    embedder = client(network)
    router = router_for(embedder, MockEmbedder(dimensions=DIMS))
    with pytest.raises(ValueError, match=f"input {index} is empty or whitespace only"):
        run_virtual(embedder.embed(texts, router))
    assert network.requests == []


# -- one request ---------------------------------------------------------------


def test_one_post_with_the_documented_headers_and_body() -> None:
    network = FakeNetwork(reply())
    config = OpenAIConfig(KEY, "http://emulator.test/v1", organization="org-1", project="proj-1")
    embedder = OpenAIEmbeddings(config, network, dimensions=DIMS)
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "a", "b")))
    [request] = network.requests
    assert (request.method, request.url) == ("POST", "http://emulator.test/v1/embeddings")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["OpenAI-Organization"] == "org-1"
    assert request.headers["OpenAI-Project"] == "proj-1"
    assert orjson.loads(request.body) == {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "encoding_format": "base64",
        "dimensions": DIMS,
    }
    assert result.request_id == "req_ok"
    assert embedder.stats.requests == 1


def test_unset_organization_project_and_dimensions_are_not_sent() -> None:
    network = FakeNetwork(reply(dims=1536))
    embedder = OpenAIEmbeddings(CONFIG, network)
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    [request] = network.requests
    assert "OpenAI-Organization" not in request.headers
    assert "OpenAI-Project" not in request.headers
    assert "dimensions" not in orjson.loads(request.body)
    assert len(result.vectors[0]) == 1536


def test_base64_float32_round_trip() -> None:
    values = [0.5, -0.25, 0.1, 1e-3, -3.0, 0.0, 7.25, 1 / 3]
    body = {
        "data": [{"object": "embedding", "index": 0, "embedding": b64(values)}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }
    embedder = client(FakeNetwork(HttpResponse.build(200, {}, orjson.dumps(body))))
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert result.vectors[0] == list(struct.unpack("<8f", struct.pack("<8f", *values)))


def test_items_are_put_back_in_order_by_index() -> None:
    embedder = client(FakeNetwork(reply(reverse=True)))
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "a", "b", "c")))
    assert result.vectors == {position: basis(position) for position in range(3)}
    assert result.missing == []


def test_a_short_response_is_a_partial_batch_not_an_error() -> None:
    embedder = client(FakeNetwork(reply(drop=[1])))
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "alpha", "beta", "gamma")))
    assert sorted(result.vectors) == [0, 2]
    assert result.missing == [1]
    assert result.tokens == 3
    assert result.cost_usd == pytest.approx(3 * 0.02 / 1e6)


def test_numbers_from_a_compatible_server_are_accepted() -> None:
    body = {
        "data": [{"index": 0, "embedding": [1, 0.5, 0, 0, 0, 0, 0, 0]}],
        "usage": {"total_tokens": 1},
    }
    embedder = client(FakeNetwork(HttpResponse.build(200, {}, orjson.dumps(body))))
    result = run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert result.vectors[0] == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


GOOD = b64(basis(0))
USAGE = {"prompt_tokens": 1, "total_tokens": 1}


def body_with(*items: Any, usage: Any = USAGE) -> bytes:
    return orjson.dumps({"object": "list", "data": list(items), "usage": usage})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>gateway</html>", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(orjson.dumps({"usage": USAGE}), id="no-data"),
        pytest.param(orjson.dumps({"data": {}, "usage": USAGE}), id="data-not-a-list"),
        pytest.param(body_with({"index": 0, "embedding": GOOD}, usage=None), id="no-usage"),
        pytest.param(
            body_with({"index": 0, "embedding": GOOD}, usage={"total_tokens": "1"}), id="bad-usage"
        ),
        pytest.param(body_with({"index": 2, "embedding": GOOD}), id="index-out-of-range"),
        pytest.param(body_with({"index": -1, "embedding": GOOD}), id="negative-index"),
        pytest.param(body_with({"index": True, "embedding": GOOD}), id="boolean-index"),
        pytest.param(body_with({"embedding": GOOD}), id="no-index"),
        pytest.param(
            body_with({"index": 0, "embedding": GOOD}, {"index": 0, "embedding": GOOD}),
            id="duplicate-index",
        ),
        pytest.param(body_with({"index": 0, "embedding": b64([1.0] * 7)}), id="wrong-dimension"),
        pytest.param(body_with({"index": 0, "embedding": [1.0] * 9}), id="wrong-dimension-floats"),
        pytest.param(body_with({"index": 0, "embedding": "not base64!"}), id="bad-base64"),
        pytest.param(body_with({"index": 0, "embedding": b64([math.nan] + [0.0] * 7)}), id="nan"),
        pytest.param(body_with({"index": 0, "embedding": b64([0.0] * 7 + [math.inf])}), id="inf"),
        pytest.param(body_with({"index": 0, "embedding": {"v": 1}}), id="embedding-object"),
        pytest.param(body_with({"index": 0, "embedding": ["1"] * 8}), id="embedding-strings"),
        pytest.param(body_with("item"), id="item-not-an-object"),
    ],
)
def test_a_malformed_response_is_a_provider_error_without_a_status(
    body: bytes, events: Events
) -> None:
    embedder = client(FakeNetwork(HttpResponse.build(200, {"x-request-id": "req_bad"}, body)))
    with pytest.raises(ProviderError, match="malformed") as raised, correlation.bound("c-1"):
        run_virtual(embedder.embed_batch(one_batch(embedder, "a", "b")))
    # No status: the 200 was billed, so the guard must keep its charge, not refund it.
    assert (raised.value.status, raised.value.code) == (None, "malformed_response")
    assert raised.value.request_id == "req_bad"
    assert classify(raised.value) is ErrorClass.FAILURE
    [event] = events.of("provider.error")
    assert (event["status"], event["code"], event["correlation_id"]) == (
        None,
        "malformed_response",
        "c-1",
    )


# -- errors --------------------------------------------------------------------


def test_a_429_rate_limit_pauses_the_buckets(events: Events) -> None:
    requests, tokens = TokenBucket(100, 100 / 60), TokenBucket(10_000, 10_000 / 60)
    answer = error(
        429,
        "Rate limit reached",
        "requests",
        "rate_limit_exceeded",
        **{"retry-after-ms": "250", "retry-after": "1"},
    )
    embedder = client(FakeNetwork(answer), buckets=(requests, tokens))
    guard = Guard("openai", requests=requests, tokens=tokens, retry=RetryPolicy(max_attempts=1))
    # The guard, not the client, pauses the buckets: the batch goes through it.
    send = guard.protect(units=lambda batch, **_: batch.tokens)(embedder.embed_batch)

    async def scenario() -> tuple[ProviderError, float]:
        await asyncio.sleep(10)
        with pytest.raises(ProviderError) as raised, correlation.bound("c-9"):
            await send(one_batch(embedder, "a"))
        return raised.value, asyncio.get_running_loop().time()

    raised, now = run_virtual(scenario())
    assert (raised.status, raised.code, raised.retry_after_s) == (429, "rate_limit_exceeded", 0.25)
    assert classify(raised) is ErrorClass.RATE_LIMITED
    assert requests.paused_until == tokens.paused_until == now + 0.25
    assert embedder.stats.rate_limited == 1
    [event] = events.of("provider.error")
    assert event["provider"] == "openai"
    assert (event["status"], event["code"]) == (429, "rate_limit_exceeded")
    assert (event["request_id"], event["correlation_id"]) == ("req_err", "c-9")


def test_insufficient_quota_is_a_quota_error_and_pauses_nothing() -> None:
    answer = error(
        429,
        "You exceeded your current quota",
        "insufficient_quota",
        "insufficient_quota",
        **{"retry-after": "20"},
    )
    bucket = TokenBucket(100, 100 / 60)
    embedder = client(FakeNetwork(answer), buckets=(bucket, None))
    with pytest.raises(ProviderError) as raised:
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert (raised.value.status, raised.value.code) == (429, "insufficient_quota")
    assert classify(raised.value) is ErrorClass.QUOTA
    assert bucket.paused_until == 0.0
    assert embedder.stats.rate_limited == 1


def test_a_401_names_the_variable_and_never_the_key(events: Events) -> None:
    answer = error(
        401, f"Incorrect API key provided: {KEY}.", "invalid_request_error", "invalid_api_key"
    )
    embedder = client(FakeNetwork(answer))
    with pytest.raises(ProviderError) as raised:
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert raised.value.status == 401
    assert classify(raised.value) is ErrorClass.CONFIGURATION
    assert "OPENAI_API_KEY" in str(raised.value)
    assert KEY not in str(raised.value)
    assert KEY not in repr(raised.value)
    assert KEY not in repr(events.records)
    assert events.of("provider.error")[0]["status"] == 401


def test_a_400_carries_the_servers_message() -> None:
    message = "'$.input' is invalid. Please check the API reference."
    embedder = client(FakeNetwork(error(400, message, "invalid_request_error", None)))
    with pytest.raises(ProviderError) as raised:
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert raised.value.status == 400
    assert message in str(raised.value)
    assert raised.value.code == "invalid_request_error"
    assert classify(raised.value) is ErrorClass.CALLER


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_a_failure(status: int) -> None:
    embedder = client(FakeNetwork(error(status, "The server had an error", "server_error", None)))
    with pytest.raises(ProviderError) as raised:
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    assert raised.value.status == status
    assert classify(raised.value) is ErrorClass.FAILURE


def test_no_answer_within_the_read_timeout_is_a_failure(events: Events) -> None:
    config = OpenAIConfig(KEY, read_timeout_s=60)
    embedder = OpenAIEmbeddings(config, Silence(), dimensions=DIMS)

    async def scenario() -> tuple[ProviderError, float]:
        with pytest.raises(ProviderError) as raised:
            await embedder.embed_batch(one_batch(embedder, "a"))
        return raised.value, asyncio.get_running_loop().time()

    raised, now = run_virtual(scenario())
    assert now == 60.0
    assert (raised.status, raised.code) == (None, "timeout")
    assert classify(raised) is ErrorClass.FAILURE
    assert events.of("provider.error")[0]["code"] == "timeout"


def test_a_transport_error_is_reported_and_raised(events: Events) -> None:
    class Refused:
        async def send(self, request: HttpRequest) -> HttpResponse:
            raise TransportError("POST http://emulator.test/v1/embeddings: ClientConnectorError")

    embedder = OpenAIEmbeddings(CONFIG, Refused(), dimensions=DIMS)
    with pytest.raises(TransportError), correlation.bound("c-3"):
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    [event] = events.of("provider.error")
    assert (event["status"], event["correlation_id"]) == (None, "c-3")


# -- rate-limit headers -----------------------------------------------------------

LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "100",
    "x-ratelimit-remaining-requests": "10",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "10000",
    "x-ratelimit-remaining-tokens": "500",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_rate_limit_headers_lower_the_buckets() -> None:
    requests, tokens = TokenBucket(100, 1), TokenBucket(10_000, 1)
    embedder = client(FakeNetwork(reply(headers=LIMIT_HEADERS)), buckets=(requests, tokens))

    async def scenario() -> tuple[float, float]:
        await embedder.embed_batch(one_batch(embedder, "a"))
        return requests.level(), tokens.level()

    assert run_virtual(scenario()) == (10.0, 500.0)


def test_rate_limit_headers_on_an_error_count_too() -> None:
    bucket = TokenBucket(100, 1)
    answer = error(503, "overloaded", "server_error", None, **LIMIT_HEADERS)
    embedder = client(FakeNetwork(answer), buckets=(bucket, None))

    async def scenario() -> float:
        with pytest.raises(ProviderError):
            await embedder.embed_batch(one_batch(embedder, "a"))
        return bucket.level()

    assert run_virtual(scenario()) == 10.0


def test_missing_or_negative_rate_limit_headers_change_nothing() -> None:
    requests, tokens = TokenBucket(100, 1), TokenBucket(10_000, 1)
    headers = {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "-1"}
    embedder = client(FakeNetwork(reply(headers=headers)), buckets=(requests, tokens))

    async def scenario() -> tuple[float, float]:
        await embedder.embed_batch(one_batch(embedder, "a"))
        return requests.level(), tokens.level()

    assert run_virtual(scenario()) == (100.0, 10_000.0)


def test_nothing_remaining_empties_the_bucket_but_does_not_wait_for_the_reset() -> None:
    # OpenAI's reset is the time until the limit is full again; it refills from now.
    bucket = TokenBucket(100, 1)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m40s"}
    embedder = client(FakeNetwork(reply(headers=headers)), buckets=(bucket, None))

    async def scenario() -> tuple[float, float, float]:
        await embedder.embed_batch(one_batch(embedder, "a"))
        level = bucket.level()
        await bucket.acquire(1)
        return level, bucket.paused_until, asyncio.get_running_loop().time()

    assert run_virtual(scenario()) == pytest.approx((0.0, 0.0, 1.0))


# -- embed: the whole list through a real router --------------------------------


def test_embed_serves_every_input_real_and_in_order() -> None:
    network = FakeNetwork(reply(reverse=True))
    embedder = client(network)
    texts = [f"text {i}" for i in range(2050)]
    result = run_virtual(embedder.embed(texts, router_for(embedder, MockEmbedder(dimensions=DIMS))))
    assert len(network.requests) == 2
    assert result.vectors[:3] == [basis(0), basis(1), basis(2)]
    assert result.vectors[2049] == basis(1)  # the second request's position 1
    assert result.paths == ["real"] * 2050
    assert result.reasons == [None] * 2050
    assert not result.degraded


def test_embed_falls_back_to_the_mock_when_openai_fails() -> None:
    network = FakeNetwork(error(503, "overloaded", "server_error", None))
    embedder = client(network)
    mock = MockEmbedder(dimensions=DIMS)
    texts = ["alpha", "beta"]
    result = run_virtual(embedder.embed(texts, router_for(embedder, mock, attempts=2)))
    assert len(network.requests) == 2  # the guard's retry, then the fallback
    assert result.degraded
    assert result.paths == ["mock", "mock"]
    assert result.reasons == ["retries_exhausted", "retries_exhausted"]
    assert result.vectors == [mock.vector("alpha"), mock.vector("beta")]


def test_embed_resends_only_the_missing_inputs(events: Events) -> None:
    network = FakeNetwork(reply(drop=[1]), reply())
    embedder = client(network)
    texts = ["alpha", "beta", "gamma"]
    router = router_for(embedder, MockEmbedder(dimensions=DIMS))
    result = run_virtual(embedder.embed(texts, router, correlation_id="job-1"))
    assert network.inputs(1) == ["beta"]
    assert result.vectors == [basis(0), basis(0), basis(2)]  # beta came back at position 0
    assert result.paths == ["real"] * 3
    assert embedder.stats.retried_missing == 1
    [event] = events.of("openai.partial_batch")
    assert (event["missing"], event["batch"], event["retry"]) == (1, 0, 1)
    assert event["correlation_id"] == "job-1"
    sent = [request.headers[correlation.HEADER] for request in network.requests]
    assert sent == ["job-1", "job-1"]  # the batch and its re-send of the missing input


def test_an_input_never_answered_is_a_failure_and_hybrid_serves_the_mock() -> None:
    network = FakeNetwork(reply(drop=[0]))
    embedder = client(network)
    router = router_for(embedder, MockEmbedder(dimensions=DIMS))
    result = run_virtual(embedder.embed(["alpha", "beta"], router))
    # "beta" came back; each re-send of "alpha" alone came back empty: malformed,
    # counted by the breaker and retried, then served by the mock.
    assert result.paths == ["mock", "real"]
    assert result.reasons[0] == "retries_exhausted"
    assert result.vectors[0] == MockEmbedder(dimensions=DIMS).vector("alpha")
    assert [network.inputs(n) for n in range(1, len(network.requests))] == [["alpha"]] * 2
    assert router.guard("embed").breaker.consecutive_failures == 2
    assert embedder.stats.retried_missing == 1


def test_embed_gives_up_after_three_partial_resends() -> None:
    # Each answer holds one more input, so every re-send is partial, never empty.
    answers = [reply(drop=[0, 1, 2, 3]), reply(drop=[0, 1, 2]), reply(drop=[0, 1]), reply(drop=[0])]
    embedder = client(FakeNetwork(*answers))
    router = router_for(embedder, MockEmbedder(dimensions=DIMS), mode=ServiceMode.REAL)
    with pytest.raises(ProviderError) as raised:
        run_virtual(embedder.embed(["a", "b", "c", "d", "e"], router))
    assert (raised.value.status, raised.value.code) == (502, "partial_batch")
    assert embedder.stats.retried_missing == 4 + 3 + 2


def test_embed_averages_split_pieces_to_a_unit_vector() -> None:
    embedder = client(FakeNetwork(reply()), long_inputs="split")
    router = router_for(embedder, MockEmbedder(dimensions=DIMS))
    result = run_virtual(embedder.embed([HELLO_9000, "short"], router))
    norm = math.hypot(8191, 809)  # the pieces' token counts weigh basis(0) and basis(1)
    assert result.vectors[0] == pytest.approx([8191 / norm, 809 / norm] + [0.0] * 6)
    assert math.hypot(*result.vectors[0]) == pytest.approx(1.0)
    assert result.vectors[1] == basis(2)


def test_embed_settles_the_budget_at_the_actual_cost() -> None:
    embedder = client(FakeNetwork(reply()))
    budget = Budget(daily_usd=1.0, scope="openai")
    router = router_for(embedder, MockEmbedder(dimensions=DIMS), budget=budget)
    texts = ["hello world", "tiktoken is great!"]  # 2 + 6 tokens

    async def scenario() -> tuple[float, int]:
        await embedder.embed(texts, router)
        return await budget.spent("day")

    spent, requests = run_virtual(scenario())
    assert spent == pytest.approx(8 * 0.02 / 1e6)
    assert requests == 1


def test_provider_errors_carry_the_embed_correlation_id(events: Events) -> None:
    embedder = client(FakeNetwork(error(503, "overloaded", "server_error", None)))
    router = router_for(embedder, MockEmbedder(dimensions=DIMS), attempts=1)
    run_virtual(embedder.embed(["alpha"], router, correlation_id="job-7"))
    assert [e["correlation_id"] for e in events.of("provider.error")] == ["job-7"]
    assert events.of("fallback.served")[0]["correlation_id"] == "job-7"


def test_a_request_carries_the_bound_correlation_id_and_none_without_one() -> None:
    network = FakeNetwork(reply())
    embedder = client(network)
    with correlation.bound("abc-123"):
        run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    run_virtual(embedder.embed_batch(one_batch(embedder, "a")))
    tagged, untagged = network.requests
    assert tagged.headers[correlation.HEADER] == "abc-123"
    assert correlation.HEADER not in untagged.headers
    assert correlation.current() is None  # the binding ended with its block


def test_a_mock_of_another_size_is_refused() -> None:
    embedder = client(FakeNetwork(reply()))
    router = router_for(embedder, MockEmbedder(dimensions=16), mode=ServiceMode.MOCK)
    with pytest.raises(ValueError, match="16-dimension vector"):
        run_virtual(embedder.embed(["alpha"], router))
