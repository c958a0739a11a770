"""The mock embedder: deterministic unit vectors shaped like the real client's results."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from providers.openai.client import Batch, OpenAIConfig, OpenAIEmbeddings
from providers.openai.mock import MockEmbedder
from providers.transport import HttpRequest, HttpResponse
from resilience import Guard, ProviderError, Router, ServiceMode
from resilience.testing import run_virtual

REPO = Path(__file__).resolve().parent.parent


class Unreachable:
    """A network that must never be used: the mock path sends nothing."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        raise AssertionError(f"the mock path sent {request!r}")


def batch_of(*texts: str, dimensions: int | None = None) -> Batch:
    client = OpenAIEmbeddings(OpenAIConfig("sk-unused"), Unreachable(), dimensions=dimensions)
    [batch] = client.plan(list(texts))
    return batch


@pytest.mark.parametrize(
    ("model", "dimensions", "length"),
    [
        ("text-embedding-3-small", None, 1536),
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-ada-002", None, 1536),
        ("text-embedding-3-large", 256, 256),
    ],
)
def test_unit_vectors_of_the_models_dimension(
    model: str, dimensions: int | None, length: int
) -> None:
    vector = MockEmbedder(model, dimensions).vector("some text")
    assert len(vector) == length
    assert math.hypot(*vector) == pytest.approx(1.0)


def test_the_same_text_always_gives_the_same_vector() -> None:
    first, second = MockEmbedder(), MockEmbedder()
    assert first.vector("alpha") == second.vector("alpha")
    assert first.vector("alpha") != first.vector("beta")


def test_vectors_are_the_same_in_another_process() -> None:
    """Seeded from SHA-256, not from Python's per-process string hash."""
    script = "from providers.openai.mock import MockEmbedder; print(MockEmbedder().vector('a')[:4])"
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] == f"{MockEmbedder().vector('a')[:4]}\n"


def test_embed_batch_has_the_real_clients_shape_at_no_cost() -> None:
    batch = batch_of("alpha", "beta", dimensions=64)
    mock = MockEmbedder(dimensions=64)
    result = run_virtual(mock.embed_batch(batch))
    assert result.vectors == {0: mock.vector("alpha"), 1: mock.vector("beta")}
    assert result.missing == []
    assert result.tokens == batch.tokens
    assert result.cost_usd == 0.0
    assert mock.calls == 1


def test_ada_002_refuses_dimensions() -> None:
    with pytest.raises(ValueError, match="does not accept dimensions"):
        MockEmbedder("text-embedding-ada-002", 256)


def test_latency_runs_on_the_loop_clock() -> None:
    mock = MockEmbedder(dimensions=8, latency_s=2.5)

    async def scenario() -> float:
        await mock.embed_batch(batch_of("alpha", dimensions=8))
        return asyncio.get_running_loop().time()

    assert run_virtual(scenario()) == 2.5


def test_failures_are_raised_in_turn_then_calls_succeed() -> None:
    boom = ProviderError("scripted", status=503)
    mock = MockEmbedder(dimensions=8, failures=[boom, None, TimeoutError()])
    batch = batch_of("alpha", dimensions=8)

    async def scenario() -> list[str]:
        outcomes = []
        for _ in range(4):
            try:
                await mock.embed_batch(batch)
            except (ProviderError, TimeoutError) as exc:
                outcomes.append(type(exc).__name__)
            else:
                outcomes.append("ok")
        return outcomes

    assert run_virtual(scenario()) == ["ProviderError", "ok", "TimeoutError", "ok"]


def test_serves_a_router_in_mock_mode_without_touching_the_network() -> None:
    client = OpenAIEmbeddings(OpenAIConfig("sk-unused"), Unreachable(), dimensions=8)
    mock = MockEmbedder(dimensions=8)
    router = Router(ServiceMode.MOCK)
    router.register("embed", real=client.embed_batch, mock=mock.embed_batch, guard=Guard("openai"))
    result = run_virtual(client.embed(["alpha", "beta"], router))
    assert result.vectors == [mock.vector("alpha"), mock.vector("beta")]
    assert result.paths == ["mock", "mock"]
    assert result.reasons == ["mode", "mode"]
    assert client.stats.requests == 0
