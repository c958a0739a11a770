"""The emulator's arrival journal: who called which route when, and how each request ended.

The chaos oracle judges breakers and leases from it, so it must hold every
routed request of either provider, faulted or not, answered or abandoned,
with the caller's tag and correlation id exactly as sent.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from providers.transport import HttpRequest
from simulations.emulators import (
    Emulator,
    FaultPlan,
    InProcessTransport,
    LlamaParsePlan,
    OpenAIPlan,
)
from simulations.emulators.journal import CLIENT_HEADER, UNTAGGED, Arrival
from simulations.emulators.stats import CORRELATION_HEADER, NEVER_ANSWERED, UNCORRELATED
from tests.loopback import in_process

EMBEDDINGS = "POST /v1/embeddings"


def embed(**headers: str) -> HttpRequest:
    body = orjson.dumps({"model": "text-embedding-3-small", "input": ["hello"]})
    base = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    return HttpRequest("POST", "http://api.openai.test/v1/embeddings", base | headers, body)


def job_status(**headers: str) -> HttpRequest:
    base = {"Authorization": "Bearer llx-test"}
    url = "http://llamaparse.test/api/v1/parsing/job/nope"
    return HttpRequest("GET", url, base | headers, b"")


def tagged(client: str, cid: str) -> dict[str, str]:
    return {CLIENT_HEADER: client, CORRELATION_HEADER: cid}


def test_each_provider_s_routed_requests_are_journaled_with_tag_and_correlation_id() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> None:
        await transport.send(embed(**tagged("3", "job-a")))
        await asyncio.sleep(1.5)
        await transport.send(job_status(**tagged("4", "job-b")))
        await transport.send(embed())  # neither tag nor id
        unrouted = HttpRequest("GET", "http://api.openai.test/v1/embeddings", {}, b"")
        await transport.send(unrouted)

    in_process(emulator, scenario)
    first, second, third = emulator.arrivals()
    assert first == Arrival(0.0, "openai", EMBEDDINGS, "job-a", "3", 200, 0.0, 0.0, None)
    assert (second.provider, second.route) == ("llamaparse", "GET /api/v1/parsing/job/{job_id}")
    assert (second.received_at, second.client, second.correlation_id) == (1.5, "4", "job-b")
    assert second.status == 404
    assert second.answered_at == 1.5
    assert second.failed
    assert (third.client, third.correlation_id) == (UNTAGGED, UNCORRELATED)
    assert not first.failed
    assert not third.failed


def test_answer_time_follows_latency_and_a_served_fault_is_named() -> None:
    plan = FaultPlan(openai=OpenAIPlan(latency_s=(4.0, 4.0), malformed_rate=1.0))
    emulator = Emulator(faults=plan)
    in_process(emulator, lambda transport: transport.send(embed(**tagged("0", "job-a"))))
    [arrival] = emulator.arrivals()
    assert (arrival.received_at, arrival.answered_at, arrival.ended_at) == (0.0, 4.0, 4.0)
    assert arrival.status == 200
    assert arrival.fault == "malformed"
    assert arrival.failed


def test_an_outage_answer_is_a_served_failure() -> None:
    emulator = Emulator(faults=FaultPlan(llamaparse=LlamaParsePlan(outages=((0.0, 60.0),))))
    in_process(emulator, lambda transport: transport.send(job_status()))
    [arrival] = emulator.arrivals()
    assert (arrival.status, arrival.fault, arrival.failed) == (503, "outage", True)


def test_a_request_the_caller_gave_up_on_ended_then_without_an_answer() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(hang_rate=1.0)))

    async def scenario(transport: InProcessTransport) -> Arrival:
        await asyncio.sleep(2.0)
        sending = asyncio.ensure_future(transport.send(embed(**tagged("1", "job-a"))))
        await asyncio.sleep(0)
        [in_flight] = emulator.arrivals()
        assert in_flight.ended_at is None
        assert not in_flight.failed
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await sending
        return in_flight

    arrival = in_process(emulator, scenario)
    assert (arrival.received_at, arrival.ended_at, arrival.answered_at) == (2.0, 32.0, None)
    assert (arrival.status, arrival.fault, arrival.failed) == (NEVER_ANSWERED, "hang", True)


def test_reset_forgets_the_journal_with_the_other_records() -> None:
    emulator = Emulator()
    in_process(emulator, lambda transport: transport.send(embed()))
    assert len(emulator.arrivals()) == 1
    emulator.reset()
    assert emulator.arrivals() == ()
