"""Embeddings batched across documents: many jobs ready to embed share full requests.

The jobs are staged ready to embed (parsed and chunked) through the store's
own API, then a `Worker` at its default settings runs them on the
virtual-time loop against the in-process OpenAI emulator. Requests are
counted by the emulator, and every stored vector is checked against the one
its own chunk's text gets from the emulator (or the mock), so a vector on the
wrong job, or a chunk embedded twice into another job, shows.
"""

from __future__ import annotations

import asyncio
import math
import random
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from providers.llamaparse.client import ParsedDocument
from providers.openai.client import (
    DEFAULT_MODEL,
    MAX_REQUEST_INPUTS,
    MAX_REQUEST_TOKENS,
    Embeddings,
    Group,
    OpenAIConfig,
    OpenAIEmbeddings,
)
from providers.openai.mock import MockEmbedder
from providers.pricing import embedding_cost_usd
from providers.tokens import count_tokens
from resilience import Budget, BudgetExceeded, Guard, RetryPolicy, Router, ServiceMode
from resilience.clock import wall_time
from resilience.testing import run_virtual
from simulations.emulators import Emulator, FaultPlan, InProcessTransport, OpenAIPlan
from simulations.emulators.vectors import embedding
from state import JobState, SqliteJobStore, StoredChunk, Trigger
from state.machine import Job
from state.pipeline.wiring import Pipeline
from state.pipeline.worker import Worker
from tests.events import Events
from tests.test_worker import EMBEDDINGS, environment

SETUP = "stager"


@dataclass(frozen=True)
class Staged:
    job_id: str
    sha256: str
    chunks: list[str]


async def stage(store: SqliteJobStore, documents: list[list[str]]) -> list[Staged]:
    """One job per document, moved to `chunked` with the given chunk texts, then released."""
    now = wall_time()
    staged = []
    for number, texts in enumerate(documents):
        content = f"document {number}\n".encode()
        upload = await store.create_job(
            content, filename=f"{number}.txt", mime_type="text/plain", now=now
        )
        staged.append(Staged(upload.job.id, upload.job.sha256, texts))
    leased = await store.lease(SETUP, now=now, lease_s=600, limit=len(documents))
    assert len(leased) == len(documents)
    by_id = {job.id: job for job in leased}
    for doc in staged:
        job = by_id[doc.job_id]
        job = await move(store, job, Trigger.START_PARSE)
        parsed = ParsedDocument("\n\n".join(doc.chunks), 1, f"parse-{doc.job_id}", doc.sha256)
        await store.put_parse(parsed, "real")
        job = await move(store, job, Trigger.FINISH_PARSE)
        await store.put_chunks(doc.sha256, [StoredChunk(i, t) for i, t in enumerate(doc.chunks)])
        job = await move(store, job, Trigger.CHUNK)
        assert job.state is JobState.CHUNKED
        assert await store.release_lease(job.id, SETUP)
    return staged


async def move(store: SqliteJobStore, job: Job, trigger: Trigger) -> Job:
    return await store.transition(
        job.id,
        expected_state=job.state,
        expected_version=job.version,
        owner=SETUP,
        trigger=trigger,
        reason=f"staged: {trigger}",
        correlation_id=job.correlation_id,
        now=wall_time(),
    )


async def work(worker: Worker, ids: list[str], *, limit_s: float = 3600.0) -> None:
    """Run `worker.run` until every job is terminal, then stop it."""
    stop = asyncio.Event()
    running = asyncio.get_running_loop().create_task(worker.run(stop, idle_sleep_s=1.0))
    async with asyncio.timeout(limit_s):
        while True:
            jobs = [await worker.store.get_job(job_id) for job_id in ids]
            if all(job is not None and job.is_terminal for job in jobs):
                break
            await asyncio.sleep(1.0)
    stop.set()
    await running


def minimum_requests(documents: list[list[str]]) -> int:
    """The fewest requests the bounds allow for every chunk of every document."""
    texts = [text for chunks in documents for text in chunks]
    tokens = sum(count_tokens(text) for text in texts)
    return max(math.ceil(len(texts) / MAX_REQUEST_INPUTS), math.ceil(tokens / MAX_REQUEST_TOKENS))


