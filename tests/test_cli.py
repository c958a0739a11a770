"""The `breakwater` command: `logs` reads a log; configuration is checked at start.

The demo has its own suite, tests/test_demo.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from resilience.events import close_logging, configure_logging, emit
from simulations.cli import main
from simulations.samples import TEXT_SAMPLES
from state import SqliteJobStore
from tests.commands import (
    breakwater,
    emulator_root,
    emulator_stats,
    keyed_emulator,
    keyless_environment,
    llamaparse_requests,
    serve_banner,
)
from tests.jobs import job_states, upload_samples


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


# -- the database commands: ingest, worker, backfill, costs, serve ------------------


def cli(tmp_path: Path, *args: str) -> list[str]:
    return [*args, "--db", str(tmp_path / "jobs.db"), "--log", str(tmp_path / "events.jsonl")]


@pytest.mark.usefixtures("keyless")
def test_ingest_without_keys_runs_mock_only_and_backfill_says_why(
    tmp_path: Path, own_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", *own_files, *cli(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Daily budgets in force: llamaparse $1.00, openai $1.00\n")
    assert "Mode: hybrid" in out
    assert "llamaparse: no API key set: runs mock-only and spends nothing" in out
    assert "openai: no API key set: runs mock-only and spends nothing" in out
    assert "[########################] 2/2 jobs" in out
    assert "Jobs by state: complete 2" in out
    assert "Degraded jobs: 2" in out
    assert "Parses: real 0, mock 2" in out
    assert "openai: $0.000000 of $1.00 today (0 requests)" in out
    assert asyncio.run(job_states(tmp_path / "jobs.db")) == {"complete": 2}

    assert main(["backfill", *cli(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Backfill: 0 made whole" in out
    assert out.count("the parse provider has no key") == 2


@pytest.mark.usefixtures("keyless")
def test_ingest_in_mock_mode_and_a_daily_budget_of_ones_own(
    tmp_path: Path,
    own_files: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BREAKWATER_OPENAI_DAILY_BUDGET_USD", "0.25")
    assert main(["ingest", own_files[0], "--mode", "mock", *cli(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Daily budgets in force: llamaparse $1.00, openai $0.25\n")
    assert "mock mode: no provider is called and nothing is spent" in out
    assert "Jobs by state: complete 1" in out


@pytest.mark.usefixtures("keyless")
def test_ingest_of_a_missing_file_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.md")
    assert main(["ingest", missing, *cli(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert missing in captured.err
    assert not (tmp_path / "jobs.db").exists()


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    assert main(["ingest", "x.md", "--mode", "free"]) == 2
    assert main(["worker", "--concurrency", "0"]) == 2
    assert main(["costs", "--export", "xml"]) == 2
    assert main(["costs", "--db", "mysql://db/x", "--log", str(tmp_path / "e.jsonl")]) == 2


@pytest.mark.usefixtures("keyless")
def test_ingest_with_keys_spends_and_costs_exports_it(
    tmp_path: Path,
    own_files: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with keyed_emulator(monkeypatch):
        assert main(["ingest", *own_files, *cli(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "no API key" not in out
        assert "Degraded jobs: 0" in out
        assert "Parses: real 2, mock 0" in out
        # Uploads, status polls and result fetches each count, as the emulator saw them.
        requests = llamaparse_requests(emulator_stats(emulator_root()))

    assert main(["costs", "--export", "json", *cli(tmp_path)]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    day = {row["provider"]: row for row in rows if row["period"] == "day"}
    assert day["llamaparse"]["requests"] == requests >= 2
    assert day["llamaparse"]["cost_usd"] > 0
    assert day["openai"]["requests"] >= 1
    assert day["openai"]["limit_usd"] == 1.0

    assert main(["costs", "--export", "csv", *cli(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "provider,period,cost_usd,requests,limit_usd,limit_requests"
    assert any(line.startswith("llamaparse,day,") for line in lines)

    assert main(["costs", *cli(tmp_path)]) == 0
    assert "llamaparse: $0.0" in capsys.readouterr().out


def test_worker_works_jobs_until_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"

    async def upload() -> None:
        async with await SqliteJobStore.open(db) as store:
            await upload_samples(store, TEXT_SAMPLES, clock=time.time)

    asyncio.run(upload())
    worker = breakwater("worker", "--mode", "mock", *cli(tmp_path), env=keyless_environment())
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(job_states(db)) != {"complete": 2}:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert out.startswith("Daily budgets in force:")
    assert "Worker stopped: 2 completed" in out


def test_serve_answers_health_until_sigint(tmp_path: Path) -> None:
    server = breakwater("serve", "--port", "0", *cli(tmp_path), env=keyless_environment())
    try:
        lines = serve_banner(server)
        url = lines[-1].split()[2]
        assert "webhooks cannot verify and are refused" in "".join(lines)
        assert "a worker holds up to 2 jobs" in lines[-1]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
            health = orjson.loads(answer.read())
        assert answer.status == 200
        assert health["store"] == "ok"
        assert set(health["providers"]) == {"openai", "llamaparse"}
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "Stopped." in rest
