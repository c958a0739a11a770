"""A LlamaParse parse outlives the process that started it: SIGKILL, then `breakwater worker`.

Real processes throughout, as in tests/test_crash.py: `breakwater emulate`
serves both providers, the process that uploads is killed with SIGKILL (no
signal handler, no lease released), and `breakwater worker` finishes the
job. What is asserted comes from the ground truth: the emulator's own counts
(`/_control/stats`) and job list, and the SQLite file the processes shared.

* `breakwater ingest` killed a few seconds into a 20 s parse: the job was
  parked on its remote parse, and any worker's poller finishes it.
* `breakwater ingest` killed between LlamaParse making the job and the
  answer reaching it (the emulator's `lost_upload_answer_rate`: the job is
  created but the upload is never answered, so the process waits on its
  read timeout): the intent is in the store, the remote id is not. Recovery
  must find the job by its name in v2's job list and adopt it, not upload
  again.
* The same, with two workers started together on the resumed job.

The ingest killed before the answer runs with a short `--lease-s`: it still
held the job, and until its lease lapses no other process may take it (in
the first case the job was let go when it was parked).

Each run must show one upload accepted, one result fetched (`GET
/api/v2/parse/{job_id}`; status polls use the job list), and one charge in
the budget ledger: the credits the emulator reports times our price per
credit. The sample's estimate (three pages, by its size) is three times its
cost (one page, as the emulator parses text), so a reservation that is
settled twice, or never, or made twice, shows in the ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import pytest

from resilience.ledger import Totals
from simulations.samples import SAMPLES
from state import JobState, SqliteJobStore
from state.machine import Job
from state.store.protocol import JobEvent, StoredParse
from state.store.remote import RemoteJob, RemoteState
from tests.commands import breakwater, child_environment, emulator_stats, emulator_urls, wait_for

SAMPLE: Final = next(sample for sample in SAMPLES if sample.name == "rate-limits.txt")
USD_PER_CREDIT: Final = 0.002
"""Our price per credit (LLAMA_CLOUD_USD_PER_CREDIT), not the default, so the charge reads it."""
LLAMA_KEY: Final = "llx-remote-crash"
UPLOAD: Final = "POST /api/v2/parse/upload"
FETCH: Final = "GET /api/v2/parse/{job_id}"
LEASE_S: Final = 2.0
"""The killed worker's lease, so that the next worker takes its job within seconds."""
SETTLE_S: Final = 120.0
"""Ample for any run: a poller's claim cut off by the kill lapses after 60 s."""