def corpus(documents: int, chunks: int, words: int, seed: int) -> list[list[str]]:
    """Distinct chunk texts, `words` random words each, so every vector is its own."""
    rng = random.Random(seed)
    vocabulary = [
        "tide",
        "harbour",
        "breaker",
        "swell",
        "reef",
        "current",
        "anchor",
        "buoy",
        "gale",
        "keel",
    ]
    return [
        [
            f"doc {d} chunk {c}: " + " ".join(rng.choice(vocabulary) for _ in range(words))
            for c in range(chunks)
        ]
        for d in range(documents)
    ]


def scenario(
    tmp_path: Path,
    mode: str,
    body: Callable[[SqliteJobStore, Emulator, Pipeline], Awaitable[None]],
    *,
    faults: FaultPlan | None = None,
) -> None:
    async def main() -> None:
        emulator = Emulator(seed=11, faults=faults)
        pipeline = Pipeline.from_env(
            environment(mode), transport=InProcessTransport(emulator), rng=random.Random(11)
        )
        async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
            try:
                await body(store, emulator, pipeline)
            finally:
                await pipeline.close()
                await emulator.close()

    run_virtual(main())


async def check_vectors(
    store: SqliteJobStore, pipeline: Pipeline, staged: list[Staged], *, path: str
) -> None:
    """Each job complete, holding exactly its own chunks' vectors, all served by `path`."""
    embedder = pipeline.embedder
    model, dims = embedder.model, embedder.vector_dimensions
    mock = MockEmbedder(model)
    for doc in staged:
        job = await store.get_job(doc.job_id)
        assert job is not None
        assert job.state is JobState.COMPLETE
        assert job.degraded is (path == "mock")
        rows = await store.embeddings(doc.sha256, model, dims)
        assert [row.chunk_index for row in rows] == list(range(len(doc.chunks)))
        assert {row.path for row in rows} == {path}
        for row, text in zip(rows, doc.chunks, strict=True):
            want = embedding(model, text, dims, dims) if path == "real" else mock.vector(text)
            assert row.vector == array("f", want).tolist()  # as stored: float32
        # Each job's audit rows stay under its own correlation id.
        assert {event.correlation_id for event in await store.history(doc.job_id)} == {
            job.correlation_id
        }


@pytest.mark.parametrize(
    ("chunks", "words", "binds"),
    [(25, 6, "inputs"), (4, 800, "tokens")],
)
def test_200_small_documents_ready_at_once_share_full_requests(
    tmp_path: Path, chunks: int, words: int, binds: str
) -> None:
    documents = corpus(200, chunks, words, seed=5)
    minimum = minimum_requests(documents)
    assert minimum >= 3, "enough chunks that packing across documents is tested"
    texts = [text for doc in documents for text in doc]
    by_inputs = math.ceil(len(texts) / MAX_REQUEST_INPUTS)
    assert (minimum == by_inputs) is (binds == "inputs")

    async def body(store: SqliteJobStore, emulator: Emulator, pipeline: Pipeline) -> None:
        staged = await stage(store, documents)
        worker = Worker(store, pipeline, owner="w1")
        await work(worker, [doc.job_id for doc in staged])
        assert worker.coalescer.rounds == 1, "the 200 jobs leased together went out together"
        stats = emulator.stats()
        assert stats.count(EMBEDDINGS) == stats.count(EMBEDDINGS, 200)
        assert stats.count(EMBEDDINGS) <= 1.05 * minimum
        await check_vectors(store, pipeline, staged, path="real")
        # Each request was routed under one job's id: the first job with chunks in it.
        carriers = {cid for cid, by in stats.correlations.items() if EMBEDDINGS in by}
        jobs = [await store.get_job(doc.job_id) for doc in staged]
        assert carriers <= {job.correlation_id for job in jobs if job is not None}
        assert len(carriers) == stats.count(EMBEDDINGS)

    scenario(tmp_path, "real", body)


