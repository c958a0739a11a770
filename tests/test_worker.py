"""The worker and the backfill against a real SQLite file and the in-process emulator.

Everything runs on virtual time: outages of minutes and budgets that reset
on the hour take milliseconds. Nothing of ours is mocked; the providers'
own deterministic mocks are what MOCK and HYBRID modes serve.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from providers.llamaparse.client import Document
from providers.llamaparse.mock import MockParser
from resilience import ConfigError, ServiceMode
from resilience.clock import wall_time
from resilience.testing import run_virtual
from simulations.emulators import (
    Emulator,
    FaultPlan,
    InProcessTransport,
    LlamaParsePlan,
    OpenAIPlan,
)
from state import JobState, SqliteJobStore, StaleJob, Trigger
from state.app.metrics import Metrics
from state.machine import Job
from state.pipeline.backfill import backfill
from state.pipeline.chunking import chunk
from state.pipeline.wiring import EMBED, PARSE, Pipeline
from state.pipeline.worker import Worker
from state.store.remote import RemoteState
from tests.events import Events
from tests.jobs import upload_samples

T = TypeVar("T")

EMBEDDINGS = "POST /v1/embeddings"
UPLOADS = "POST /api/v1/parsing/upload"


def environment(mode: str, **extra: str) -> dict[str, str]:
    return {
        "SERVICE_MODE": mode,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": "http://emulator.local/v1",
        "LLAMA_CLOUD_API_KEY": "llx-test",
        "LLAMA_CLOUD_BASE_URL": "http://emulator.local",
        **extra,
    }


@dataclass
class Rig:
    store: SqliteJobStore
    emulator: Emulator
    pipeline: Pipeline

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.store, self.pipeline, owner=kwargs.pop("owner", "w1"), **kwargs)

    async def upload_samples(self) -> list[str]:
        return await upload_samples(self.store)

    async def jobs(self, ids: list[str]) -> list[Job]:
        found = [await self.store.get_job(job_id) for job_id in ids]
        assert all(job is not None for job in found)
        return [job for job in found if job is not None]

    async def embedding_paths(self, job: Job) -> list[str]:
        embedder = self.pipeline.embedder
        rows = await self.store.embeddings(job.sha256, embedder.model, embedder.vector_dimensions)
        return [row.path for row in rows]


def scenario(
    tmp_path: Path,
    environ: dict[str, str],
    body: Callable[[Rig], Awaitable[T]],
    *,
    faults: FaultPlan | None = None,
    **pipeline_kwargs: Any,
) -> T:
    async def main() -> T:
        emulator = Emulator(seed=7, faults=faults)  # in the loop: outage windows start now
        pipeline = Pipeline.from_env(
            environ,
            transport=InProcessTransport(emulator),
            rng=random.Random(7),
            **pipeline_kwargs,
        )
        async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
            try:
                return await body(Rig(store, emulator, pipeline))
            finally:
                await pipeline.close()
                await emulator.close()

    return run_virtual(main())


async def drain(worker: Worker, ids: list[str], *, limit_s: float = 6 * 3600) -> None:
    """Run the worker until every job is terminal, sleeping a second when none is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        jobs = [await worker.store.get_job(job_id) for job_id in ids]
        if all(job is not None and job.is_terminal for job in jobs):
            return
        if not await worker.run_once():
            await asyncio.sleep(1.0)
    raise AssertionError(f"jobs not finished after {limit_s} s: {jobs}")


async def waits(store: SqliteJobStore, job_id: str) -> list[str]:
    return [event.reason for event in await store.history(job_id) if event.dest == "waiting"]


# -- (1) MOCK mode -------------------------------------------------------------


