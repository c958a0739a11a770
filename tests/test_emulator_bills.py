"""OpenAI's bills (`Emulator.openai_bills`) and its `lost_answer_rate`: the ground truth of
what the emulated provider charged and which vectors reached the client.

In-process on virtual time, as the other emulator suites.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from providers.transport import HttpRequest, HttpResponse
from simulations.emulators import (
    Emulator,
    FaultPlan,
    FaultPlanError,
    InProcessTransport,
    OpenAIPlan,
    plan_from_json,
    plan_to_json,
)
from simulations.emulators.bills import OpenAIBill
from simulations.emulators.stats import CORRELATION_HEADER, NEVER_ANSWERED, UNCORRELATED
from tests.loopback import in_process

SMALL = "text-embedding-3-small"


def embed(
    inputs: list[Any], *, model: str = SMALL, dimensions: int | None = 8, cid: str | None = "job-1"
) -> HttpRequest:
    document: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    if dimensions is not None:
        document["dimensions"] = dimensions
    headers = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
    if cid is not None:
        headers[CORRELATION_HEADER] = cid
    return HttpRequest(
        "POST", "http://emulator.test/v1/embeddings", headers, orjson.dumps(document)
    )


def exchange(
    emulator: Emulator, requests: list[HttpRequest], *, timeout_s: float = 30.0
) -> list[HttpResponse | None]:
    """Each request's answer, or None when the client gave up after `timeout_s`."""

    async def scenario(transport: InProcessTransport) -> list[HttpResponse | None]:
        answers: list[HttpResponse | None] = []
        for request in requests:
            try:
                async with asyncio.timeout(timeout_s):
                    answers.append(await transport.send(request))
            except TimeoutError:
                answers.append(None)
        return answers

    return in_process(emulator, scenario)


def test_a_200_is_billed_on_the_emulators_own_price_list_with_what_it_served() -> None:
    emulator = Emulator()
    [answer] = exchange(emulator, [embed([[1] * 5, [2] * 7])])
    assert answer is not None
    assert answer.status == 200
    [bill] = emulator.openai_bills()
    assert (bill.correlation_id, bill.model, bill.dimensions, bill.native_dims) == (
        "job-1",
        SMALL,
        8,
        1536,
    )
    assert bill.inputs == ((1,) * 5, (2,) * 7)
    assert bill.tokens == 12
    assert bill.usd == pytest.approx(12 * 0.02 / 1_000_000)
    assert (bill.outcome, bill.delivered) == ("answered", frozenset({0, 1}))
    assert bill.request_id == answer.headers["x-request-id"]
    served = {item["index"]: item["embedding"] for item in answer.json()["data"]}
    assert served == {0: bill.vector(0), 1: bill.vector(1)}
    assert dict(bill.served()) == {0: (1,) * 5, 1: (2,) * 7}


@pytest.mark.parametrize(
    ("model", "usd_per_million"),
    [("text-embedding-3-large", 0.13), ("text-embedding-ada-002", 0.10)],
)
def test_each_model_bills_at_its_list_price(model: str, usd_per_million: float) -> None:
    emulator = Emulator()
    [answer] = exchange(emulator, [embed([[1] * 1000], model=model, dimensions=None)])
    assert answer is not None
    assert answer.status == 200
    [bill] = emulator.openai_bills()
    assert bill.usd == pytest.approx(1000 * usd_per_million / 1_000_000)


def test_a_request_without_a_correlation_id_is_billed_as_uncorrelated() -> None:
    emulator = Emulator()
    exchange(emulator, [embed(["hello"], cid=None)])
    assert [bill.correlation_id for bill in emulator.openai_bills()] == [UNCORRELATED]


def test_requests_the_provider_never_admitted_are_not_billed() -> None:
    plan = FaultPlan(openai=OpenAIPlan(rpm=1))
    emulator = Emulator(faults=plan)
    answers = exchange(
        emulator,
        [
            embed(["first"]),  # admitted: the one bill
            embed(["second"]),  # 429: the minute's one request is spent
            embed([""]),  # 400: a blank input
        ],
    )
    assert [a.status if a is not None else None for a in answers] == [200, 429, 400]
    assert [bill.inputs for bill in emulator.openai_bills()] == [("first",)]


