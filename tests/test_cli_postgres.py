"""The database commands on PostgreSQL: BREAKWATER_DB (or --db) = postgresql://... selects it.

The `postgres`-marked tests need a server (tests/postgres.py's fixture starts
one with simulations/servers.py, or they skip; `nox -s integration` requires
it). The start-up checks of the variable run without one.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from simulations.cli import main
from simulations.samples import FOLDER
from simulations.servers import free_port
from state.store.open import open_store
from tests.commands import (
    breakwater,
    emulator_root,
    emulator_stats,
    keyed_emulator,
    keyless_environment,
    llamaparse_requests,
    serve_banner,
)
from tests.jobs import job_states
from tests.postgres import fetch

PASSWORD = "not-shown-anywhere"


def with_password(url: str) -> str:
    """`url` with a password the server (trust auth) ignores: it must never be printed."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


def shown(url: str) -> str:
    """`url` as the banner shows it: no password."""
    return url.replace(f":{PASSWORD}@", "@")


def log(tmp_path: Path) -> list[str]:
    return ["--log", str(tmp_path / "events.jsonl")]


async def row_counts(url: str) -> dict[str, int]:
    async with await open_store(url) as store:
        return await store.row_counts()


# -- bad values stop start-up, naming the variable ---------------------------------

DATABASE_COMMANDS = (["worker"], ["backfill"], ["costs"], ["serve", "--port", "0"])


