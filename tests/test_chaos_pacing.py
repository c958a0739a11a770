"""The pacing oracle: arrivals against a bucket's bound and a 429's wait."""

from __future__ import annotations

import random

from simulations.chaos.pacing import Answered, early_after_429, over_rate


def brute_over_rate(times: list[float], capacity: float, per_s: float) -> bool:
    return any(
        j - i + 1 > capacity + per_s * (times[j] - times[i]) + 1e-6
        for i in range(len(times))
        for j in range(i, len(times))
    )


def test_a_bucket_paced_stream_passes_and_a_burst_fails() -> None:
    paced = [float(i) for i in range(100)]  # one a second: a 60/min bucket keeps up
    assert over_rate(paced, 60, 1.0) is None
    burst = [0.0] * 61
    problem = over_rate(burst, 60, 1.0)
    assert problem is not None
    assert "61 requests in 0 s" in problem


def test_the_one_pass_agrees_with_every_span_checked() -> None:
    rng = random.Random(7)
    for _ in range(300):
        times = sorted(rng.uniform(0, 30) for _ in range(rng.randint(0, 40)))
        capacity, per_s = rng.choice([3, 5, 10]), rng.choice([0.1, 0.5, 1.0])
        assert (over_rate(times, capacity, per_s) is not None) == brute_over_rate(
            times, capacity, per_s
        )


def test_a_request_inside_a_429s_wait_is_early() -> None:
    told = Answered(at=10.0, answered_at=10.5, status=429, retry_after_s=2.0)
    patient = [told, Answered(12.5, 12.6, 200, None)]
    assert early_after_429(patient) is None
    eager = [told, Answered(11.0, 11.1, 200, None)]
    problem = early_after_429(eager)
    assert problem is not None
    assert "1.5 s before" in problem


def test_requests_in_flight_before_the_429_was_answered_are_not_early() -> None:
    told = Answered(at=10.0, answered_at=10.5, status=429, retry_after_s=2.0)
    already = Answered(at=10.5, answered_at=10.6, status=200, retry_after_s=None)
    assert early_after_429([told, already]) is None
