"""The `breakwater logs` report: totals from hand-written event lines, and real ones."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from resilience.breaker import Breaker
from resilience.events import close_logging, configure_logging, emit
from resilience.logreport import TimelineEntry, analyze, render, report_file


def at(seconds: int) -> str:
    return f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}.000Z"


def transition(seconds: int, provider: str, source: str, dest: str, trigger: str) -> str:
    return orjson.dumps(
        {
            "ts": at(seconds),
            "level": "INFO",
            "event": "breaker.transition",
            "provider": provider,
            "from": source,
            "to": dest,
            "trigger": trigger,
            "reason": f"{trigger} at {seconds}",
            "failures": 3,
            "calls": 3,
            "failure_rate": 1.0,
            "cooldown_s": None,
            "correlation_id": None,
        }
    ).decode()


def fallback(seconds: int, provider: str, reason: str) -> str:
    return orjson.dumps(
        {
            "ts": at(seconds),
            "level": "INFO",
            "event": "fallback.served",
            "provider": provider,
            "capability": "chat",
            "reason": reason,
            "correlation_id": None,
        }
    ).decode()


def log(seconds: int, message: str) -> str:
    return orjson.dumps(
        {"ts": at(seconds), "level": "INFO", "event": "log", "message": message}
    ).decode()


# openai: trip -> half_open -> reopen -> half_open -> close, with fallbacks.
# anthropic: two recovered trips (11s and 15s) and one still open at the end.
LOG = [
    log(0, "service started"),  # line 1
    fallback(5, "openai", "rate_limited"),
    transition(20, "openai", "closed", "open", "trip"),
    "this is not JSON",  # line 4
    fallback(25, "openai", "circuit_open"),
    transition(30, "openai", "open", "half_open", "half_open"),
    transition(31, "openai", "half_open", "open", "reopen"),
    transition(40, "anthropic", "closed", "open", "trip"),
    "",  # blank: ignored, not counted
    '{"ts": "2026-01-01T00:00:45.000Z", "level": "INFO"}',  # line 10: no event
    transition(50, "anthropic", "open", "half_open", "half_open"),
    transition(51, "openai", "open", "half_open", "half_open"),
    transition(51, "anthropic", "half_open", "closed", "close"),
    fallback(52, "openai", "circuit_open"),
    transition(53, "openai", "half_open", "closed", "close"),
    '{"ts": "2026-01-01T00:00:55.000Z", "event": "breaker.transition", "provider": "openai"}',
    '["event", "log"]',  # line 17: JSON, not an object
    transition(60, "anthropic", "closed", "open", "trip"),
    transition(70, "anthropic", "open", "half_open", "half_open"),
    transition(75, "anthropic", "half_open", "closed", "close"),
    '{"event": "log", "ts": "yesterday"}',  # line 21: unreadable time
    transition(90, "anthropic", "closed", "open", "trip"),
    log(100, "service stopped"),
]


def test_time_in_each_state_runs_from_first_event_to_last_line_anywhere() -> None:
    report = analyze(LOG)
    # openai: closed 5-20 and 53-100, open 20-30 and 31-51, half_open 30-31 and 51-53.
    assert report.providers["openai"].time_in_state_s == {
        "closed": 62.0,
        "open": 30.0,
        "half_open": 3.0,
    }
    # anthropic: first seen at 40; closed 51-60 and 75-90; open 40-50, 60-70, 90-100.
    assert report.providers["anthropic"].time_in_state_s == {
        "closed": 24.0,
        "open": 30.0,
        "half_open": 6.0,
    }


def test_trips_and_mean_time_to_recover() -> None:
    report = analyze(LOG)
    openai, anthropic = report.providers["openai"], report.providers["anthropic"]
    assert openai.trips == 1  # a reopen from half_open is not a new trip
    assert openai.recoveries_s == [33.0]
    assert openai.mttr_s == 33.0
    assert anthropic.trips == 3
    assert anthropic.recoveries_s == [11.0, 15.0]  # the trip at 90s never recovered
    assert anthropic.mttr_s == 13.0


def test_timeline_keeps_every_transition_in_order() -> None:
    timeline = analyze(LOG).providers["openai"].timeline
    assert timeline == [
        TimelineEntry(at(20), "closed", "open", "trip", "trip at 20"),
        TimelineEntry(at(30), "open", "half_open", "half_open", "half_open at 30"),
        TimelineEntry(at(31), "half_open", "open", "reopen", "reopen at 31"),
        TimelineEntry(at(51), "open", "half_open", "half_open", "half_open at 51"),
        TimelineEntry(at(53), "half_open", "closed", "close", "close at 53"),
    ]


def test_fallbacks_are_counted_per_provider_and_reason() -> None:
    report = analyze(LOG)
    assert report.providers["openai"].fallbacks == 3
    assert report.providers["openai"].fallbacks_by_reason == {"circuit_open": 2, "rate_limited": 1}
    assert report.providers["anthropic"].fallbacks == 0


def test_unusable_lines_are_skipped_and_counted() -> None:
    report = analyze(LOG)
    assert report.skipped_lines == [4, 10, 16, 17, 21]
    assert report.skipped == 5
    assert report.events == len(LOG) - 1 - 5  # minus the blank line and the skipped ones
    assert (report.start, report.end, report.span_s) == (at(0), at(100), 100.0)
    assert list(report.providers) == ["anthropic", "openai"]


def test_file_order_does_not_matter_only_timestamps_do() -> None:
    usable = [line for line in LOG if line and analyze([line]).skipped == 0]
    assert analyze(reversed(usable)).providers == analyze(usable).providers


def test_a_log_starting_mid_outage_starts_in_the_first_transitions_source_state() -> None:
    lines = [
        transition(10, "openai", "open", "half_open", "half_open"),
        transition(12, "openai", "half_open", "closed", "close"),
        log(20, "end"),
    ]
    openai = analyze(lines).providers["openai"]
    assert openai.time_in_state_s == {"closed": 8.0, "open": 0.0, "half_open": 2.0}
    assert openai.trips == 0
    assert openai.mttr_s is None  # the trip happened before the log began


def test_provider_with_only_fallbacks_stays_closed() -> None:
    lines = [log(0, "start"), fallback(10, "openai", "budget"), log(30, "end")]
    openai = analyze(lines).providers["openai"]
    assert openai.timeline == []
    assert openai.time_in_state_s == {"closed": 20.0, "open": 0.0, "half_open": 0.0}
    assert openai.fallbacks_by_reason == {"budget": 1}


def test_render_exact_text() -> None:
    lines = [
        log(0, "start"),
        transition(10, "openai", "closed", "open", "trip"),
        fallback(15, "openai", "circuit_open"),
        transition(20, "openai", "open", "half_open", "half_open"),
        transition(21, "openai", "half_open", "closed", "close"),
        "garbage",
        transition(30, "openai", "closed", "open", "trip"),
        log(100, "end"),
    ]
    assert render(analyze(lines)) == (
        "Breakwater log report\n"
        "From 2026-01-01T00:00:00.000Z to 2026-01-01T00:01:40.000Z (1m 40.000s)\n"
        "Events: 7\n"
        "Skipped 1 unusable line: 6\n"
        "\n"
        "openai\n"
        "======\n"
        "Timeline:\n"
        "  time                      from       to         trigger    reason\n"
        "  2026-01-01T00:00:10.000Z  closed     open       trip       trip at 10\n"
        "  2026-01-01T00:00:20.000Z  open       half_open  half_open  half_open at 20\n"
        "  2026-01-01T00:00:21.000Z  half_open  closed     close      close at 21\n"
        "  2026-01-01T00:00:30.000Z  closed     open       trip       trip at 30\n"
        "Time in state:\n"
        "  closed         9.000s  10.0%\n"
        "  open       1m 20.000s  88.9%\n"
        "  half_open      1.000s   1.1%\n"
        "Trips: 2\n"
        "Mean time to recover: 11.000s over 1 recovery; 1 trip not recovered\n"
        "Fallbacks served: 1\n"
        "  circuit_open  1\n"
    )


def test_render_lists_providers_by_name_with_their_sections() -> None:
    text = render(analyze(LOG))
    assert text.index("\nanthropic\n") < text.index("\nopenai\n")
    assert "Skipped 5 unusable lines: 4, 10, 16, 17, 21\n" in text
    assert "Mean time to recover: 13.000s over 2 recoveries; 1 trip not recovered\n" in text
    assert "Mean time to recover: 33.000s over 1 recovery\n" in text
    assert "  circuit_open  2\n  rate_limited  1\n" in text
    assert render(analyze(LOG)) == text


def test_render_never_recovered_and_long_durations() -> None:
    lines = [
        transition(0, "openai", "closed", "open", "trip"),
        '{"ts": "2026-01-01T02:03:04.500Z", "event": "log"}',
    ]
    text = render(analyze(lines))
    assert "  open       2h 03m 04.500s  100.0%\n" in text
    assert "Mean time to recover: n/a; 1 trip not recovered\n" in text
    assert "Fallbacks served: 0\n" in text


def test_long_lists_of_skipped_lines_are_shortened() -> None:
    text = render(analyze(["junk"] * 13))
    assert "Skipped 13 unusable lines: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more\n" in text


def test_empty_log() -> None:
    report = analyze([])
    assert report.providers == {}
    assert (report.events, report.skipped, report.start, report.end) == (0, 0, None, None)
    assert render(report) == "Breakwater log report\nNo events.\n"


def test_report_file_reads_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert report_file(str(path)) == "Breakwater log report\nNo events.\n"


def test_report_file_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError) as caught:
        report_file(missing)
    assert caught.value.filename == missing
    assert missing in str(caught.value)


def test_report_file_survives_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\xff\xfe garbage\n" + fallback(1, "openai", "budget").encode() + b"\n")
    assert "Skipped 1 unusable line: 1\n" in report_file(str(path))


def test_reads_what_breakwater_itself_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    configure_logging(str(path))
    try:
        breaker = Breaker("openai")
        breaker.force_open("maintenance")
        emit(
            "fallback.served",
            provider="openai",
            capability="chat",
            reason="circuit_open",
            correlation_id=None,
        )
        breaker.force_closed("maintenance over")
        emit("budget.alert", provider="openai", level="WARNING", spent_usd=1.0)
    finally:
        close_logging()
    report = analyze(path.read_text().splitlines())
    assert report.skipped == 0
    assert report.events == 6  # two transitions, two overrides, a fallback, an alert
    openai = report.providers["openai"]
    assert [(e.source, e.dest, e.trigger, e.reason) for e in openai.timeline] == [
        ("closed", "open", "force_open", "maintenance"),
        ("open", "closed", "force_closed", "maintenance over"),
    ]
    assert openai.trips == 1
    assert len(openai.recoveries_s) == 1
    assert openai.fallbacks_by_reason == {"circuit_open": 1}
