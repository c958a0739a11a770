"""OpenAI's `shuffle_rate`: a 200's `data` items in a seeded random order, each keeping its index.

In-process on virtual time, as the other emulator suites; the loopback suite
(`test_loopback_openai`) shows the client putting shuffled items back.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.transport import HttpRequest
from simulations.emulators import (
    Emulator,
    FaultPlan,
    FaultPlanError,
    InProcessTransport,
    OpenAIPlan,
    plan_from_json,
    plan_to_json,
)
from tests.loopback import in_process

SMALL = "text-embedding-3-small"
INPUTS = [f"input {n}" for n in range(12)]


def embed(inputs: list[str] = INPUTS) -> HttpRequest:
    return HttpRequest(
        "POST",
        "http://emulator.test/v1/embeddings",
        {"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
        # Eight dimensions: small answers keep the many-request tests fast.
        orjson.dumps(
            {"model": SMALL, "input": inputs, "encoding_format": "float", "dimensions": 8}
        ),
    )


def answers(plan: FaultPlan, requests: int = 1, *, seed: int = 0) -> list[Any]:
    """The JSON documents (or None for a non-200) of `requests` identical requests."""

    async def scenario(transport: InProcessTransport) -> list[Any]:
        documents = []
        for _ in range(requests):
            answer = await transport.send(embed())
            documents.append(answer.json() if answer.status == 200 else None)
        return documents

    return in_process(Emulator(seed=seed, faults=plan), scenario)


def order(document: Any) -> list[int]:
    return [item["index"] for item in document["data"]]


def by_index(document: Any) -> dict[int, list[float]]:
    return {item["index"]: item["embedding"] for item in document["data"]}


def test_a_shuffled_answer_holds_the_same_items_in_another_order() -> None:
    emulator = Emulator(seed=1, faults=FaultPlan(openai=OpenAIPlan(shuffle_rate=1.0)))

    async def scenario(transport: InProcessTransport) -> Any:
        return (await transport.send(embed())).json()

    shuffled = in_process(emulator, scenario)
    (clean,) = answers(FaultPlan())
    assert order(clean) == list(range(len(INPUTS)))
    assert sorted(order(shuffled)) == list(range(len(INPUTS)))
    assert order(shuffled) != list(range(len(INPUTS)))
    assert by_index(shuffled) == by_index(clean)  # each index keeps its own vector
    assert shuffled["usage"] == clean["usage"]
    assert emulator.stats().faults["openai"]["shuffled"] == 1


def test_without_the_fault_items_stay_in_order_and_nothing_is_counted() -> None:
    emulator = Emulator(seed=1)

    async def scenario(transport: InProcessTransport) -> list[list[int]]:
        return [order((await transport.send(embed())).json()) for _ in range(5)]

    assert in_process(emulator, scenario) == [list(range(len(INPUTS)))] * 5
    assert emulator.stats().faults["openai"]["shuffled"] == 0
    assert emulator.stats().faults["llamaparse"]["shuffled"] == 0


def test_shuffles_are_seeded_and_about_as_frequent_as_the_rate() -> None:
    plan = FaultPlan(seed=11, openai=OpenAIPlan(shuffle_rate=0.5))
    first = [order(document) for document in answers(plan, 100)]
    shuffled = sum(o != list(range(len(INPUTS))) for o in first)
    assert 30 <= shuffled <= 70
    assert [order(document) for document in answers(plan, 100)] == first
    other = FaultPlan(seed=12, openai=OpenAIPlan(shuffle_rate=0.5))
    assert [order(document) for document in answers(other, 100)] != first


def test_shuffling_leaves_the_other_faults_draws_unchanged() -> None:
    def statuses(shuffle_rate: float) -> list[bool]:
        plan = FaultPlan(seed=3, openai=OpenAIPlan(error_rate=0.3, shuffle_rate=shuffle_rate))
        return [document is None for document in answers(plan, 100)]

    calm = statuses(0.0)
    assert 15 <= sum(calm) <= 45
    assert statuses(1.0) == calm


def test_a_shuffled_missing_item_answer_loses_a_random_item() -> None:
    plan = FaultPlan(
        seed=4,
        openai=OpenAIPlan(shuffle_rate=1.0, malformed_rate=1.0, malformed_kinds=("missing_item",)),
    )
    lost = set()
    for document in answers(plan, 20):
        kept = order(document)
        assert len(kept) == len(set(kept)) == len(INPUTS) - 1
        (missing,) = set(range(len(INPUTS))) - set(kept)
        lost.add(missing)
    assert len(lost) > 1  # not always the last index


def test_the_rate_is_read_from_json_checked_and_written_back() -> None:
    plan = plan_from_json({"openai": {"shuffle_rate": 0.25}})
    assert plan.openai.shuffle_rate == 0.25
    assert plan_to_json(plan)["openai"]["shuffle_rate"] == 0.25
    assert plan_from_json(plan_to_json(plan)) == plan
    assert plan_from_json({}).openai.shuffle_rate == 0.0


@pytest.mark.parametrize("value", [1.5, -0.1, "often", True])
def test_a_bad_rate_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(FaultPlanError) as refused:
        plan_from_json({"openai": {"shuffle_rate": value}})
    assert refused.value.field == "openai.shuffle_rate"


def test_a_bad_rate_from_python_is_refused_too() -> None:
    with pytest.raises(FaultPlanError) as refused:
        OpenAIPlan(shuffle_rate=2.0)
    assert refused.value.field == "shuffle_rate"
    assert "between 0 and 1" in str(refused.value)


def test_llamaparse_has_no_shuffle_rate() -> None:
    with pytest.raises(FaultPlanError) as refused:
        plan_from_json({"llamaparse": {"shuffle_rate": 1.0}})
    assert refused.value.field == "llamaparse.shuffle_rate"
