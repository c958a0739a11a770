"""The official `openai` SDK, over real loopback HTTP, accepts the emulator as OpenAI.

The SDK asks for base64 unless told otherwise and decodes it itself, so
these tests cover the format our own client does not use by default too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import openai
import pytest

from simulations.emulators import Emulator, FaultPlan, OpenAIPlan, start

T = TypeVar("T")
SMALL = "text-embedding-3-small"


def with_sdk(
    scenario: Callable[[openai.AsyncOpenAI, Emulator], Awaitable[T]],
    plan: FaultPlan | None = None,
    *,
    max_retries: int = 0,
) -> T:
    """Run `scenario` against a fresh emulator on 127.0.0.1 and an SDK client pointed at it."""

    async def main() -> T:
        emulator = Emulator(seed=11, faults=plan)
        running = await start(emulator)
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=running.openai_base_url, max_retries=max_retries
        )
        try:
            return await scenario(client, emulator)
        finally:
            await client.close()
            await running.close()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("model", "dimensions", "size"),
    [(SMALL, None, 1536), ("text-embedding-3-large", None, 3072), (SMALL, 256, 256)],
)
def test_default_and_float_encodings_give_identical_vectors(
    model: str, dimensions: int | None, size: int
) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog", "naïve café ☕"]

    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        size_asked = openai.omit if dimensions is None else dimensions
        default = await client.embeddings.create(model=model, input=texts, dimensions=size_asked)
        floats = await client.embeddings.create(
            model=model, input=texts, encoding_format="float", dimensions=size_asked
        )
        assert [item.index for item in default.data] == [0, 1, 2]
        assert default.model == model
        assert default.usage.prompt_tokens == default.usage.total_tokens > 0
        for packed, plain in zip(default.data, floats.data, strict=True):
            assert len(packed.embedding) == len(plain.embedding) == size
            assert packed.embedding == plain.embedding
            assert math.fsum(v * v for v in plain.embedding) == pytest.approx(1.0, abs=1e-5)
        assert default.data[0].embedding != default.data[1].embedding

    with_sdk(scenario)


def test_the_sdk_asked_for_base64_and_got_a_string() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        raw = await client.embeddings.with_raw_response.create(model=SMALL, input="hello")
        wire = raw.http_response.json()
        assert isinstance(wire["data"][0]["embedding"], str)
        assert raw.request_id is not None
        assert raw.request_id.startswith("req_")
        assert len(raw.request_id) == 36
        parsed = raw.parse()
        assert len(parsed.data[0].embedding) == 1536

    with_sdk(scenario)


def test_vectors_are_the_same_across_calls_and_emulators() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> list[float]:
        first = await client.embeddings.create(model=SMALL, input="stable", dimensions=8)
        again = await client.embeddings.create(model=SMALL, input=["other", "stable"], dimensions=8)
        assert again.data[1].embedding == first.data[0].embedding
        return first.data[0].embedding

    assert with_sdk(scenario) == with_sdk(scenario)


@pytest.mark.parametrize("bad_input", ["", [], [""], ["a", ""], ["   "], ["x"] * 2049], ids=repr)
def test_bad_inputs_raise_bad_request(bad_input: object) -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model=SMALL, input=bad_input)  # type: ignore[arg-type]
        error = caught.value
        assert error.status_code == 400
        assert error.body == {
            "message": "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        assert error.request_id is not None

    with_sdk(scenario)


def test_dimensions_on_ada_is_a_bad_request() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
            await client.embeddings.create(model="text-embedding-ada-002", input="a", dimensions=8)

    with_sdk(scenario)


def test_rpm_limit_raises_rate_limit_error_with_retry_headers() -> None:
    async def scenario(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
        for _ in range(2):
            await client.embeddings.create(model=SMALL, input="ok")
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model=SMALL, input="one too many")
        error = caught.value
        assert isinstance(error.body, dict)
        assert error.body["type"] == "requests"
        assert error.body["code"] == "rate_limit_exceeded"
        assert "on requests per min (RPM): Limit 2, Used 2, Requested 1" in error.body["message"]
        retry_after = int(error.response.headers["retry-after"])
        assert 1 <= retry_after <= 30
        assert 0 < float(error.response.headers["retry-after-ms"]) <= retry_after * 1000
        assert emulator.stats().rate_limited == 1

    with_sdk(scenario, FaultPlan(openai=OpenAIPlan(rpm=2)))


def test_tpm_limit_raises_rate_limit_error_naming_tokens() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        await client.embeddings.create(model=SMALL, input="one two three four five six")
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model=SMALL, input="seven eight nine ten eleven")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["type"] == "tokens"
        assert "on tokens per min (TPM): Limit 10, Used 6, Requested 5" in str(caught.value)

    with_sdk(scenario, FaultPlan(openai=OpenAIPlan(tpm=10)))


def test_the_sdk_waits_out_a_429_and_succeeds_on_retry() -> None:
    # 6,000 TPM refills 100 tokens a second. The first call spends the whole minute, so the
    # second (100 tokens) is told to wait about 1 s; the SDK honours that and gets through.
    async def scenario(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
        await client.embeddings.create(model=SMALL, input=[[1] * 6000])
        second = await client.embeddings.create(model=SMALL, input=[[2] * 100])
        assert second.usage.total_tokens == 100
        stats = emulator.stats()
        assert stats.count("POST /v1/embeddings", 200) == 2
        assert stats.count("POST /v1/embeddings", 429) == 1

    with_sdk(scenario, FaultPlan(openai=OpenAIPlan(tpm=6000)), max_retries=2)


def test_exhausted_quota_is_a_rate_limit_error_without_retry_after() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model=SMALL, input="x")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == caught.value.body["type"] == "insufficient_quota"
        assert "retry-after" not in caught.value.response.headers

    with_sdk(scenario, FaultPlan(openai=OpenAIPlan(quota_exhausted=True)))


def test_unknown_model_is_not_found() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="text-embedding-4-huge", input="x")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "model_not_found"

    with_sdk(scenario)


def test_injected_outage_is_an_internal_server_error() -> None:
    async def scenario(client: openai.AsyncOpenAI, _: Emulator) -> None:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.embeddings.create(model=SMALL, input="x")
        assert caught.value.status_code == 503

    with_sdk(scenario, FaultPlan(openai=OpenAIPlan(outages=((0.0, 3600.0),))))
