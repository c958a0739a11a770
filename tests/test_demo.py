"""`breakwater demo`: emulators on loopback, an embeddings outage mid-run, then a backfill.

The demo is run for real (its own emulators over HTTP, the real clients,
a SQLite file); the tests read what it printed, logged and stored.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from simulations.cli import main
from simulations.demo import DEMO_DB, DEMO_LOG
from state import JobState, SqliteJobStore

RECOVERY = [
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("open", "half_open"),
    ("half_open", "closed"),
]


def transitions(path: Path, provider: str) -> list[tuple[str, str]]:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [
        (r["from"], r["to"])
        for r in records
        if r["event"] == "breaker.transition" and r["provider"] == provider
    ]


async def stored(db: Path) -> tuple[dict[JobState, int], int]:
    async with await SqliteJobStore.open(db) as store:
        counts = await store.jobs_by_state()
        return {state: n for state, n in counts.items() if n}, len(await store.degraded_jobs())


def test_demo_rides_out_the_outage_and_backfills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, db = tmp_path / "demo.jsonl", tmp_path / "demo.sqlite3"
    assert main(["demo", "--log", str(log), "--db", str(db)]) == 0
    out = capsys.readouterr().out

    # The embeddings breaker trips, a probe fails during the outage, one closes it after.
    assert transitions(log, "openai") == RECOVERY
    assert transitions(log, "llamaparse") == []

    # Safety and the budget are stated before anything runs.
    assert out.index("Daily budgets in force: llamaparse $0.25, openai $0.05") == 0
    assert "no money can be spent" in out

    # Progress shows the live breaker states, the open one included.
    assert "[########################] 3/3 jobs" in out
    assert "embed open" in out

    during, after = out.split("Summary after backfill")
    assert "Jobs by state: complete 3" in during
    assert "Degraded jobs: 2" in during
    assert "rate-limits.txt" in during
    assert "budgets.pdf" in during
    assert "Parses: real 3, mock 0" in during
    assert "mock 0" not in during.split("embeddings:")[1].splitlines()[0]
    assert "Backfill: 2 made whole" in during
    assert "still degraded" not in out

    assert "Jobs by state: complete 3" in after
    assert "Degraded jobs: 0" in after
    # 13 chunks: the emulator parses budgets.pdf to its own text (placeholder text made 11).
    assert "embeddings: real 13, mock 0" in after
    assert "openai: $" in after
    assert "Breaker trips: openai 1" in after
    assert f"Breaker log: {log}" in after
    assert "half_open  closed" in after  # the log report's timeline

    assert asyncio.run(stored(db)) == ({JobState.COMPLETE: 3}, 0)

    # `breakwater logs` on the demo's log prints the same timeline.
    assert main(["logs", str(log)]) == 0
    report = capsys.readouterr().out
    assert report.startswith("Breakwater log report\n")
    rows = [line.split()[1:3] for line in report.splitlines() if line.startswith("  2")]
    assert [tuple(row) for row in rows] == RECOVERY


def test_console_module_runs_the_demo_with_default_paths(tmp_path: Path) -> None:
    (tmp_path / DEMO_DB).write_bytes(b"left over from an earlier run, not a database")
    env = {k: v for k, v in os.environ.items() if k != "BREAKWATER_LOG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Degraded jobs: 0" in done.stdout.split("Summary after backfill")[1]
    assert transitions(tmp_path / DEMO_LOG, "openai") == RECOVERY
    assert asyncio.run(stored(tmp_path / DEMO_DB)) == ({JobState.COMPLETE: 3}, 0)