def test_mock_mode_completes_degraded_and_never_reaches_a_provider(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            assert job.degraded
            paths = await rig.embedding_paths(job)
            assert paths
            assert set(paths) == {"mock"}
            parse = await rig.store.get_parse(job.sha256)
            assert parse is not None
            assert parse.path == "mock"
        assert rig.emulator.stats().requests == {}
        counts = await rig.store.row_counts()
        assert counts["jobs"] == counts["parses"] == 3
        assert counts["embeddings"] == counts["chunks"] > 3

    scenario(tmp_path, environment("mock"), body)


def test_real_mode_without_keys_spends_nothing_and_marks_mock(tmp_path: Path) -> None:
    environ = {"SERVICE_MODE": "real", "OPENAI_BASE_URL": "http://emulator.local/v1"}

    async def body(rig: Rig) -> None:
        assert not rig.pipeline.can_spend(PARSE)
        assert not rig.pipeline.can_spend(EMBED)
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            assert job.degraded
            assert set(await rig.embedding_paths(job)) == {"mock"}
        assert rig.emulator.stats().requests == {}
        # And the backfill cannot spend either: the jobs stay degraded.
        report = await backfill(rig.store, rig.pipeline)
        assert report.repaired == []
        assert set(report.still_degraded) == set(ids)
        assert rig.emulator.stats().requests == {}

    scenario(tmp_path, environ, body)


# -- (2) REAL mode through an outage ---------------------------------------------


def test_real_mode_waits_out_an_embeddings_outage_then_completes(tmp_path: Path) -> None:
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 240.0),)))

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(max_attempts=10), ids)
        chunks = 0
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            assert not job.degraded
            assert await waits(rig.store, job.id), "each job waited out the outage"
            assert set(await rig.embedding_paths(job)) == {"real"}
            chunks += len(await rig.store.chunks(job.sha256))
        stats = rig.emulator.stats()
        assert stats.count(EMBEDDINGS, 503) > 0
        # The three waited out the outage together, so they resumed together and shared
        # one request (state.pipeline.coalescer); alone, each would have sent its own.
        assert stats.count(EMBEDDINGS, 200) == 1
        counts = await rig.store.row_counts()
        assert counts["jobs"] == counts["parses"] == counts["documents"] == 3
        assert counts["chunks"] == counts["embeddings"] == chunks
        assert asyncio.get_running_loop().time() > 240.0

    scenario(tmp_path, environment("real"), body, faults=faults)


# -- metrics: every routed call is counted ------------------------------------------


def test_the_worker_counts_its_calls_by_provider_outcome_and_path(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        metrics = Metrics()
        metrics.count_calls(rig.pipeline.routers)
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        assert metrics.calls() == {("llamaparse", "mode", "mock"): 3, ("openai", "mode", "mock"): 3}

    scenario(tmp_path, environment("mock"), body)


def test_a_failed_call_is_counted_by_its_error_class(tmp_path: Path) -> None:
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 240.0),)))

    async def body(rig: Rig) -> None:
        metrics = Metrics()
        metrics.count_calls(rig.pipeline.routers)
        ids = await rig.upload_samples()
        await drain(rig.worker(max_attempts=10), ids)
        calls = metrics.calls()
        assert calls[("llamaparse", "ok", "real")] == 3
        assert calls[("openai", "ok", "real")] == 1  # resumed together: one shared request
        # The outage tripped the breaker: the embed calls it refused are counted as such.
        assert calls[("openai", "circuit_open", "real")] > 0
        assert set(calls) == {
            ("llamaparse", "ok", "real"),
            ("openai", "ok", "real"),
            ("openai", "circuit_open", "real"),
        }

    scenario(tmp_path, environment("real"), body, faults=faults)


# -- (3) HYBRID through an outage, then backfill --------------------------------


