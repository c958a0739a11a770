"""The whole pipeline over real HTTP: upload -> parse -> chunk -> embed -> store.

The emulators are served on 127.0.0.1 and both clients reach them through
the real `AiohttpTransport`, on an ordinary event loop in real time; the
jobs live in a SQLite file. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from resilience.clock import wall_time
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, OpenAIPlan, RunningEmulator
from state import JobState, SqliteJobStore
from state.pipeline import EMBED, Pipeline
from state.worker import Worker, backfill
from tests.loopback import serving, transport

SAMPLES = Path(__file__).resolve().parent.parent / "simulations" / "samples"
DOCS = (
    ("circuit-breakers.md", "text/markdown"),
    ("rate-limits.txt", "text/plain"),
    ("budgets.pdf", "application/pdf"),
)
FAST_PARSE = LlamaParsePlan(parse_time_s=(0.05, 0.05))


def environment(running: RunningEmulator, mode: str, **extra: str) -> dict[str, str]:
    return {
        "SERVICE_MODE": mode,
        "OPENAI_API_KEY": "sk-loopback",
        "OPENAI_BASE_URL": running.openai_base_url,
        "LLAMA_CLOUD_API_KEY": "llx-loopback",
        "LLAMA_CLOUD_BASE_URL": running.llamaparse_base_url,
        # One try per call and no breaker trips, so an outage costs no real-time sleeps.
        "BREAKWATER_OPENAI_MAX_ATTEMPTS": "1",
        "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "1000",
        **extra,
    }


async def upload(store: SqliteJobStore) -> list[str]:
    ids = []
    for name, mime in DOCS:
        created = await store.create_job(
            (SAMPLES / name).read_bytes(), filename=name, mime_type=mime, now=wall_time()
        )
        ids.append(created.job.id)
    return ids


async def finish(worker: Worker, ids: list[str]) -> None:
    async with asyncio.timeout(60):
        while True:
            jobs = [await worker.store.get_job(job_id) for job_id in ids]
            if all(job is not None and job.is_terminal for job in jobs):
                return
            if not await worker.run_once():
                await asyncio.sleep(0.05)


def test_real_mode_end_to_end_over_loopback(tmp_path: Path) -> None:
    async def main() -> tuple[list[JobState], list[bool], set[str], int, int]:
        emulator = Emulator(seed=3, faults=FaultPlan(llamaparse=FAST_PARSE))
        async with serving(emulator) as running, transport() as sender:
            pipeline = Pipeline.from_env(environment(running, "real"), transport=sender)
            async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
                ids = await upload(store)
                await finish(Worker(store, pipeline, owner="e2e"), ids)
                jobs = [await store.get_job(job_id) for job_id in ids]
                embedder = pipeline.embedder
                paths: set[str] = {
                    row.path
                    for job in jobs
                    if job is not None
                    for row in await store.embeddings(
                        job.sha256, embedder.model, embedder.vector_dimensions
                    )
                }
                counts = await store.row_counts()
        stats = emulator.stats()
        return (
            [job.state for job in jobs if job is not None],
            [job.degraded for job in jobs if job is not None],
            paths,
            counts["embeddings"] - counts["chunks"],
            stats.count("POST /api/v1/parsing/upload", 200)
            + stats.count("POST /v1/embeddings", 200),
        )

    states, degraded, paths, extra_rows, answered = asyncio.run(main())
    assert states == [JobState.COMPLETE] * 3
    assert degraded == [False] * 3
    assert paths == {"real"}
    assert extra_rows == 0
    assert answered == 6  # three uploads and three embedding requests


def test_hybrid_outage_then_backfill_over_loopback(tmp_path: Path) -> None:
    outage = FaultPlan(llamaparse=FAST_PARSE, openai=OpenAIPlan(outages=((0.0, 3600.0),)))

    async def main() -> tuple[list[bool], list[bool], list[str], set[str]]:
        emulator = Emulator(seed=3, faults=outage)
        async with serving(emulator) as running, transport() as sender:
            pipeline = Pipeline.from_env(environment(running, "hybrid"), transport=sender)
            async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
                ids = await upload(store)
                await finish(Worker(store, pipeline, owner="e2e"), ids)
                during = [job.degraded for job in await store.degraded_jobs()]
                emulator.set_faults(FaultPlan(llamaparse=FAST_PARSE))  # the provider heals
                report = await backfill(store, pipeline)
                jobs = [await store.get_job(job_id) for job_id in ids]
                embedder = pipeline.embedder
                paths: set[str] = {
                    row.path
                    for job in jobs
                    if job is not None
                    for row in await store.embeddings(
                        job.sha256, embedder.model, embedder.vector_dimensions
                    )
                }
        assert pipeline.guard(EMBED).breaker.state == "closed"
        return during, [job.degraded for job in jobs if job is not None], report.repaired, paths

    during, after, repaired, paths = asyncio.run(main())
    assert during == [True] * 3
    assert after == [False] * 3
    assert len(repaired) == 3
    assert paths == {"real"}
