"""The emulator's record of embeddings arrivals, and `max_in_window` over it.

Rate tests check that what clients sent together stayed within a limit over
every 60-second window; they need each request's arrival time, the status it
got and the tokens it was charged, for every request, faulted or not.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.transport import HttpRequest
from simulations.emulators import Emulator, FaultPlan, InProcessTransport, OpenAIPlan
from simulations.emulators.stats import NEVER_ANSWERED, max_in_window
from tests.loopback import in_process

SMALL = "text-embedding-3-small"


def embed(tokens: int = 5, *, model: str = SMALL) -> HttpRequest:
    """A request for `tokens` tokens exactly: one input given as token ids."""
    body = orjson.dumps({"model": model, "input": [[1] * tokens]})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    return HttpRequest("POST", "http://api.openai.test/v1/embeddings", headers, body)


# -- max_in_window -------------------------------------------------------------


def test_no_arrivals_weigh_nothing() -> None:
    assert max_in_window([], 60.0) == 0.0


def test_one_arrival_is_its_own_weight_as_a_float() -> None:
    heaviest = max_in_window([(12.5, 7)], 60.0)
    assert heaviest == 7.0
    assert isinstance(heaviest, float)


def test_arrivals_exactly_a_window_apart_never_share_one() -> None:
    assert max_in_window([(0.0, 1), (60.0, 1)], 60.0) == 1.0
    assert max_in_window([(0.0, 1), (59.999, 1)], 60.0) == 2.0


def test_arrivals_at_the_same_moment_all_count() -> None:
    assert max_in_window([(5.0, 1)] * 4 + [(70.0, 1)], 60.0) == 4.0


def test_the_order_given_does_not_matter() -> None:
    arrivals = [(100.0, 1), (0.0, 1), (130.0, 1), (10.0, 1), (150.0, 1)]
    assert max_in_window(arrivals, 60.0) == 3.0  # 100, 130, 150
    assert max_in_window(sorted(arrivals), 60.0) == 3.0


def test_weights_can_be_tokens() -> None:
    arrivals = [(0.0, 900), (30.0, 200), (61.0, 500), (65.0, 400)]
    assert max_in_window(arrivals, 60.0) == 1100.0  # 0 and 30; or 30, 61 and 65
    assert max_in_window(arrivals, 5.0) == 900.0


def test_a_zero_or_negative_window_and_negative_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        max_in_window([(0.0, 1)], 0.0)
    with pytest.raises(ValueError, match="window_s"):
        max_in_window([(0.0, 1)], -1.0)
    with pytest.raises(ValueError, match="negative"):
        max_in_window([(0.0, 1), (1.0, -1)], 60.0)


def _heaviest_by_brute_force(arrivals: list[tuple[int, int]], window: int) -> int:
    """With whole-second times and window, every window holds what one starting
    on a whole second does, so trying each of those covers every window."""
    if not arrivals:
        return 0
    times = [time for time, _ in arrivals]
    return max(
        sum(weight for time, weight in arrivals if start <= time < start + window)
        for start in range(min(times) - window, max(times) + 1)
    )


@given(
    arrivals=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 1000)),
        max_size=40,
    ),
    window=st.integers(1, 120),
)
def test_max_in_window_agrees_with_trying_every_window(
    arrivals: list[tuple[int, int]], window: int
) -> None:
    as_floats = [(float(time), weight) for time, weight in arrivals]
    assert max_in_window(as_floats, float(window)) == _heaviest_by_brute_force(arrivals, window)


# -- the arrivals the emulator records -------------------------------------------


def test_answered_requests_arrive_with_status_and_the_tokens_charged() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(rpm=2)))

    async def scenario(transport: InProcessTransport) -> list[int]:
        statuses = []
        for tokens in (10, 20, 30):  # the third is over the RPM limit
            statuses.append((await transport.send(embed(tokens))).status)
            await asyncio.sleep(1.0)
        statuses.append((await transport.send(embed(0))).status)  # an empty input: a 400
        return statuses

    assert in_process(emulator, scenario) == [200, 200, 429, 400]
    assert emulator.stats().arrivals == [
        (0.0, 200, 10),
        (1.0, 200, 20),
        (2.0, 429, 0),  # refused, so not charged
        (3.0, 400, 0),
    ]


def test_faulted_requests_arrive_with_their_status_and_no_tokens() -> None:
    plan = FaultPlan(openai=OpenAIPlan(error_rate=1.0, error_status=502))
    emulator = Emulator(faults=plan)
    assert in_process(emulator, lambda transport: transport.send(embed())).status == 502
    assert emulator.stats().arrivals == [(0.0, 502, 0)]


def test_a_malformed_200_was_still_charged() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(malformed_rate=1.0)))
    assert in_process(emulator, lambda transport: transport.send(embed(42))).status == 200
    assert emulator.stats().faults["openai"]["malformed"] == 1
    assert emulator.stats().arrivals == [(0.0, 200, 42)]


def test_the_time_is_the_arrival_not_the_answer_and_the_list_is_in_arrival_order() -> None:
    """The slow first request is over after the fast second one, yet listed first."""
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(latency_s=(5.0, 5.0))))

    async def scenario(transport: InProcessTransport) -> float:
        slow = asyncio.ensure_future(transport.send(embed(1)))
        await asyncio.sleep(0.5)
        emulator.set_faults(FaultPlan())  # no latency for the second
        await transport.send(embed(2))
        fast_done = asyncio.get_running_loop().time()
        await slow
        return fast_done

    assert in_process(emulator, scenario) == 0.5  # answered while the first still waited
    assert emulator.stats().arrivals == [(0.0, 200, 1), (0.5, 200, 2)]


def test_a_request_never_answered_still_arrived() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(hang_rate=1.0)))

    async def scenario(transport: InProcessTransport) -> None:
        await asyncio.sleep(3.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await transport.send(embed())

    in_process(emulator, scenario)
    stats = emulator.stats()
    assert stats.arrivals == [(3.0, NEVER_ANSWERED, 0)]
    assert stats.count("POST /v1/embeddings") == 0  # arrived, but nothing was sent back


def test_only_embeddings_requests_are_recorded_and_reset_forgets_them() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> None:
        await transport.send(embed())
        parse = HttpRequest("GET", "http://llamaparse.test/api/v1/parsing/job/nope", {}, b"")
        await transport.send(parse)
        unrouted = HttpRequest("GET", "http://api.openai.test/v1/embeddings", {}, b"")
        await transport.send(unrouted)

    in_process(emulator, scenario)
    assert [status for _, status, _ in emulator.stats().arrivals] == [200]
    emulator.reset()
    assert emulator.stats().arrivals == []


def test_control_stats_lists_arrivals_as_json_triples() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> object:
        await transport.send(embed(7))
        await asyncio.sleep(2.5)
        await transport.send(embed(3))
        stats = await transport.send(HttpRequest("GET", "http://emulator/_control/stats", {}, b""))
        return stats.json()["arrivals"]

    assert in_process(emulator, scenario) == [[0.0, 200, 7], [2.5, 200, 3]]


def test_the_busiest_minute_of_recorded_traffic() -> None:
    """Ten requests in a burst, ten more a minute later: never more than ten a minute."""
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> None:
        for _ in range(2):
            for _ in range(10):
                await transport.send(embed(100))
                await asyncio.sleep(1.0)
            await asyncio.sleep(50.0)

    in_process(emulator, scenario)
    arrivals = emulator.stats().arrivals
    assert len(arrivals) == 20
    assert max_in_window([(time, 1) for time, _, _ in arrivals], 60.0) == 10.0
    assert max_in_window([(time, tokens) for time, _, tokens in arrivals], 60.0) == 1000.0
    assert max_in_window([(time, 1) for time, _, _ in arrivals], 61.0) == 11.0


# -- correlation ids -------------------------------------------------------------


def test_each_routed_request_is_counted_under_the_correlation_id_it_carried() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> object:
        plain = embed()
        headers = {**plain.headers, "x-correlation-id": "abc-123"}  # any case, as HTTP allows
        tagged = HttpRequest(plain.method, plain.url, headers, plain.body)
        await transport.send(tagged)
        await transport.send(tagged)
        await transport.send(embed())
        job = HttpRequest(
            "GET",
            "http://llamaparse.test/api/v1/parsing/job/nope",
            {"X-Correlation-ID": "abc-123"},
            b"",
        )
        await transport.send(job)
        unrouted = HttpRequest("GET", "http://api.openai.test/nowhere", {}, b"")
        await transport.send(unrouted)
        stats = await transport.send(HttpRequest("GET", "http://emulator/_control/stats", {}, b""))
        return stats.json()["correlations"]

    seen = in_process(emulator, scenario)
    embeddings = "POST /v1/embeddings"
    job = "GET /api/v1/parsing/job/{job_id}"
    assert seen == {"abc-123": {embeddings: 2, job: 1}, "": {embeddings: 1}}
    assert emulator.stats().correlations == seen
    emulator.reset()
    assert emulator.stats().correlations == {}