def test_hybrid_completes_degraded_during_an_outage_and_backfill_repairs(
    tmp_path: Path,
) -> None:
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 600.0),)))

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        loop = asyncio.get_running_loop()
        assert loop.time() < 600.0, "HYBRID does not wait for the provider"
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            assert job.degraded
            assert "mock" in await rig.embedding_paths(job)
            parse = await rig.store.get_parse(job.sha256)
            assert parse is not None
            assert parse.path == "real"
        before = await rig.store.row_counts()

        await asyncio.sleep(900.0 - loop.time())  # the outage is over; the breaker cools
        report = await backfill(rig.store, rig.pipeline)
        assert sorted(report.repaired) == sorted(ids)
        assert report.still_degraded == {}
        for job in await rig.jobs(ids):
            assert not job.degraded
            assert job.state is JobState.COMPLETE
            assert set(await rig.embedding_paths(job)) == {"real"}
            last = (await rig.store.history(job.id))[-1]
            assert last.trigger == "clear_degraded"
            assert last.dest == "complete"
        after = await rig.store.row_counts()
        assert after["embeddings"] == before["embeddings"]
        assert after["chunks"] == before["chunks"]
        assert await rig.store.degraded_jobs() == []
        assert (await backfill(rig.store, rig.pipeline)).repaired == []  # nothing left to do

    scenario(tmp_path, environment("hybrid"), body, faults=faults)


def test_hybrid_keeps_the_intent_of_an_upload_that_got_no_answer(tmp_path: Path) -> None:
    """A garbled upload answer may hide a job LlamaParse made and will bill. HYBRID must not
    serve the mock and forget the upload: the intent stays and the job waits; once answers
    are whole again, the next lease finds the upload by name and adopts it. One upload, and
    a real parse."""
    garbled = FaultPlan(
        llamaparse=LlamaParsePlan(malformed_rate=1.0, malformed_kinds=("invalid_json",))
    )

    async def body(rig: Rig) -> None:
        upload = await rig.store.create_job(
            b"# Notes\n\nParsed once.\n", filename="notes.md", mime_type="text/markdown", now=0.0
        )
        worker = rig.worker()
        await worker.run_once()
        job = await rig.store.get_job(upload.job.id)
        assert job is not None
        assert (job.state, job.wait_reason) == (JobState.WAITING, "retry")
        assert "got no answer" in (job.last_error or "")
        (row,) = await rig.store.remote_parses(job.id)
        assert row.status is RemoteState.INTENT
        rig.emulator.set_faults(FaultPlan())
        await drain(worker, [job.id])
        done = await rig.store.get_job(job.id)
        assert done is not None
        assert (done.state, done.degraded) == (JobState.COMPLETE, False)
        parse = await rig.store.get_parse(done.sha256)
        assert parse is not None
        assert parse.path == "real"
        assert rig.emulator.stats().jobs_created == 1
        assert [r.status for r in await rig.store.remote_parses(job.id)] == [RemoteState.DONE]

    scenario(tmp_path, environment("hybrid"), body, faults=garbled)


def test_a_parse_step_that_finds_no_row_but_a_stored_parse_uploads_nothing(
    tmp_path: Path,
) -> None:
    """A poller may finish a job's remote parse between its step's look for a stored parse
    and its look for the row: the step then finds no open row, and takes the stored parse
    rather than uploading the document a second time."""

    async def body(rig: Rig) -> None:
        content = b"# Notes\n\nParsed once.\n"
        upload = await rig.store.create_job(
            content, filename="notes.md", mime_type="text/markdown", now=0.0
        )
        document = Document("notes.md", content, "text/markdown")
        await rig.store.put_parse(await MockParser().parse(document), "real")
        remote = rig.worker().remote
        assert remote is not None
        assert await remote.step(upload.job, document) is None
        assert await rig.store.remote_parses(upload.job.id) == []
        assert rig.emulator.stats().jobs_created == 0

    scenario(tmp_path, environment("hybrid"), body)


# -- (4) a budget spent mid-run --------------------------------------------------


def test_real_mode_waits_for_the_budget_reset_and_never_overspends(tmp_path: Path) -> None:
    limit = 0.00006  # one sample's embeddings fit an hour, two do not
    environ = environment("real", BREAKWATER_OPENAI_HOURLY_BUDGET_USD=str(limit))

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        budget_waits = 0
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            assert not job.degraded
            assert set(await rig.embedding_paths(job)) == {"real"}
            budget_waits += sum(
                reason.startswith("budget") for reason in await waits(rig.store, job.id)
            )
        assert budget_waits >= 1
        budget = rig.pipeline.guard(EMBED).budget
        assert budget is not None
        hours = budget.usage.summary()["providers"]["openai"]["hours"]
        assert len(hours) >= 2, "the jobs were spread over several hours"
        assert all(0 < hour["cost_usd"] <= limit for hour in hours)

    scenario(tmp_path, environ, body)


