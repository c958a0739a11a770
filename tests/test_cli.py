"""The `breakwater` command: the demo shows a full outage and recovery; `logs` reads a log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from resilience.events import close_logging, configure_logging, emit
from simulations.cli import DEMO_LOG, main

EDGES = ("closed -> open", "open -> half_open", "half_open -> open", "half_open -> closed")


def logged_edges(path: Path) -> list[tuple[str, str]]:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [(r["from"], r["to"]) for r in records if r["event"] == "breaker.transition"]


def test_demo_rides_out_the_outage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "x.jsonl"
    assert main(["demo", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    for edge in EDGES:
        assert edge in out
    assert out.index("closed -> open") < out.index("half_open -> closed")
    assert "Requests: 180 (real " in out
    assert "Fallbacks by reason: circuit_open" in out
    assert "Breakwater log report" in out
    edges = logged_edges(log)
    assert edges[0] == ("closed", "open")
    assert edges[-1] == ("half_open", "closed")
    assert {("open", "half_open"), ("half_open", "open")} <= set(edges)


def test_demo_is_reproducible_and_reports_only_its_own_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "x.jsonl"
    assert main(["demo", "--log", str(log), "--seed", "3"]) == 0
    first = capsys.readouterr().out
    one_run = len(logged_edges(log))
    assert main(["demo", "--log", str(log), "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # the earlier run, still in the file, is not reported
    assert len(logged_edges(log)) == 2 * one_run


def test_demo_logs_to_the_working_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BREAKWATER_LOG", raising=False)
    assert main(["demo"]) == 0
    assert DEMO_LOG in capsys.readouterr().out
    assert ("half_open", "closed") in logged_edges(tmp_path / DEMO_LOG)


def test_logs_prints_the_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    configure_logging(str(log))
    try:
        emit(
            "breaker.transition",
            provider="openai",
            trigger="trip",
            reason="3 failures",
            **{"from": "closed", "to": "open"},
        )
    finally:
        close_logging()
    assert main(["logs", str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Breakwater log report\n")
    assert "openai" in out
    rows = [line.split() for line in out.splitlines()]
    assert any(row[1:] == ["closed", "open", "trip", "3", "failures"] for row in rows)


def test_logs_of_a_missing_file_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.jsonl")
    assert main(["logs", missing]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert missing in captured.err
    assert "No such file" in captured.err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["explode"]) == 2
    assert "usage: breakwater" in capsys.readouterr().err


def test_console_module_runs_the_demo(tmp_path: Path) -> None:
    log = tmp_path / "x.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "BREAKWATER_LOG"}
    done = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "demo", "--log", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "half_open -> closed" in done.stdout
    assert ("closed", "open") in logged_edges(log)


def test_a_bad_variable_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("BREAKWATER_OPENAI_RPM", "lots")
    log = tmp_path / "never.jsonl"
    assert main(["demo", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert "BREAKWATER_OPENAI_RPM='lots'" in err
    assert "positive integer" in err
    assert not log.exists()