@pytest.mark.usefixtures("keyless")
@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_a_store_of_another_kind_stops_start_up_naming_the_variable(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BREAKWATER_DB", "mysql://db.example/jobs")
    assert main([*command, *log(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the banner
    assert captured.err.startswith(f"breakwater {command[0]}: BREAKWATER_DB: mysql://")
    assert "postgresql://" in captured.err


@pytest.mark.usefixtures("keyless")
def test_a_bad_db_argument_stops_ingest_before_any_file_is_stored(
    tmp_path: Path, own_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", *own_files, "--db", "redis://cache/0", *log(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "BREAKWATER_DB: redis://" in captured.err
    assert list(tmp_path.glob("*.sqlite3")) == []


@pytest.mark.usefixtures("keyless")
def test_an_unreachable_postgres_server_stops_start_up_without_showing_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://breakwater:{PASSWORD}@127.0.0.1:{free_port()}/jobs"  # nobody listens
    monkeypatch.setenv("BREAKWATER_DB", url)
    assert main(["costs", *log(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("breakwater costs: BREAKWATER_DB: cannot open the PostgreSQL")
    assert shown(url) in captured.err
    assert PASSWORD not in captured.err


# -- the commands against a real server --------------------------------------------


@pytest.mark.postgres
@pytest.mark.usefixtures("keyless")
def test_ingest_then_workers_then_backfill_and_costs_on_postgres(
    postgres_database: str,
    tmp_path: Path,
    own_files: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = with_password(postgres_database)
    monkeypatch.setenv("BREAKWATER_DB", url)
    assert main(["ingest", *own_files, "--mode", "mock", *log(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Mode: mock; database: {shown(url)}\n" in out
    assert PASSWORD not in out
    assert "[########################] 2/2 jobs" in out
    assert "Jobs by state: complete 2" in out
    assert asyncio.run(job_states(url)) == {"complete": 2}
    rows = asyncio.run(row_counts(url))
    assert rows["documents"] == rows["jobs"] == rows["parses"] == 2
    assert rows["chunks"] > 0
    assert rows["embeddings"] == rows["chunks"]
    assert list(tmp_path.glob("*.sqlite3")) == []  # nothing fell back to a SQLite file

    # Two `breakwater worker` processes (--db this time) poll together; four more jobs arrive.
    env = keyless_environment()
    command = ("worker", "--mode", "mock", "--concurrency", "2", "--db", url)
    workers = [
        breakwater(*command, "--log", str(tmp_path / f"w{n}.jsonl"), env=env) for n in range(2)
    ]
    outs = ["", ""]
    try:
        # Until a worker says it runs, its SIGTERM handler is not installed yet.
        for n, worker in enumerate(workers):
            assert worker.stdout is not None
            for line in worker.stdout:
                outs[n] += line
                if " running (concurrency " in line:
                    break
            assert " running (concurrency " in outs[n], outs[n]

        async def upload() -> None:
            async with await open_store(url) as store:
                for n in range(4):
                    content = (FOLDER / "rate-limits.txt").read_bytes() + f"\nCopy {n}.\n".encode()
                    await store.create_job(
                        content, filename=f"copy-{n}.txt", mime_type="text/plain", now=time.time()
                    )

        asyncio.run(upload())
        deadline = time.monotonic() + 60
        while asyncio.run(job_states(url)) != {"complete": 6}:
            assert time.monotonic() < deadline, asyncio.run(job_states(url))
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for n, worker in enumerate(workers):
            outs[n] += worker.communicate(timeout=30)[0]
    assert [worker.returncode for worker in workers] == [0, 0]
    completed = 0
    for text in outs:
        assert text.startswith("Daily budgets in force:")
        assert f"database: {shown(url)}" in text
        assert PASSWORD not in text
        stopped = next(line for line in text.splitlines() if line.startswith("Worker stopped:"))
        completed += int(stopped.split()[2])
    assert completed == 4  # each job completed once, by one of the two
    rows = asyncio.run(row_counts(url))
    assert rows["documents"] == rows["jobs"] == rows["parses"] == 6

    assert main(["backfill", *log(tmp_path)]) == 0
    assert "Backfill: 0 made whole" in capsys.readouterr().out

    assert main(["costs", "--export", "json", *log(tmp_path)]) == 0
    costs = orjson.loads(capsys.readouterr().out)
    assert {(row["provider"], row["period"]) for row in costs} == {
        (provider, period) for provider in ("llamaparse", "openai") for period in ("day", "hour")
    }
    assert all(row["requests"] == 0 for row in costs)  # mock mode spends nothing


@pytest.mark.postgres
@pytest.mark.usefixtures("keyless")
def test_spend_is_kept_in_the_postgres_ledger(
    postgres_database: str,
    tmp_path: Path,
    own_files: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = ["--db", postgres_database, *log(tmp_path)]
    with keyed_emulator(monkeypatch):
        assert main(["ingest", *own_files, *db]) == 0
        out = capsys.readouterr().out
        assert "Parses: real 2, mock 0" in out
        # Uploads, status polls and result fetches each count, as the emulator saw them.
        requests = llamaparse_requests(emulator_stats(emulator_root()))
        assert "Degraded jobs: 0" in out

    ledger = asyncio.run(fetch(postgres_database, "SELECT key, usd, requests FROM budget_ledger"))
    assert sum(row["requests"] for row in ledger if "llamaparse" in row["key"]) > 0
    assert list(tmp_path.glob("*.sqlite3")) == []

    assert main(["costs", "--export", "json", *db]) == 0
    day = {
        row["provider"]: row
        for row in orjson.loads(capsys.readouterr().out)
        if row["period"] == "day"
    }
    assert day["llamaparse"]["requests"] == requests >= 2
    assert day["llamaparse"]["cost_usd"] > 0
    assert day["openai"]["requests"] >= 1
    assert day["openai"]["limit_usd"] == 1.0


@pytest.mark.postgres
def test_serve_on_postgres_answers_health(postgres_database: str, tmp_path: Path) -> None:
    env = {**keyless_environment(), "BREAKWATER_DB": with_password(postgres_database)}
    server = breakwater("serve", "--port", "0", "--workers", "0", *log(tmp_path), env=env)
    try:
        lines = serve_banner(server)
        assert f"database: {shown(with_password(postgres_database))}" in "".join(lines)
        assert PASSWORD not in "".join(lines)
        url = lines[-1].split()[2]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
            health = orjson.loads(answer.read())
        assert answer.status == 200
        assert health["store"] == "ok"
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "Stopped." in rest