def test_a_failed_shared_request_reaches_every_job_in_it_and_each_retries(
    tmp_path: Path,
) -> None:
    documents = corpus(30, 4, 6, seed=6)
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 120.0),)))

    async def body(store: SqliteJobStore, emulator: Emulator, pipeline: Pipeline) -> None:
        staged = await stage(store, documents)
        await work(Worker(store, pipeline, owner="w1", max_attempts=10), [d.job_id for d in staged])
        await check_vectors(store, pipeline, staged, path="real")
        for doc in staged:
            waits = [e for e in await store.history(doc.job_id) if e.dest == "waiting"]
            assert waits, "the shared request's failure reached every job in it"
        stats = emulator.stats()
        assert stats.count(EMBEDDINGS, 503) > 0
        assert stats.count(EMBEDDINGS, 200) == minimum_requests(documents) == 1

    scenario(tmp_path, "real", body, faults=faults)


def test_hybrid_serves_each_job_the_mock_for_its_own_chunks_in_an_outage(
    tmp_path: Path,
) -> None:
    documents = corpus(30, 4, 6, seed=7)
    faults = FaultPlan(openai=OpenAIPlan(outages=((0.0, 1e6),)))

    async def body(store: SqliteJobStore, emulator: Emulator, pipeline: Pipeline) -> None:
        staged = await stage(store, documents)
        await work(Worker(store, pipeline, owner="w1"), [d.job_id for d in staged])
        await check_vectors(store, pipeline, staged, path="mock")
        assert emulator.stats().count(EMBEDDINGS, 200) == 0

    scenario(tmp_path, "hybrid", body, faults=faults)


# -- the client's part: several callers' inputs in shared requests -----------------


def group_client(
    emulator: Emulator, budget_usd: float | None = None
) -> tuple[OpenAIEmbeddings, Router]:
    budget = None if budget_usd is None else Budget(daily_usd=budget_usd, scope="openai")
    guard = Guard("openai", retry=RetryPolicy(max_attempts=1), budget=budget)
    config = OpenAIConfig(api_key="sk-test", base_url="http://emulator.local/v1")
    client = OpenAIEmbeddings(config, InProcessTransport(emulator))
    router = Router(ServiceMode.REAL)
    router.register("embed", real=client.embed_batch, mock=MockEmbedder().embed_batch, guard=guard)
    return client, router


def test_groups_share_a_request_each_getting_its_own_vectors(events: Events) -> None:
    groups = [Group(f"cid-{n}", texts) for n, texts in enumerate(corpus(3, 5, 4, seed=8))]

    async def main() -> None:
        emulator = Emulator(seed=1)
        client, router = group_client(emulator)
        results = await client.embed_groups(groups, router)
        for group, result in zip(groups, results, strict=True):
            assert isinstance(result, Embeddings)
            assert result.paths == ["real"] * len(group.texts)
            want = [embedding(DEFAULT_MODEL, text, 1536, 1536) for text in group.texts]
            assert result.vectors == want
        stats = emulator.stats()
        assert stats.count(EMBEDDINGS) == 1
        assert stats.correlations == {"cid-0": {EMBEDDINGS: 1}}
        [shared] = events.of("openai.shared_request")
        assert shared["correlation_id"] == "cid-0"
        assert shared["correlation_ids"] == ["cid-0", "cid-1", "cid-2"]
        await emulator.close()

    run_virtual(main())


def test_a_pack_the_budget_refuses_is_sent_again_one_group_at_a_time() -> None:
    first, second = corpus(2, 5, 4, seed=9)
    tokens = sum(count_tokens(text) for text in first)
    alone = embedding_cost_usd(DEFAULT_MODEL, tokens)
    both = embedding_cost_usd(DEFAULT_MODEL, tokens + sum(count_tokens(t) for t in second))
    assert both > 1.5 * alone, "the pack does not fit the budget; the first group alone does"

    async def main() -> None:
        emulator = Emulator(seed=1)
        client, router = group_client(emulator, budget_usd=1.5 * alone)
        done, refused = await client.embed_groups(
            [Group("cid-a", first), Group("cid-b", second)], router
        )
        assert isinstance(done, Embeddings)
        assert done.vectors == [embedding(DEFAULT_MODEL, t, 1536, 1536) for t in first]
        assert isinstance(refused, BudgetExceeded)
        assert emulator.stats().correlations == {"cid-a": {EMBEDDINGS: 1}}
        await emulator.close()

    run_virtual(main())
