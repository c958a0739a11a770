"""The usage log: per-provider totals, the hourly histogram, exports and retention."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from resilience.errors import ErrorClass
from resilience.usage import CSV_COLUMNS, UsageLog

T0 = datetime(2026, 11, 28, 17, 15, tzinfo=UTC).timestamp()


@dataclass
class FixedClock:
    """Wall time that moves only when a test moves it."""

    now: float

    def __call__(self) -> float:
        return self.now


def sample_log() -> tuple[UsageLog, FixedClock]:
    """Two providers over two hours, with a few errors."""
    clock = FixedClock(T0)
    log = UsageLog(clock=clock)
    log.record("openai", tokens=100, cost_usd=0.1)
    log.record("openai", tokens=200, cost_usd=0.2)
    log.record("openai", error_class=ErrorClass.FAILURE)
    log.record("anthropic", requests=2, tokens=50, cost_usd=0.05)
    clock.now += 3600  # 18:15
    log.record("openai", tokens=300, cost_usd=0.3, error_class="failure")
    log.record("openai", error_class="rate_limited")
    return log, clock


def test_summary_totals_per_provider_and_overall() -> None:
    summary = sample_log()[0].summary()

    assert list(summary["providers"]) == ["anthropic", "openai"]
    openai = summary["providers"]["openai"]
    assert openai["requests"] == 5
    assert openai["tokens"] == 600
    assert openai["cost_usd"] == 0.6  # rounded, not 0.6000000000000001
    assert openai["errors"] == {"failure": 2, "rate_limited": 1}
    assert summary["totals"] == {
        "requests": 7,
        "tokens": 650,
        "cost_usd": 0.65,
        "errors": {"failure": 2, "rate_limited": 1},
    }


def test_hourly_histogram() -> None:
    summary = sample_log()[0].summary()

    assert summary["providers"]["openai"]["hours"] == [
        {"hour": "2026-11-28T17", "requests": 3, "tokens": 300, "cost_usd": 0.3, "errors": 1},
        {"hour": "2026-11-28T18", "requests": 2, "tokens": 300, "cost_usd": 0.3, "errors": 2},
    ]
    assert summary["providers"]["anthropic"]["hours"] == [
        {"hour": "2026-11-28T17", "requests": 2, "tokens": 50, "cost_usd": 0.05, "errors": 0},
    ]


def test_csv_has_a_header_and_a_row_per_provider_hour() -> None:
    text = sample_log()[0].to_csv()

    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[0] == ["provider", "hour", "requests", "tokens", "cost_usd", "errors"]
    assert rows[1:] == [
        ["anthropic", "2026-11-28T17", "2", "50", "0.05", "0"],
        ["openai", "2026-11-28T17", "3", "300", "0.3", "1"],
        ["openai", "2026-11-28T18", "2", "300", "0.3", "2"],
    ]


def test_csv_quotes_awkward_provider_names() -> None:
    log = UsageLog(clock=FixedClock(T0))
    log.record('acme, "beta"', cost_usd=1.0)

    rows = list(csv.reader(io.StringIO(log.to_csv())))
    assert rows[1][0] == 'acme, "beta"'


def test_json_round_trips() -> None:
    log = sample_log()[0]
    assert orjson.loads(log.to_json()) == log.summary()


def test_an_empty_log_summarizes_to_zeros() -> None:
    log = UsageLog(clock=FixedClock(T0))
    assert log.summary()["providers"] == {}
    assert log.summary()["totals"] == {"requests": 0, "tokens": 0, "cost_usd": 0.0, "errors": {}}
    assert log.to_csv() == ",".join(CSV_COLUMNS) + "\n"


def test_retention_drops_old_hours() -> None:
    clock = FixedClock(T0)  # 17:15
    log = UsageLog(retention_s=2 * 3600, clock=clock)
    log.record("openai", cost_usd=1.0)
    log.record("anthropic", cost_usd=1.0)
    clock.now += 2 * 3600  # 19:15: hour 17 ended 1 h 15 m ago, inside the window
    log.record("openai", cost_usd=2.0)
    assert [h["hour"] for h in log.summary()["providers"]["openai"]["hours"]] == [
        "2026-11-28T17",
        "2026-11-28T19",
    ]

    clock.now += 3600  # 20:15: hour 17 ended 2 h 15 m ago, outside it
    summary = log.summary()

    assert list(summary["providers"]) == ["openai"]
    assert [h["hour"] for h in summary["providers"]["openai"]["hours"]] == ["2026-11-28T19"]
    assert summary["totals"]["cost_usd"] == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"requests": -1}, {"tokens": -1}, {"cost_usd": -0.5}, {"cost_usd": float("nan")}],
)
def test_negative_usage_is_refused(kwargs: dict[str, Any]) -> None:
    log = UsageLog(clock=FixedClock(T0))
    with pytest.raises(ValueError, match="non-negative"):
        log.record("openai", **kwargs)
    assert log.summary()["providers"] == {}


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention_s"):
        UsageLog(retention_s=0)


def test_records_of_one_hour_share_its_bucket_until_retention_drops_it() -> None:
    clock = FixedClock(T0)
    log = UsageLog(retention_s=3600, clock=clock)
    hour = T0 - T0 % 3600  # what the budget passes as `at`
    log.record("anthropic", at=hour)
    log.record("openai", cost_usd=0.1, at=hour)
    log.record("openai", cost_usd=0.2, at=hour)
    assert log.summary()["providers"]["openai"]["requests"] == 2

    clock.now += 3 * 3600
    assert log.summary()["providers"] == {}  # 17:00 is past retention: dropped
    clock.now = T0  # a clock that steps back, as a test clock may
    log.record("openai", cost_usd=0.4, at=hour)

    openai = log.summary()["providers"]["openai"]
    assert (openai["requests"], openai["cost_usd"]) == (1, 0.4)  # a fresh bucket