# -- (5) permanent errors --------------------------------------------------------


def test_an_unsupported_document_fails_with_its_reason(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        upload = await rig.store.create_job(
            b"MZ\x90\x00", filename="setup.exe", mime_type="application/x-msdownload", now=0.0
        )
        await drain(rig.worker(), [upload.job.id])
        job = await rig.store.get_job(upload.job.id)
        assert job is not None
        assert job.state is JobState.FAILED
        assert job.failure_reason is not None
        assert "caller" in job.failure_reason
        assert job.last_error is not None
        assert "unsupported media type" in job.last_error
        assert job.lease_owner is None

    scenario(tmp_path, environment("mock"), body)


def test_a_document_lost_from_the_store_fails_its_job_without_a_call(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        metrics = Metrics()
        metrics.count_calls(rig.pipeline.routers)
        upload = await rig.store.create_job(
            b"# Minutes", filename="m.md", mime_type="text/markdown", now=0.0
        )
        # Lost behind the store's back: a plain connection does not enforce foreign keys.
        with closing(sqlite3.connect(tmp_path / "jobs.db")) as raw, raw:
            raw.execute("DELETE FROM documents WHERE sha256 = ?", (upload.job.sha256,))
        worker = rig.worker()
        await drain(worker, [upload.job.id])
        job = await rig.store.get_job(upload.job.id)
        assert job is not None
        assert job.state is JobState.FAILED
        assert job.failure_reason == "parsing: no stored document"
        assert job.last_error == f"MissingInput: no stored document for {upload.job.sha256}"
        assert (worker.stats.failed, worker.stats.errors) == (1, 0)
        assert metrics.calls() == {}
        assert rig.emulator.stats().requests == {}

    scenario(tmp_path, environment("real"), body)


def test_a_parse_lost_from_the_store_fails_its_job(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.store.create_job(
            b"# Minutes", filename="m.md", mime_type="text/markdown", now=0.0
        )
        [job] = await rig.store.lease("setup", now=wall_time(), lease_s=60.0)
        for trigger in (Trigger.START_PARSE, Trigger.FINISH_PARSE):  # no parse ever stored
            job = await rig.store.transition(
                job.id,
                expected_state=job.state,
                expected_version=job.version,
                owner="setup",
                trigger=trigger,
                reason="set up",
                correlation_id=None,
                now=wall_time(),
            )
        assert await rig.store.release_lease(job.id, "setup")
        worker = rig.worker()
        await drain(worker, [job.id])
        failed = await rig.store.get_job(job.id)
        assert failed is not None
        assert failed.state is JobState.FAILED
        assert failed.failure_reason == "parsed: no stored parse"
        assert (worker.stats.failed, worker.stats.errors) == (1, 0)

    scenario(tmp_path, environment("mock"), body)


def test_a_step_that_keeps_failing_fails_after_max_attempts(tmp_path: Path) -> None:
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 1e6),)))
    environ = environment(
        "real", BREAKWATER_OPENAI_MAX_ATTEMPTS="1", BREAKWATER_OPENAI_FAILURE_THRESHOLD="100"
    )

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(max_attempts=2), ids)
        for job in await rig.jobs(ids):
            assert job.state is JobState.FAILED
            assert job.failure_reason == "embedding: failed 2 times (max_attempts 2)"
            assert job.last_error is not None
            assert "503" in job.last_error
            assert len(await waits(rig.store, job.id)) == 1
        # Each first try went alone, straight from its parse; the retries that fall due
        # together share a request (state.pipeline.coalescer), so 3 + 1 to 3 + 3 of them,
        # as the parses' timing groups them.
        assert 4 <= rig.emulator.stats().count(EMBEDDINGS, 503) <= 6

    scenario(tmp_path, environ, body, faults=faults)


