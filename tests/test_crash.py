"""A worker killed with SIGKILL mid-embedding; a second worker finishes every job exactly once.

Real processes throughout: `breakwater emulate` serves both providers with a
two-second embeddings latency, `breakwater worker --mode real` works the
three samples from a SQLite file, and the test kills it (no signal handler,
no lease released) once an embedding request is in flight. A second worker
takes the lapsed leases and completes the jobs; the row counts, the audit
trail and the emulator's own stats prove nothing was done twice and the
interrupted requests were sent again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from simulations.cli import main
from state import JobState, SqliteJobStore
from state.machine import Job
from state.pipeline.wiring import Pipeline
from tests.commands import breakwater, child_environment, emulator_stats, emulator_urls, wait_for
from tests.jobs import upload_samples

LATENCY_S = 2.0
LEASE_S = 2.0
PLAN = {"openai": {"latency_s": LATENCY_S}, "llamaparse": {"parse_time_s": 0.05}}
History = tuple[Job, list[tuple[str, JobState]]]


async def upload(db: Path) -> list[str]:
    async with await SqliteJobStore.open(db) as store:
        return await upload_samples(store)


async def states(db: Path) -> dict[JobState, int]:
    async with await SqliteJobStore.open(db) as store:
        return await store.jobs_by_state()


def test_a_worker_killed_mid_embedding_leaves_no_duplicates(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(orjson.dumps(PLAN))
    emulate = ("emulate", "--port", "0", "--faults", str(plan))
    emulator = breakwater(*emulate, env=child_environment(), stderr=subprocess.DEVNULL)
    processes.append(emulator)
    urls = emulator_urls(emulator)

    db = tmp_path / "jobs.db"
    ids = asyncio.run(upload(db))
    env = child_environment(
        OPENAI_API_KEY="sk-crash",
        OPENAI_BASE_URL=urls["OpenAI"],
        LLAMA_CLOUD_API_KEY="llx-crash",
        LLAMA_CLOUD_BASE_URL=urls["LlamaParse"],
    )
    worker_args = (
        *("worker", "--mode", "real", "--concurrency", "3", "--lease-s", f"{LEASE_S:g}"),
        *("--db", str(db), "--log", str(tmp_path / "events.jsonl")),
    )

    first = breakwater(*worker_args, env=env, stderr=subprocess.DEVNULL)
    processes.append(first)

    # Kill it once a job is in `embedding` and the emulator holds an embedding
    # request it has not answered (the latency is still running).
    def embedding_in_flight() -> bool:
        if asyncio.run(states(db))[JobState.EMBEDDING] == 0:
            return False
        stats = emulator_stats(urls["base"])
        received: int = stats["faults"]["openai"]["latency"]
        answered: int = sum(stats["requests"].get("POST /v1/embeddings", {}).values())
        return received > answered

    wait_for(embedding_in_flight, timeout_s=20, what="an embedding request in flight")
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    at_kill = asyncio.run(states(db))
    assert at_kill[JobState.COMPLETE] < 3

    second = breakwater(*worker_args, env=env, stderr=subprocess.DEVNULL)
    processes.append(second)
    wait_for(
        lambda: asyncio.run(states(db))[JobState.COMPLETE] == 3,
        timeout_s=20,
        what="the second worker to complete every job",
    )
    second.send_signal(signal.SIGTERM)
    out, _ = second.communicate(timeout=15)
    assert second.returncode == 0
    finished = int(out.split("Worker stopped: ")[1].split()[0])
    assert finished == 3 - at_kill[JobState.COMPLETE]

    async def inspect() -> tuple[dict[str, int], list[History], dict[str, tuple[int, int]]]:
        pipeline = Pipeline.from_env({"SERVICE_MODE": "mock"})  # names the model and size
        model, dims = pipeline.embedder.model, pipeline.embedder.vector_dimensions
        await pipeline.close()
        async with await SqliteJobStore.open(db) as store:
            counts = await store.row_counts()
            jobs = [await store.get_job(job_id) for job_id in ids]
            per_document: dict[str, tuple[int, int]] = {}
            histories: list[History] = []
            paths: set[str] = set()
            for job in jobs:
                assert job is not None
                chunks = await store.chunks(job.sha256)
                rows = await store.embeddings(job.sha256, model, dims)
                paths |= {row.path for row in rows}
                assert sorted(row.chunk_index for row in rows) == [c.index for c in chunks]
                per_document[job.filename] = (len(chunks), len(rows))
                events = await store.history(job.id)
                histories.append((job, [(event.trigger, event.dest) for event in events]))
        assert paths == {"real"}
        return counts, histories, per_document

    counts, histories, per_document = asyncio.run(inspect())

    # Exactly one job per document, each through every state once, real throughout.
    assert counts["documents"] == counts["jobs"] == counts["parses"] == 3
    for job, dests in histories:
        assert job.state is JobState.COMPLETE
        assert not job.degraded
        assert job.lease_owner is None
        # The parse is submitted once, and the job let go while LlamaParse works.
        assert dests == [
            ("create", "uploaded"),
            ("start_parse", "parsing"),
            ("submit", "parsing"),
            ("finish_parse", "parsed"),
            ("chunk", "chunked"),
            ("start_embed", "embedding"),
            ("finish_embed", "complete"),
        ]
    # One embedding per chunk, none twice.
    assert all(chunks == rows > 0 for chunks, rows in per_document.values())
    assert counts["embeddings"] == counts["chunks"] == sum(c for c, _ in per_document.values())

    # The emulator saw the killed worker's requests cut off, and the second
    # worker's requests for the same chunks answered (documents ready at once
    # share requests, so at least one 200) beyond any the first worker finished.
    stats = emulator_stats(urls["base"])
    received = stats["faults"]["openai"]["latency"]
    answered = stats["requests"]["POST /v1/embeddings"]
    assert set(answered) == {"200"}
    assert answered["200"] >= 1
    assert received > answered["200"], "a request cut off by the kill was never answered"


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "soon"])
def test_worker_lease_must_be_a_positive_number_of_seconds(tmp_path: Path, bad: str) -> None:
    assert main(["worker", "--lease-s", bad, "--db", str(tmp_path / "jobs.db")]) == 2
    assert not (tmp_path / "jobs.db").exists()