def test_faults_before_the_handler_bill_nothing() -> None:
    for plan in (OpenAIPlan(error_rate=1.0), OpenAIPlan(hang_rate=1.0)):
        emulator = Emulator(faults=FaultPlan(openai=plan))
        [answer] = exchange(emulator, [embed(["x"])], timeout_s=5.0)
        assert answer is None or answer.status == 503
        assert emulator.openai_bills() == ()


def test_a_lost_answer_is_billed_and_hangs_until_the_client_gives_up() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(lost_answer_rate=1.0)))
    [answer] = exchange(emulator, [embed([[1] * 4])], timeout_s=20.0)
    assert answer is None
    [bill] = emulator.openai_bills()
    assert (bill.outcome, bill.delivered, bill.tokens) == ("lost", frozenset(), 4)
    stats = emulator.stats()
    assert stats.faults["openai"]["lost_answer"] == 1
    # It was admitted: the rate limits were charged, though no answer was sent.
    assert stats.arrivals == [(0.0, NEVER_ANSWERED, 4)]


def test_lost_answers_are_drawn_from_their_own_generator_and_replay() -> None:
    def outcomes(plan: OpenAIPlan) -> list[tuple[str, bool]]:
        emulator = Emulator(seed=3, faults=FaultPlan(openai=plan))
        answers = exchange(emulator, [embed([f"n{n}"]) for n in range(40)], timeout_s=1.0)
        bills = emulator.openai_bills()
        return [(bill.outcome, a is None) for bill, a in zip(bills, answers, strict=True)]

    half = outcomes(OpenAIPlan(lost_answer_rate=0.5, malformed_rate=0.3))
    assert half == outcomes(OpenAIPlan(lost_answer_rate=0.5, malformed_rate=0.3))
    assert {"lost", "answered"} <= {outcome for outcome, _ in half}
    assert all((outcome == "lost") == gone for outcome, gone in half)
    # Turning lost answers off leaves every other draw as it was.
    others = outcomes(OpenAIPlan(malformed_rate=0.3))
    assert "malformed" in {outcome for outcome, _ in others}
    for (with_lost, _), (without, _) in zip(half, others, strict=True):
        assert with_lost in ("lost", without)


def by_outcome(plan: OpenAIPlan, inputs: list[Any]) -> tuple[OpenAIBill, Any]:
    emulator = Emulator(faults=FaultPlan(openai=plan))
    [answer] = exchange(emulator, [embed(inputs)])
    assert answer is not None
    assert answer.status == 200
    [bill] = emulator.openai_bills()
    return bill, answer


@pytest.mark.parametrize("kind", ["invalid_json", "wrong_shape", "wrong_dims"])
def test_a_garbled_answer_is_billed_and_delivers_nothing(kind: str) -> None:
    bill, _ = by_outcome(OpenAIPlan(malformed_rate=1.0, malformed_kinds=(kind,)), ["a", "b"])
    assert (bill.outcome, bill.delivered) == ("malformed", frozenset())
    assert bill.tokens > 0


def test_an_answer_missing_an_item_still_delivers_the_others_intact() -> None:
    plan = OpenAIPlan(malformed_rate=1.0, malformed_kinds=("missing_item",), shuffle_rate=1.0)
    bill, answer = by_outcome(plan, ["a", "b", "c", "d"])
    items = answer.json()["data"]
    kept = frozenset(item["index"] for item in items)
    assert len(kept) == 3
    assert (bill.outcome, bill.delivered) == ("malformed", kept)
    assert all(item["embedding"] == bill.vector(item["index"]) for item in items)


def test_reset_forgets_the_bills() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> tuple[int, int]:
        await transport.send(embed(["x"]))
        before = len(emulator.openai_bills())
        emulator.reset()
        return before, len(emulator.openai_bills())

    assert in_process(emulator, scenario) == (1, 0)


def test_lost_answer_rate_is_validated_and_round_trips_through_json() -> None:
    with pytest.raises(FaultPlanError, match=r"openai\.lost_answer_rate: must be between 0 and 1"):
        plan_from_json({"openai": {"lost_answer_rate": 2}})
    plan = plan_from_json({"openai": {"lost_answer_rate": 0.25}})
    assert plan.openai.lost_answer_rate == 0.25
    assert plan_from_json(plan_to_json(plan)) == plan
