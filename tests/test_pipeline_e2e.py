"""The whole pipeline over real HTTP: upload -> parse -> chunk -> embed -> store.

The emulators are served on 127.0.0.1 and both clients reach them through
the real `AiohttpTransport`, on an ordinary event loop in real time; the
jobs live in a SQLite file. Nothing of ours is mocked. The budget test moves
only the calendar (`resilience.clock.wall_time`, through `follow_loop`) past
the hour's reset; its HTTP still happens in real time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from resilience.clock import follow_loop, wall_time
from resilience.testing import DEFAULT_WALL_EPOCH
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, OpenAIPlan, RunningEmulator
from state import JobState, SqliteJobStore
from state.pipeline.backfill import backfill
from state.pipeline.wiring import EMBED, Pipeline
from state.pipeline.worker import Worker
from tests.jobs import upload_samples
from tests.loopback import serving, transport

FAST_PARSE = LlamaParsePlan(parse_time_s=(0.05, 0.05))


def environment(running: RunningEmulator, mode: str, **extra: str) -> dict[str, str]:
    return {
        "SERVICE_MODE": mode,
        "OPENAI_API_KEY": "sk-loopback",
        "OPENAI_BASE_URL": running.openai_base_url,
        "LLAMA_CLOUD_API_KEY": "llx-loopback",
        "LLAMA_CLOUD_BASE_URL": running.llamaparse_base_url,
        "LLAMA_CLOUD_API_VERSION": "v1",  # the upload route counted below is v1's
        # One try per call and no breaker trips, so an outage costs no real-time sleeps.
        "BREAKWATER_OPENAI_MAX_ATTEMPTS": "1",
        "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "1000",
        **extra,
    }


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
                ids = await upload_samples(store)
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
                ids = await upload_samples(store)
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


def test_mock_mode_over_loopback_never_reaches_the_emulator(tmp_path: Path) -> None:
    async def main() -> tuple[list[JobState], list[bool], set[str], dict[str, int]]:
        emulator = Emulator(seed=3, faults=FaultPlan(llamaparse=FAST_PARSE))
        async with serving(emulator) as running, transport() as sender:
            pipeline = Pipeline.from_env(environment(running, "mock"), transport=sender)
            async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
                ids = await upload_samples(store)
                await finish(Worker(store, pipeline, owner="e2e"), ids)
                jobs = [await store.get_job(job_id) for job_id in ids]
                embedder = pipeline.embedder
                paths: set[str] = set()
                for job in jobs:
                    assert job is not None
                    parse = await store.get_parse(job.sha256)
                    assert parse is not None
                    paths.add(parse.path)
                    rows = await store.embeddings(
                        job.sha256, embedder.model, embedder.vector_dimensions
                    )
                    paths |= {row.path for row in rows}
                counts = await store.row_counts()
        stats = emulator.stats()
        assert stats.requests == {}
        assert stats.jobs_created == 0
        assert stats.rate_limited == 0
        return (
            [job.state for job in jobs if job is not None],
            [job.degraded for job in jobs if job is not None],
            paths,
            counts,
        )

    states, degraded, paths, counts = asyncio.run(main())
    assert states == [JobState.COMPLETE] * 3
    assert degraded == [True] * 3  # mock-served, ready for a backfill
    assert paths == {"mock"}
    assert counts["jobs"] == counts["parses"] == 3
    assert counts["embeddings"] == counts["chunks"] > 3


class SkippingWallClock:
    """Calendar time that runs at real speed and can be moved forward: an hour in a moment.

    Under `resilience.clock.follow_loop(clock)`, `wall_time()` on this thread is
    `wall_epoch + time()`; every budget, ledger, usage log and worker `now`
    reads it there. The event loop, the HTTP exchanges and the emulator stay
    in real time.
    """

    def __init__(self, wall_epoch: float) -> None:
        self.wall_epoch = wall_epoch
        self._origin = time.monotonic()

    def time(self) -> float:
        return time.monotonic() - self._origin

    def hold(self, delta: int) -> None:
        """Work on another thread never stops calendar time here."""

    def skip_to(self, wall: float) -> None:
        self.wall_epoch += max(0.0, wall - (self.wall_epoch + self.time()))


async def finish_skipping_waits(worker: Worker, ids: list[str], clock: SkippingWallClock) -> int:
    """Like `finish`, but a wait for the calendar (a budget reset) is skipped; how many."""
    skips = 0
    async with asyncio.timeout(60):
        while True:
            jobs = [await worker.store.get_job(job_id) for job_id in ids]
            live = [job for job in jobs if job is not None and not job.is_terminal]
            if not live and all(job is not None for job in jobs):
                return skips
            if not await worker.run_once():
                # Only a waiting job waits for the calendar; a parked parse waits on LlamaParse.
                waiting = [job.not_before for job in live if job.state is JobState.WAITING]
                ready_at = min(waiting, default=wall_time())
                if ready_at > wall_time() + 1.0:
                    clock.skip_to(ready_at)
                    skips += 1
                else:
                    await asyncio.sleep(0.05)


def test_real_mode_over_loopback_waits_for_the_budget_reset_and_never_overspends(
    tmp_path: Path,
) -> None:
    limit = 0.00006  # one sample's embeddings fit an hour, two do not
    environ_extra = {"BREAKWATER_OPENAI_HOURLY_BUDGET_USD": str(limit)}
    clock = SkippingWallClock(DEFAULT_WALL_EPOCH + 600.0)  # 00:10 UTC

    async def main() -> tuple[list[JobState], list[bool], set[str], int, int, list[float], int]:
        emulator = Emulator(seed=3, faults=FaultPlan(llamaparse=FAST_PARSE))
        async with serving(emulator) as running, transport() as sender:
            pipeline = Pipeline.from_env(
                environment(running, "real", **environ_extra), transport=sender
            )
            async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
                ids = await upload_samples(store)
                skips = await finish_skipping_waits(
                    Worker(store, pipeline, owner="e2e"), ids, clock
                )
                jobs = [await store.get_job(job_id) for job_id in ids]
                budget_waits = 0
                paths: set[str] = set()
                embedder = pipeline.embedder
                for job in jobs:
                    assert job is not None
                    budget_waits += sum(
                        event.dest == "waiting" and event.reason.startswith("budget")
                        for event in await store.history(job.id)
                    )
                    rows = await store.embeddings(
                        job.sha256, embedder.model, embedder.vector_dimensions
                    )
                    paths |= {row.path for row in rows}
        budget = pipeline.guard(EMBED).budget
        assert budget is not None
        hours = budget.usage.summary()["providers"]["openai"]["hours"]
        return (
            [job.state for job in jobs if job is not None],
            [job.degraded for job in jobs if job is not None],
            paths,
            budget_waits,
            skips,
            [hour["cost_usd"] for hour in hours],
            emulator.stats().count("POST /v1/embeddings", 200),
        )

    started = time.monotonic()
    with follow_loop(clock):
        states, degraded, paths, budget_waits, skips, hourly_costs, answered = asyncio.run(main())
    assert time.monotonic() - started < 30, "the hours were skipped, not waited out"
    assert states == [JobState.COMPLETE] * 3
    assert degraded == [False] * 3
    assert paths == {"real"}
    assert budget_waits >= 1
    assert skips >= 1
    assert len(hourly_costs) >= 2, "the jobs were spread over several hours"
    assert all(0 < cost <= limit for cost in hourly_costs)
    # A refused batch never left the process: one answered request per document (3), or 2
    # when the two jobs the budget sent to the next hour were leased together and shared
    # one request (state.pipeline.coalescer); which, real time over loopback decides.
    assert answered in (2, 3)