# -- (6) graceful stop -----------------------------------------------------------


def test_stop_lets_the_step_finish_and_releases_the_leases(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        worker = rig.worker(concurrency=2)
        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(worker.run(stop))
        await asyncio.sleep(3.0)  # the first two jobs are mid-parse (10 s each)
        stop.set()
        await running
        jobs = await rig.jobs(ids)
        assert [job.state for job in jobs] == [JobState.PARSED, JobState.PARSED, JobState.UPLOADED]
        assert all(job.lease_owner is None for job in jobs)
        assert worker.stats.released == 2
        # Another worker takes over at once: nothing is left leased.
        await drain(rig.worker(owner="w2"), ids)
        assert all(job.state is JobState.COMPLETE for job in await rig.jobs(ids))

    scenario(tmp_path, environment("mock"), body, mock_parser=MockParser(latency_s=10.0))


def test_sigterm_stops_the_worker(tmp_path: Path) -> None:
    import os
    import signal

    from state.pipeline.worker import install_signal_handlers, remove_signal_handlers

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        stop = asyncio.Event()
        install_signal_handlers(stop)
        try:
            running = asyncio.get_running_loop().create_task(rig.worker().run(stop))
            await asyncio.sleep(3.0)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(running, 60.0)
        finally:
            remove_signal_handlers()
        assert stop.is_set()
        assert all(job.lease_owner is None for job in await rig.jobs(ids))

    scenario(tmp_path, environment("mock"), body, mock_parser=MockParser(latency_s=10.0))


# -- the store's clear_degraded ----------------------------------------------------


def test_clear_degraded_only_for_degraded_complete_jobs(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        upload = await rig.store.create_job(
            b"# hello\n\nworld", filename="a.md", mime_type="text/markdown", now=0.0
        )
        with pytest.raises(StaleJob):
            await rig.store.clear_degraded(
                upload.job.id, reason="backfill", correlation_id=None, now=1.0
            )
        await drain(rig.worker(), [upload.job.id])
        job = await rig.store.get_job(upload.job.id)
        assert job is not None
        assert job.degraded
        cleared = await rig.store.clear_degraded(
            job.id, reason="backfill: all real", correlation_id="bf", now=2.0
        )
        assert not cleared.degraded
        assert cleared.version == job.version + 1
        event = (await rig.store.history(job.id))[-1]
        assert (event.trigger, event.reason, event.correlation_id) == (
            "clear_degraded",
            "backfill: all real",
            "bf",
        )
        with pytest.raises(StaleJob):
            await rig.store.clear_degraded(job.id, reason="again", correlation_id=None, now=3.0)

    scenario(tmp_path, environment("mock"), body)


# -- crashed workers, bounded concurrency, a mock-served parse ---------------------


def test_a_job_that_keeps_losing_its_workers_is_failed(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        [job_id, *_] = await rig.upload_samples()
        for second in range(4):  # four workers took it and died, their leases lapsing
            taken = await rig.store.lease("dead", now=wall_time() + 2 * second, lease_s=1.0)
            assert job_id in [job.id for job in taken]
        await asyncio.sleep(10.0)
        await rig.worker(max_attempts=3, concurrency=1).run_once()
        job = await rig.store.get_job(job_id)
        assert job is not None
        assert job.state is JobState.FAILED
        assert job.failure_reason == "uploaded: picked up 5 times without finishing"

    scenario(tmp_path, environment("mock"), body)


def test_a_lapsed_lease_is_taken_over_and_the_job_completes(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await rig.store.lease("dead", now=wall_time(), lease_s=30.0, limit=3)
        worker = rig.worker()
        assert await worker.run_once() == 0  # still leased
        await asyncio.sleep(31.0)
        await drain(worker, ids)
        assert all(job.state is JobState.COMPLETE for job in await rig.jobs(ids))

    scenario(tmp_path, environment("mock"), body)


def test_run_holds_at_most_concurrency_jobs(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(rig.worker(concurrency=2).run(stop))
        held = []
        for _ in range(40):
            await asyncio.sleep(1.0)
            held.append(sum(job.lease_owner is not None for job in await rig.jobs(ids)))
        stop.set()
        await running
        assert max(held) == 2
        assert all(job.state is JobState.COMPLETE for job in await rig.jobs(ids))

    scenario(tmp_path, environment("mock"), body, mock_parser=MockParser(latency_s=10.0))


def test_backfill_reprocesses_a_document_whose_real_parse_differs(tmp_path: Path) -> None:
    faults = FaultPlan(
        llamaparse=LlamaParsePlan(outages=((0.0, 600.0),)),
        # Embeddings go down just as the parse heals, so the first backfill
        # gets real parses but cannot embed their text.
        openai=OpenAIPlan(outages=((600.0, 1200.0),)),
    )
    environ = environment(
        "hybrid",
        BREAKWATER_LLAMAPARSE_MAX_ATTEMPTS="1",
        BREAKWATER_LLAMAPARSE_FAILURE_THRESHOLD="100",
        BREAKWATER_OPENAI_MAX_ATTEMPTS="1",
    )

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        before = {}
        for job in await rig.jobs(ids):
            parse = await rig.store.get_parse(job.sha256)
            assert parse is not None
            assert parse.path == "mock"
            assert job.degraded
            before[job.id] = (parse, await rig.store.chunks(job.sha256))
        counts_before = await rig.store.row_counts()

        await asyncio.sleep(700.0)  # parse healed, embeddings down
        report = await backfill(rig.store, rig.pipeline)
        # The emulator returns markdown as it came, so the markdown sample's
        # real parse matches the mock's and needs no new vectors.
        assert report.repaired == [ids[0]]
        assert set(report.still_degraded) == {ids[1], ids[2]}
        for job_id in report.still_degraded:
            [kept] = await rig.jobs([job_id])
            assert kept.degraded
            parse = await rig.store.get_parse(kept.sha256)
            assert parse == before[job_id][0]  # nothing half-written
            assert await rig.store.chunks(kept.sha256) == before[job_id][1]
        # Only the repaired job's clear_degraded audit row is new.
        assert await rig.store.row_counts() == {
            **counts_before,
            "job_events": counts_before["job_events"] + 1,
        }

        await asyncio.sleep(600.0)  # both healthy
        report = await backfill(rig.store, rig.pipeline)
        assert report.repaired == [ids[1], ids[2]]
        assert report.still_degraded == {}
        embedder = rig.pipeline.embedder
        total_chunks = 0
        for job in await rig.jobs(ids):
            assert not job.degraded
            parse = await rig.store.get_parse(job.sha256)
            assert parse is not None
            assert parse.path == "real"
            chunks = await rig.store.chunks(job.sha256)
            expected = chunk(parse.parsed.markdown, rig.pipeline.chunking)
            assert [(c.index, c.text) for c in chunks] == [(c.index, c.text) for c in expected]
            assert await rig.embedding_paths(job) == ["real"] * len(chunks)
            vectors = await rig.store.embeddings(
                job.sha256, embedder.model, embedder.vector_dimensions
            )
            assert [v.chunk_index for v in vectors] == [c.index for c in chunks]
            total_chunks += len(chunks)
        counts = await rig.store.row_counts()
        assert counts["chunks"] == counts["embeddings"] == total_chunks
        assert counts["parses"] == counts["jobs"] == 3

    scenario(tmp_path, environ, body, faults=faults)


# -- the pipeline's wiring -------------------------------------------------------


def test_a_provider_without_a_key_runs_mock_only_and_says_so(
    tmp_path: Path, events: Events
) -> None:
    environ = environment("hybrid")
    del environ["LLAMA_CLOUD_API_KEY"]

    async def body(rig: Rig) -> None:
        assert rig.pipeline.router(PARSE).mode is ServiceMode.MOCK
        assert rig.pipeline.router(EMBED).mode is ServiceMode.HYBRID
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        for job in await rig.jobs(ids):
            assert job.degraded
            parse = await rig.store.get_parse(job.sha256)
            assert parse is not None
            assert parse.path == "mock"
            assert set(await rig.embedding_paths(job)) == {"real"}
        stats = rig.emulator.stats()
        assert stats.count(UPLOADS) == 0
        assert stats.count(EMBEDDINGS, 200) == 3

    scenario(tmp_path, environ, body)
    [warning] = events.of("pipeline.no_key")
    assert warning["provider"] == "llamaparse"
    assert warning["mode"] == "hybrid"


def test_mock_mode_logs_no_key_warning_and_a_bad_setting_is_refused(events: Events) -> None:
    Pipeline.from_env({"SERVICE_MODE": "mock"}, transport=InProcessTransport(Emulator()))
    assert events.of("pipeline.no_key") == []
    with pytest.raises(ConfigError, match="BREAKWATER_OPENAI_HOURLY_BUDGET_USD"):
        Pipeline.from_env(
            {"BREAKWATER_OPENAI_HOURLY_BUDGET_USD": "lots"},
            transport=InProcessTransport(Emulator()),
        )


def test_a_step_longer_than_the_lease_keeps_it_by_renewing(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        worker = rig.worker(lease_s=6.0)
        await drain(worker, ids)  # each parse takes 20 s, over three leases' length
        assert all(job.state is JobState.COMPLETE for job in await rig.jobs(ids))
        assert worker.stats.stale == 0
        assert worker.stats.errors == 0

    scenario(tmp_path, environment("mock"), body, mock_parser=MockParser(latency_s=20.0))


def test_a_lease_a_clock_jump_lapsed_is_kept_once_the_worker_takes_it_back(
    tmp_path: Path,
) -> None:
    """After a wall clock jump lapses the lease under a running step, the worker's next
    lease takes the job back; the step's heartbeat must keep that lease too."""

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        jumped = [0.0]

        def clock() -> float:
            return wall_time() + jumped[0]

        worker = rig.worker(lease_s=6.0, clock=clock)
        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(worker.run(stop, idle_sleep_s=1.0))
        await asyncio.sleep(3.0)  # each parse takes 20 s
        jumped[0] = 3600.0  # past every lease: they lapse under the running parses
        await asyncio.sleep(3.0)  # the worker's next lease has taken them back
        # Renewed every lease_s / 3, a held lease never has less than that left; taken
        # back by lease after lease but never renewed, it runs down to nothing each time.
        least = worker.lease_s
        for _ in range(56):  # while the parses still run
            await asyncio.sleep(0.25)
            for job in await rig.jobs(ids):
                if job.lease_owner == "w1" and job.lease_expires_at is not None:
                    least = min(least, job.lease_expires_at - clock())
        stop.set()
        await running
        assert least > worker.lease_s / 3

    scenario(tmp_path, environment("mock"), body, mock_parser=MockParser(latency_s=20.0))


def test_budget_spend_survives_a_restart_in_the_sqlite_ledger(tmp_path: Path) -> None:
    environ = {"SERVICE_MODE": "mock", "BREAKWATER_OPENAI_DAILY_BUDGET_USD": "1.0"}

    async def spend_then_reopen() -> float:
        store = await SqliteJobStore.open(tmp_path / "jobs.sqlite3")
        pipeline = Pipeline.from_env(environ, ledger=store.ledger())
        budget = pipeline.guard("embed").budget
        assert budget is not None
        reservation = await budget.reserve("openai", 0.25)
        await budget.settle(reservation)
        await pipeline.close()
        await store.close()
        reopened = await SqliteJobStore.open(tmp_path / "jobs.sqlite3")
        again = Pipeline.from_env(environ, ledger=reopened.ledger())
        again_budget = again.guard("embed").budget
        assert again_budget is not None
        spent, _ = await again_budget.spent("day")
        await again.close()
        await reopened.close()
        return spent

    assert run_virtual(spend_then_reopen()) == 0.25