class Run:
    """One emulator, one SQLite file, and the processes a test starts against them."""

    def __init__(
        self, tmp_path: Path, processes: list[subprocess.Popen[str]], plan: dict[str, Any]
    ) -> None:
        self.tmp_path = tmp_path
        self.processes = processes
        path = tmp_path / "plan.json"
        path.write_bytes(orjson.dumps(plan))
        emulate = ("emulate", "--port", "0", "--faults", str(path))
        emulator = breakwater(*emulate, env=child_environment(), stderr=subprocess.DEVNULL)
        processes.append(emulator)
        self.urls = emulator_urls(emulator)
        self.db = tmp_path / "jobs.db"
        self.env = child_environment(
            OPENAI_API_KEY="sk-remote-crash",
            OPENAI_BASE_URL=self.urls["OpenAI"],
            LLAMA_CLOUD_API_KEY=LLAMA_KEY,
            LLAMA_CLOUD_BASE_URL=self.urls["LlamaParse"],
            LLAMA_CLOUD_USD_PER_CREDIT=f"{USD_PER_CREDIT:g}",
        )

    def start(self, command: str, *args: str, log: str) -> subprocess.Popen[str]:
        """`breakwater COMMAND ARGS... --mode real` on this run's store, logging to `log`."""
        where = ("--db", str(self.db), "--log", str(self.tmp_path / log))
        process = breakwater(
            command, *args, "--mode", "real", *where, env=self.env, stderr=subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[str]) -> None:
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL

    def stats(self) -> dict[str, Any]:
        return emulator_stats(self.urls["base"])

    def llamaparse(self, path: str) -> dict[str, Any]:
        """What the emulated LlamaParse answers a GET of `path` with our key."""
        request = urllib.request.Request(
            self.urls["LlamaParse"] + path, headers={"Authorization": f"Bearer {LLAMA_KEY}"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            document: dict[str, Any] = orjson.loads(answer.read())
        return document

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """`sql`'s rows from the store, read only; none before the store or its table exists."""
        if not self.db.exists():
            return []
        try:
            with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as db:
                return db.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def remote_status(self) -> list[str]:
        return [status for (status,) in self.rows("SELECT status FROM remote_parses")]

    def complete(self) -> bool:
        return self.rows("SELECT state FROM jobs") == [(JobState.COMPLETE.value,)]

    def stop(self, *workers: subprocess.Popen[str]) -> None:
        """SIGTERM `workers`, which stop gracefully."""
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.communicate(timeout=15)
            assert worker.returncode == 0

    def events(self, log: str, event: str) -> list[dict[str, Any]]:
        lines = (self.tmp_path / log).read_bytes().splitlines()
        return [record for record in map(orjson.loads, lines) if record.get("event") == event]


class Stored(NamedTuple):
    """What the store holds of a job once the processes are done."""

    job: Job
    parse: StoredParse | None
    remote: list[RemoteJob]
    history: list[JobEvent]
    charged: dict[str, Totals]
    """The ledger's totals for the keys of the remote parses' reservations."""


async def read_store(db: Path, job_id: str) -> Stored:
    async with await SqliteJobStore.open(db) as store:
        job = await store.get_job(job_id)
        assert job is not None
        remote = await store.remote_parses(job_id)
        ledger = store.ledger()
        reservations = [row.reservation for row in remote if row.reservation is not None]
        keys = {str(period[1]) for reservation in reservations for period in reservation["periods"]}
        return Stored(
            job,
            await store.get_parse(job.sha256),
            remote,
            await store.history(job_id),
            {key: await ledger.totals(key) for key in keys},
        )


def assert_parsed_once(run: Run) -> RemoteJob:
    """One upload made a LlamaParse job, its result was fetched once, the job completed
    on it, and the ledger holds the job's cost once; the remote parse's row, returned."""
    stats = run.stats()  # before this test's own GET below adds to it
    assert stats["jobs_created"] == 1
    assert stats["requests"][FETCH] == {"200": 1}

    ((job_id,),) = run.rows("SELECT id FROM jobs")
    stored = asyncio.run(read_store(run.db, job_id))
    assert stored.job.state is JobState.COMPLETE
    assert not stored.job.degraded
    (row,) = stored.remote
    assert row.status is RemoteState.DONE
    assert stored.parse is not None
    assert stored.parse.path == "real"
    assert stored.parse.parsed.job_id == row.remote_id
    triggers = [event.trigger for event in stored.history]
    assert triggers.count("submit") == triggers.count("finish_parse") == 1
    assert (stored.history[-1].trigger, stored.history[-1].dest) == (
        "finish_embed",
        JobState.COMPLETE,
    )
    charged = stored.charged

    # The emulator's job: the one uploaded under the intent's name, and what it cost.
    listed = run.llamaparse("/api/v2/parse")["items"]
    assert [(item["id"], item["name"]) for item in listed] == [
        (row.remote_id, f"{row.name}--{SAMPLE.name}")
    ]
    usage = run.llamaparse(f"/api/v2/parse/{row.remote_id}?expand=usage")["job"]["usage"]
    cost = usage["credits"] * USD_PER_CREDIT
    assert cost > 0
    assert row.estimated_usd == pytest.approx(3 * cost)  # so a second settle would show
    # The reservation's periods (today, this hour) hold the cost: reserved once, settled once.
    assert len(charged) == 2
    assert [usd for usd, _ in charged.values()] == [pytest.approx(cost, rel=1e-9)] * 2
    ledger = dict(run.rows("SELECT key, usd FROM budget_ledger WHERE key LIKE 'llamaparse:%'"))
    assert ledger.keys() >= charged.keys()
    assert all(usd == 0 for key, usd in ledger.items() if key not in charged)
    return row


def test_an_ingest_killed_mid_parse_leaves_the_job_to_any_worker(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run = Run(tmp_path, processes, {"llamaparse": {"parse_time_s": 20}})
    ingest = run.start("ingest", str(SAMPLE.path), log="ingest.jsonl")

    # The upload is recorded and the job let go (parked in `parsing`, unleased).
    wait_for(lambda: run.remote_status() == ["live"], timeout_s=30, what="the parse parked")
    parked_at = time.monotonic()
    assert run.rows("SELECT trigger FROM job_events WHERE trigger = 'submit'") == [("submit",)]
    time.sleep(3.0)
    # Best effort: not while its poller holds the row (a claim cut off lapses after 60 s).
    wait_for(
        lambda: run.rows("SELECT claimed_by FROM remote_parses") == [(None,)],
        timeout_s=10,
        what="the ingest's poller between polls",
    )
    run.kill(ingest)
    assert time.monotonic() - parked_at < 15  # killed well inside the 20 s parse
    assert not run.complete()
    assert run.stats()["requests"].get(FETCH) is None

    worker = run.start("worker", log="worker.jsonl")
    wait_for(run.complete, timeout_s=SETTLE_S, what="the worker to complete the job")
    run.stop(worker)

    assert run.stats()["requests"][UPLOAD] == {"200": 1}
    assert_parsed_once(run)
    assert len(run.events("worker.jsonl", "remote_parse.finished")) == 1


def kill_before_the_answer(run: Run) -> None:
    """Ingest the sample and kill the ingest while LlamaParse holds its upload's answer;
    then answer uploads again, so that a second upload would show, not hang."""
    first = run.start("ingest", str(SAMPLE.path), "--lease-s", f"{LEASE_S:g}", log="killed.jsonl")
    wait_for(
        lambda: run.stats()["faults"]["llamaparse"]["lost_answer"] == 1,
        timeout_s=30,
        what="LlamaParse to make the job and lose the answer",
    )
    assert run.remote_status() == ["intent"]  # the id never reached the store
    run.kill(first)
    assert run.stats()["jobs_created"] == 1
    assert run.stats()["requests"].get(UPLOAD) is None  # the upload was never answered
    healed = orjson.dumps({"llamaparse": {"parse_time_s": 2}})
    request = urllib.request.Request(run.urls["base"] + "/_control/faults", healed, method="POST")
    urllib.request.urlopen(request, timeout=5).close()


LOST: Final = {"llamaparse": {"parse_time_s": 2, "lost_upload_answer_rate": 1.0}}


def test_a_worker_killed_before_the_upload_answered_is_recovered_from_the_job_list(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run = Run(tmp_path, processes, LOST)
    kill_before_the_answer(run)

    worker = run.start("worker", "--lease-s", f"{LEASE_S:g}", log="worker.jsonl")
    wait_for(run.complete, timeout_s=SETTLE_S, what="the worker to complete the job")
    run.stop(worker)

    assert run.stats()["requests"].get(UPLOAD) is None  # no second upload
    row = assert_parsed_once(run)
    (resumed,) = run.events("worker.jsonl", "remote_parse.resumed")
    assert (resumed["name"], resumed["remote_id"]) == (row.name, row.remote_id)


def test_two_workers_racing_on_the_resumed_job_finish_it_once(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run = Run(tmp_path, processes, LOST)
    kill_before_the_answer(run)

    logs = ("one.jsonl", "two.jsonl")
    workers = [run.start("worker", "--lease-s", f"{LEASE_S:g}", log=log) for log in logs]
    wait_for(run.complete, timeout_s=SETTLE_S, what="the workers to complete the job")
    run.stop(*workers)

    assert run.stats()["requests"].get(UPLOAD) is None
    row = assert_parsed_once(run)
    resumed = [event for log in logs for event in run.events(log, "remote_parse.resumed")]
    assert [(event["name"], event["remote_id"]) for event in resumed] == [(row.name, row.remote_id)]
    finished = [event for log in logs for event in run.events(log, "remote_parse.finished")]
    assert len(finished) == 1
