"""The store test suite, over every `JobStore`: SQLite (both drivers) and PostgreSQL.

Each test runs on the virtual-time loop; `now` is wall time there, which
starts at 2026-01-01T00:00:00Z. Never SQLite's `:memory:`: WAL, locking
between connections and reopening are the behaviour under test. PostgreSQL
runs on a throwaway server with a fresh database per test (`tests.postgres`);
its variants carry the `postgres` marker and skip when no server can be had.

PostgreSQL works on the virtual loop because `state.store.postgres` holds the
clock (`resilience.clock.thread_work`) while a statement is out: the server
answers in real time, so without the hold time would jump to the next timer
whenever its socket was not ready at that instant. The store takes `now`
explicitly, so nothing here depends on the server's clock either.

A few tests are SQLite's alone: the inline driver's cancellation points and
the raw file written by an older release.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from sqlite3 import Row
from typing import TypeVar, Unpack

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.llamaparse.client import ParsedDocument
from resilience import Budget, BudgetExceeded
from resilience.clock import wall_time
from resilience.errors import ConfigError
from resilience.ledger import PeriodLimit
from resilience.testing import run_virtual
from simulations.servers import free_port
from state import (
    EmbeddingRow,
    IllegalTransition,
    Job,
    JobChanges,
    JobNotFound,
    JobState,
    JobStore,
    NotStored,
    SchemaTooNew,
    SqliteJobStore,
    StaleJob,
    StoredChunk,
    Trigger,
    WaitReason,
)
from state.pipeline.chunking import ChunkingPolicy, chunk
from state.store.database import Params
from state.store.open import locate, open_store
from state.store.postgres import PostgresJobStore, PostgresSession
from state.store.schema import LATEST, MIGRATIONS, SQLITE
from state.store.schema import POSTGRES as POSTGRES_SQL
from state.store.sqlite import SqliteSession
from state.store.vectors import pack_f32, unpack_f32

S, T = JobState, Trigger
R = TypeVar("R")
MODEL, DIMS = "text-embedding-3-small", 4
Store = SqliteJobStore | PostgresJobStore
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


def is_postgres(target: str) -> bool:
    return target.startswith("postgresql://")


async def open_target(target: str) -> Store:
    """The store at `target`: a postgresql:// URL, or a file whose name picks the driver."""
    if is_postgres(target):
        return await open_store(target)
    path = Path(target)
    return await SqliteJobStore.open(path, inline=path.stem.endswith("-inline"))


def run(target: str, body: Callable[[Store], Awaitable[R]]) -> R:
    """Open the store at `target`, run `body` with it on the virtual loop, and close it."""

    async def main() -> R:
        async with await open_target(target) as store:
            return await body(store)

    return run_virtual(main())


def raw_sql(target: str, *statements: str) -> list[tuple[object, ...]]:
    """Run `statements` on the database itself, past the store; the last one's rows."""
    if is_postgres(target):

        async def fetch() -> list[tuple[object, ...]]:
            connection = await asyncpg.connect(target)
            try:
                async with connection.transaction():
                    for statement in statements[:-1]:
                        await connection.execute(statement)
                    return [tuple(row) for row in await connection.fetch(statements[-1])]
            finally:
                await connection.close()

        return asyncio.run(fetch())
    with sqlite3.connect(target) as raw:
        for statement in statements[:-1]:
            raw.execute(statement)
        rows = raw.execute(statements[-1]).fetchall()
    raw.close()
    return rows


def target_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_database")
        return url
    return str(tmp_path / f"jobs-{request.param}.sqlite3")


@pytest.fixture(params=["aiosqlite", "inline", POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: every store test runs over both SQLite drivers and PostgreSQL."""
    return target_for(request, tmp_path)


@pytest.fixture(params=["aiosqlite", POSTGRES])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For two stores on one database in one process. Not SQLite's inline driver: the
    second connection would wait for SQLite's lock on the very thread the first needs
    to let go."""
    return target_for(request, tmp_path)


@pytest.fixture(params=["aiosqlite", "inline"])
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A SQLite file, for the tests that look at the file or the driver themselves."""
    return tmp_path / f"jobs-{request.param}.sqlite3"


async def move(
    store: JobStore,
    job: Job,
    trigger: Trigger,
    *,
    owner: str | None = "w1",
    now: float | None = None,
    **changes: Unpack[JobChanges],
) -> Job:
    return await store.transition(
        job.id,
        expected_state=job.state,
        expected_version=job.version,
        owner=owner,
        trigger=trigger,
        reason=f"test {trigger}",
        correlation_id=f"corr-{trigger}",
        now=wall_time() if now is None else now,
        **changes,
    )


async def leased_job(store: JobStore, content: bytes = b"hello") -> Job:
    """A new job for `content`, leased by w1 for a minute."""
    await store.create_job(content, filename="a.txt", mime_type="text/plain", now=wall_time())
    (job,) = await store.lease("w1", now=wall_time(), lease_s=60)
    return job


async def with_chunks(store: JobStore, count: int = 3) -> str:
    upload = await store.create_job(
        b"doc", filename="d.md", mime_type="text/markdown", now=wall_time()
    )
    await store.put_chunks(upload.job.sha256, [StoredChunk(i, f"chunk {i}") for i in range(count)])
    return upload.job.sha256


# -- jobs and their audit trail -------------------------------------------------


def test_create_job_is_idempotent_by_content(db: str) -> None:
    async def body(store: Store) -> None:
        now = wall_time()
        first = await store.create_job(
            b"same bytes", filename="a.pdf", mime_type="application/pdf", now=now
        )
        again = await store.create_job(
            b"same bytes", filename="renamed.pdf", mime_type="application/pdf", now=now + 5
        )
        other = await store.create_job(b"other", filename="b.txt", mime_type="text/plain", now=now)
        assert first.created
        assert not again.created
        assert other.created
        assert again.job == first.job
        assert first.job.filename == "a.pdf"
        assert first.job.id == "job-" + first.job.sha256[:32]
        assert other.job.id != first.job.id
        assert (first.job.state, first.job.version, first.job.not_before) == (S.UPLOADED, 1, now)
        assert await store.document(first.job.sha256) == b"same bytes"
        assert await store.document("0" * 64) is None
        assert await store.get_job(first.job.id) == first.job
        assert await store.get_job("job-nope") is None
        counts = await store.row_counts()
        assert (counts["documents"], counts["jobs"], counts["job_events"]) == (2, 2, 2)

    run(db, body)


def test_the_happy_path_is_audited_edge_by_edge(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        for trigger in (T.START_PARSE, T.FINISH_PARSE, T.CHUNK, T.START_EMBED):
            job = await move(store, job, trigger, degraded=trigger is T.FINISH_PARSE)
            assert job.lease_owner == "w1"  # the worker keeps its lease along the path
        await asyncio.sleep(45)  # a slow embed: the minute's lease is renewed on the way
        job = await store.renew_lease(job.id, "w1", now=wall_time(), lease_s=60)
        assert job.lease_expires_at == wall_time() + 60
        await asyncio.sleep(45)
        job = await move(store, job, T.FINISH_EMBED)
        assert (job.state, job.version, job.degraded) == (S.COMPLETE, 6, True)
        assert job.lease_owner is None
        assert job.lease_expires_at is None
        assert job.updated_at == "2026-01-01T00:01:30.000Z"
        history = await store.history(job.id)
        assert [(e.source, e.dest, e.trigger) for e in history] == [
            (None, S.UPLOADED, "create"),
            (S.UPLOADED, S.PARSING, "start_parse"),
            (S.PARSING, S.PARSED, "finish_parse"),
            (S.PARSED, S.CHUNKED, "chunk"),
            (S.CHUNKED, S.EMBEDDING, "start_embed"),
            (S.EMBEDDING, S.COMPLETE, "finish_embed"),
        ]
        assert [e.version for e in history] == [1, 2, 3, 4, 5, 6]
        assert history[1].reason == "test start_parse"
        assert history[1].correlation_id == "corr-start_parse"
        assert history[1].at == "2026-01-01T00:00:00.000Z"
        assert history[-1].at == "2026-01-01T00:01:30.000Z"
        assert {e.job_id for e in history} == {job.id}
        assert await store.degraded_jobs() == [job]
        assert (await store.jobs_by_state())[S.COMPLETE] == 1

    run(db, body)


def test_wait_reschedules_and_resume_returns_to_the_step(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        job = await move(store, job, T.START_PARSE)
        now = wall_time()
        job = await move(
            store, job, T.WAIT, not_before=now + 30, wait_reason=WaitReason.CIRCUIT_OPEN
        )
        assert (job.state, job.resume_to, job.wait_reason) == (S.WAITING, S.PARSING, "circuit_open")
        assert job.lease_owner is None
        assert await store.lease("w2", now=now + 29.9, lease_s=60) == []
        (taken,) = await store.lease("w2", now=now + 30, lease_s=60)
        assert taken.step_attempts == job.step_attempts  # picking up a waiting job is no attempt
        resumed = await move(store, taken, T.RESUME, owner="w2", now=now + 30)
        assert (resumed.state, resumed.resume_to, resumed.wait_reason) == (S.PARSING, None, None)
        assert resumed.lease_owner == "w2"

    run(db, body)


def test_failed_is_a_dead_letter_that_absorbs(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        job = await move(store, job, T.START_PARSE, last_error="503 from llamaparse")
        job = await move(store, job, T.WAIT, not_before=wall_time(), wait_reason=WaitReason.RETRY)
        job = await move(store, job, T.FAIL, owner=None, failure_reason="gave up after 5 tries")
        assert (job.state, job.failure_reason) == (S.FAILED, "gave up after 5 tries")
        assert job.last_error == "503 from llamaparse"
        rows = len(await store.history(job.id))
        needs: dict[Trigger, JobChanges] = {
            T.WAIT: {"not_before": 0.0, "wait_reason": WaitReason.BUDGET},
            T.FAIL: {"failure_reason": "again"},
        }
        for trigger in Trigger:
            with pytest.raises(IllegalTransition, match="terminal"):
                await move(store, job, trigger, owner=None, **needs.get(trigger, {}))
        assert await store.get_job(job.id) == job  # nothing was written
        assert len(await store.history(job.id)) == rows
        assert await store.lease("w1", now=wall_time() + 1e6, lease_s=60) == []

    run(db, body)


def test_a_transition_checks_its_arguments_before_writing(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        with pytest.raises(ValueError, match="wait needs"):
            await move(store, job, T.WAIT)
        with pytest.raises(IllegalTransition):
            await move(store, job, T.CHUNK)
        with pytest.raises(JobNotFound):
            await store.transition(
                "job-nope",
                expected_state=S.UPLOADED,
                expected_version=1,
                owner=None,
                trigger=T.START_PARSE,
                reason="x",
                correlation_id=None,
                now=wall_time(),
            )
        with pytest.raises(StaleJob, match="expected parsing v1, found uploaded v1"):
            await store.transition(
                job.id,
                expected_state=S.PARSING,
                expected_version=1,
                owner="w1",
                trigger=T.FINISH_PARSE,
                reason="x",
                correlation_id=None,
                now=wall_time(),
            )
        assert await store.get_job(job.id) == job
        assert len(await store.history(job.id)) == 1

    run(db, body)


# -- compare-and-set and leases -----------------------------------------------------


def test_concurrent_transitions_on_one_version_one_wins(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        results = await asyncio.gather(
            *(move(store, job, T.START_PARSE) for _ in range(8)), return_exceptions=True
        )
        winners = [r for r in results if isinstance(r, Job)]
        assert len(winners) == 1
        assert all(isinstance(r, StaleJob) for r in results if r not in winners)
        assert [e.trigger for e in await store.history(job.id)] == ["create", "start_parse"]

    run(db, body)


def test_two_connections_to_one_database_one_wins(shared_db: str) -> None:
    """The compare-and-set holds between processes too: here, two stores on one database."""
    db = shared_db

    async def main() -> list[Job | BaseException]:
        async with (
            await open_target(db) as first,
            await open_target(db) as second,
        ):
            job = await leased_job(first)
            return await asyncio.gather(
                *(move(store, job, T.START_PARSE) for store in (first, second) * 4),
                return_exceptions=True,
            )

    results = run_virtual(main())
    assert sum(isinstance(r, Job) for r in results) == 1
    assert sum(isinstance(r, StaleJob) for r in results) == 7


def test_an_expired_lease_passes_to_another_worker(db: str) -> None:
    async def body(store: Store) -> None:
        now = wall_time()
        await store.create_job(b"x", filename="x.txt", mime_type="text/plain", now=now)
        (mine,) = await store.lease("w1", now=now, lease_s=30)
        assert (mine.lease_owner, mine.lease_expires_at, mine.step_attempts) == ("w1", now + 30, 1)
        assert await store.lease("w2", now=now + 29, lease_s=30) == []
        (theirs,) = await store.lease("w2", now=now + 30, lease_s=30)
        assert (theirs.lease_owner, theirs.step_attempts) == ("w2", 2)  # a second pick-up
        with pytest.raises(StaleJob, match="w1 does not hold the lease"):
            await move(store, mine, T.START_PARSE, now=now + 31)
        with pytest.raises(StaleJob):
            await store.renew_lease(mine.id, "w1", now=now + 31, lease_s=30)
        assert not await store.release_lease(mine.id, "w1")
        moved = await move(store, theirs, T.START_PARSE, owner="w2", now=now + 31)
        assert moved.version == mine.version + 1

    run(db, body)


def test_a_lapsed_lease_cannot_commit_even_if_nobody_took_it(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        late = (job.lease_expires_at or 0.0) + 0.001
        with pytest.raises(StaleJob, match="lapsed"):
            await move(store, job, T.START_PARSE, now=late)
        with pytest.raises(StaleJob, match="lapsed"):
            await store.renew_lease(job.id, "w1", now=late, lease_s=60)

    run(db, body)


def test_an_operator_acts_only_on_unleased_jobs(db: str) -> None:
    async def body(store: Store) -> None:
        job = await leased_job(store)
        with pytest.raises(StaleJob, match="leased by w1"):
            await move(store, job, T.FAIL, owner=None, failure_reason="cancelled")
        assert await store.release_lease(job.id, "w1")
        job = (await store.get_job(job.id)) or job
        assert job.lease_owner is None
        failed = await move(store, job, T.FAIL, owner=None, failure_reason="cancelled")
        assert failed.state is S.FAILED

    run(db, body)


def test_lease_takes_the_earliest_ready_jobs_up_to_the_limit(db: str) -> None:
    async def body(store: Store) -> None:
        now = wall_time()
        ids = []
        for i in range(4):
            upload = await store.create_job(
                f"doc {i}".encode(), filename=f"{i}.txt", mime_type="text/plain", now=now + i
            )
            ids.append(upload.job.id)
        taken = await store.lease("w1", now=now + 10, lease_s=60, limit=3)
        assert [job.id for job in taken] == ids[:3]
        assert [job.id for job in await store.lease("w2", now=now + 10, lease_s=60)] == ids[3:]
        assert await store.lease("w3", now=now + 10, lease_s=60) == []
        with pytest.raises(ValueError, match="limit"):
            await store.lease("w3", now=now, lease_s=60, limit=0)

    run(db, body)


def test_a_lease_to_embed_takes_only_jobs_whose_next_provider_step_is_the_embedding(
    db: str,
) -> None:
    async def body(store: Store) -> None:
        now = wall_time()
        jobs = {}
        for name in ("uploaded", "parsed", "chunked", "embedding", "waits_to_embed", "waits_parse"):
            await store.create_job(name.encode(), filename=name, mime_type="text/plain", now=now)
            (job,) = await store.lease("setup", now=now, lease_s=60)
            jobs[name] = job
        parsing = await move(store, jobs["parsed"], T.START_PARSE, owner="setup")
        await move(store, parsing, T.FINISH_PARSE, owner="setup")
        for name in ("chunked", "embedding", "waits_to_embed"):
            job = await move(store, jobs[name], T.START_PARSE, owner="setup")
            job = await move(store, job, T.FINISH_PARSE, owner="setup")
            job = await move(store, job, T.CHUNK, owner="setup")
            if name != "chunked":
                job = await move(store, job, T.START_EMBED, owner="setup")
            if name == "waits_to_embed":
                await move(
                    store, job, T.WAIT, owner="setup", not_before=now, wait_reason=WaitReason.RETRY
                )
        parsing = await move(store, jobs["waits_parse"], T.START_PARSE, owner="setup")
        await move(
            store, parsing, T.WAIT, owner="setup", not_before=now, wait_reason=WaitReason.RETRY
        )
        for job in jobs.values():
            await store.release_lease(job.id, "setup")
        taken = await store.lease("w1", now=now + 1, lease_s=60, limit=10, to_embed=True)
        expected = {"parsed", "chunked", "embedding", "waits_to_embed"}
        assert {job.id for job in taken} == {jobs[name].id for name in expected}
        rest = await store.lease("w2", now=now + 1, lease_s=60, limit=10)
        assert {job.id for job in rest} == {jobs["uploaded"].id, jobs["waits_parse"].id}

    run(db, body)


async def cancel_each_statement(
    store: Store, victim: list[asyncio.Task[Job]], plan: dict[str, int], *, statements: int
) -> list[tuple[int, int, bool]]:
    """Start a transition `statements` times, cancelling it at statement 0, 1, ...

    Returns each job's (version, history length, whether the task saw the
    cancellation), then checks the connection is out of any transaction.
    """
    outcomes = []
    for cancel_at in range(statements):
        job = await leased_job(store, f"doc {cancel_at}".encode())
        plan.update(cancel_at=cancel_at, seen=0)
        victim.append(asyncio.ensure_future(move(store, job, T.START_PARSE)))
        await asyncio.gather(victim[0], return_exceptions=True)
        cancelled = victim.pop().cancelled()
        after = await store.get_job(job.id)
        assert after is not None
        outcomes.append((after.version, len(await store.history(job.id)), cancelled))
    # The connection is out of any transaction: the next one works.
    assert (await leased_job(store, b"after")).state is S.UPLOADED
    return outcomes


def test_a_cancelled_transition_is_all_or_nothing(
    sqlite_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while any one of its statements runs, a transition commits whole or not at all.

    A transition is BEGIN, SELECT, UPDATE, INSERT, COMMIT; the task is
    cancelled while statement `k` is in aiosqlite's thread. The statement
    still finishes there, so a cancelled COMMIT has committed.
    """
    fetch = SqliteSession.fetch
    victim: list[asyncio.Task[Job]] = []
    plan = {"cancel_at": 0, "seen": 0}

    async def cancelling_fetch(session: SqliteSession, sql: str, params: Params = ()) -> list[Row]:
        if victim and plan["seen"] == plan["cancel_at"]:
            victim[0].cancel()
        plan["seen"] += 1
        return await fetch(session, sql, params)

    monkeypatch.setattr(SqliteSession, "fetch", cancelling_fetch)

    async def body(store: Store) -> list[tuple[int, int, bool]]:
        return await cancel_each_statement(store, victim, plan, statements=6)

    assert run(str(sqlite_db), body) == [
        (1, 1, True),  # BEGIN
        (1, 1, True),  # SELECT
        (1, 1, True),  # UPDATE
        (1, 1, True),  # INSERT of the audit row
        (2, 2, True),  # COMMIT: done in the thread, though the caller saw a cancellation
        (2, 2, False),  # never cancelled
    ]


@pytest.mark.postgres
def test_a_cancelled_postgres_transition_is_all_or_nothing(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at any of its statements, a transition on PostgreSQL commits nothing.

    A transition is SELECT ... FOR UPDATE, UPDATE and INSERT inside asyncpg's
    transaction; the task is cancelled as statement `k` goes out. asyncpg
    cancels the query on the server and the transaction rolls back, and the
    connection goes back to the pool usable.
    """
    calls = {"fetch_one": PostgresSession.fetch_one, "execute": PostgresSession.execute}
    victim: list[asyncio.Task[Job]] = []
    plan = {"cancel_at": 0, "seen": 0}

    def cancelling(name: str) -> Callable[..., Awaitable[object]]:
        async def statement(connection: PostgresSession, sql: str, params: Params = ()) -> object:
            if victim and plan["seen"] == plan["cancel_at"]:
                victim[0].cancel()
            plan["seen"] += 1
            return await calls[name](connection, sql, params)

        return statement

    for name in calls:
        monkeypatch.setattr(PostgresSession, name, cancelling(name))

    async def body(store: Store) -> list[tuple[int, int, bool]]:
        return await cancel_each_statement(store, victim, plan, statements=4)

    assert run(postgres_database, body) == [
        (1, 1, True),  # SELECT ... FOR UPDATE
        (1, 1, True),  # UPDATE
        (1, 1, True),  # INSERT of the audit row
        (2, 2, False),  # never cancelled
    ]


# -- chunks, embeddings and parse results ------------------------------------------


def test_chunks_are_stored_once(db: str) -> None:
    async def body(store: Store) -> None:
        sha = await with_chunks(store, 3)
        again = await store.put_chunks(sha, [StoredChunk(i, f"chunk {i}") for i in range(3)])
        changed = await store.put_chunks(
            sha, [StoredChunk(0, "a different chunker"), StoredChunk(3, "new")]
        )
        assert (again, changed) == (0, 1)
        assert [c.text for c in await store.chunks(sha)] == ["chunk 0", "chunk 1", "chunk 2", "new"]
        assert (await store.row_counts())["chunks"] == 4
        with pytest.raises(NotStored):
            await store.put_chunks("f" * 64, [StoredChunk(0, "orphan")])
        with pytest.raises(ValueError, match="from 0"):
            await store.put_chunks(sha, [StoredChunk(-1, "x")])

    run(db, body)


def test_the_chunkers_chunks_go_straight_in(db: str) -> None:
    markdown = "# Breakers\n\n" + "A breaker opens after failures. " * 40

    async def body(store: Store) -> list[StoredChunk]:
        upload = await store.create_job(
            markdown.encode(), filename="b.md", mime_type="text/markdown", now=wall_time()
        )
        pieces = chunk(markdown, ChunkingPolicy(size_tokens=64, overlap_tokens=8))
        assert await store.put_chunks(upload.job.sha256, pieces) == len(pieces) > 1
        assert await store.put_chunks(upload.job.sha256, pieces) == 0
        return await store.chunks(upload.job.sha256)

    expected = chunk(markdown, ChunkingPolicy(size_tokens=64, overlap_tokens=8))
    assert run(db, body) == [StoredChunk(piece.index, piece.text) for piece in expected]


def test_embeddings_are_upserted_never_duplicated(db: str) -> None:
    async def body(store: Store) -> None:
        sha = await with_chunks(store, 3)
        mock = [EmbeddingRow(i, [0.0, 0.0, 0.0, 1.0], "mock") for i in range(3)]
        assert await store.put_embeddings(sha, MODEL, DIMS, mock) == 3
        assert await store.put_embeddings(sha, MODEL, DIMS, mock) == 3  # rewritten in place
        assert (await store.row_counts())["embeddings"] == 3
        real = [EmbeddingRow(1, [0.5, 0.25, 0.125, 1.0], "real")]
        assert await store.put_embeddings(sha, MODEL, DIMS, real) == 1  # backfill
        stored = await store.embeddings(sha, MODEL, DIMS)
        assert [e.path for e in stored] == ["mock", "real", "mock"]
        assert stored[1].vector == [0.5, 0.25, 0.125, 1.0]
        downgrade = [EmbeddingRow(1, [0.0, 0.0, 0.0, 1.0], "mock")]
        assert await store.put_embeddings(sha, MODEL, DIMS, downgrade) == 0
        assert (await store.embeddings(sha, MODEL, DIMS))[1] == stored[1]
        # Another (model, dimensions) is another row, not a replacement.
        await store.put_embeddings(sha, MODEL, 2, [EmbeddingRow(0, [1.0, 0.0], "real")])
        assert (await store.row_counts())["embeddings"] == 4
        assert await store.embeddings(sha, "text-embedding-3-large", DIMS) == []

    run(db, body)


def test_a_batch_that_repeats_a_key_applies_row_by_row(db: str) -> None:
    """Every backend gives what SQLite's row-by-row batch gives: chunks first-wins,
    vectors upserted in order (PostgreSQL splits such a batch; see its store)."""

    async def body(store: Store) -> None:
        sha = await with_chunks(store, 0)
        assert await store.put_chunks(sha, [StoredChunk(0, "first"), StoredChunk(0, "second")]) == 1
        assert await store.chunks(sha) == [StoredChunk(0, "first")]
        rows = [
            EmbeddingRow(0, [0.0] * DIMS, "mock"),
            EmbeddingRow(0, [1.0] * DIMS, "real"),
            EmbeddingRow(0, [2.0] * DIMS, "mock"),  # never over a real one
        ]
        assert await store.put_embeddings(sha, MODEL, DIMS, rows) == 2
        (stored,) = await store.embeddings(sha, MODEL, DIMS)
        assert (stored.vector, stored.path) == ([1.0] * DIMS, "real")

    run(db, body)


def test_embeddings_are_checked_before_writing(db: str) -> None:
    async def body(store: Store) -> None:
        sha = await with_chunks(store, 1)
        with pytest.raises(ValueError, match="3 values for 4 dimensions"):
            await store.put_embeddings(sha, MODEL, DIMS, [EmbeddingRow(0, [1.0] * 3, "real")])
        with pytest.raises(ValueError, match="'real' or 'mock'"):
            await store.put_embeddings(sha, MODEL, DIMS, [EmbeddingRow(0, [1.0] * 4, "fake")])  # type: ignore[arg-type]
        rows = [EmbeddingRow(0, [1.0] * 4, "real"), EmbeddingRow(9, [1.0] * 4, "real")]
        with pytest.raises(NotStored):
            await store.put_embeddings(sha, MODEL, DIMS, rows)
        assert await store.embeddings(sha, MODEL, DIMS) == []  # all or nothing

    run(db, body)


def test_vectors_are_float32_blobs_that_round_trip_exactly(db: str) -> None:
    float32 = [1.0, -0.0, 3.4028234663852886e38, 1.401298464324817e-45, -2.5e-3, 0.1]
    exact = unpack_f32(pack_f32(float32))

    async def body(store: Store) -> list[float]:
        sha = await with_chunks(store, 1)
        await store.put_embeddings(sha, MODEL, len(exact), [EmbeddingRow(0, exact, "real")])
        return (await store.embeddings(sha, MODEL, len(exact)))[0].vector

    assert run(db, body) == exact
    assert exact[-1] != 0.1  # 0.1 itself has no float32; its nearest one comes back
    if is_postgres(db):
        query, binary = "SELECT pg_typeof(vector)::text, octet_length(vector)", "bytea"
    else:
        query, binary = "SELECT typeof(vector), length(vector)", "blob"
    assert raw_sql(db, f"{query} FROM embeddings") == [(binary, 4 * len(exact))]


@given(st.lists(st.floats(width=32, allow_nan=False), max_size=64))
def test_float32_packing_is_exact_and_little_endian(vector: list[float]) -> None:
    blob = pack_f32(vector)
    assert unpack_f32(blob) == vector
    assert blob == b"".join(struct.pack("<f", value) for value in vector)


def test_parse_results_prefer_real_over_mock(db: str) -> None:
    async def body(store: Store) -> None:
        upload = await store.create_job(
            b"%PDF", filename="p.pdf", mime_type="application/pdf", now=0
        )
        sha = upload.job.sha256
        mock = ParsedDocument("mock text", 1, "mock-1", sha)
        real = ParsedDocument("# Real", 3, "lp-7", sha, cost_usd=0.009, failed_pages=[2])
        assert await store.get_parse(sha) is None
        assert await store.put_parse(mock, "mock")
        assert await store.put_parse(real, "real")
        assert not await store.put_parse(mock, "mock")
        stored = await store.get_parse(sha)
        assert stored is not None
        assert stored.path == "real"
        assert stored.parsed == ParsedDocument("# Real", 3, "lp-7", sha, failed_pages=[2])
        with pytest.raises(NotStored):
            await store.put_parse(ParsedDocument("x", 1, "lp-8", "e" * 64), "real")

    run(db, body)


def test_a_chunked_documents_text_is_frozen(db: str) -> None:
    """A late real parse (from a step whose lease lapsed) must not change the text the
    chunks were cut from; the same text may still be upgraded to real."""

    async def body(store: Store) -> None:
        sha = await with_chunks(store, 2)
        assert await store.put_parse(ParsedDocument("mock text", 1, "mock-1", sha), "mock")
        assert not await store.put_parse(ParsedDocument("# Real", 1, "lp-1", sha), "real")
        stored = await store.get_parse(sha)
        assert stored is not None
        assert (stored.parsed.markdown, stored.path) == ("mock text", "mock")
        assert await store.put_parse(ParsedDocument("mock text", 1, "lp-2", sha), "real")
        stored = await store.get_parse(sha)
        assert stored is not None
        assert (stored.parsed.markdown, stored.path) == ("mock text", "real")

    run(db, body)


def test_replace_outputs_swaps_parse_chunks_and_vectors_all_or_nothing(db: str) -> None:
    async def body(store: Store) -> None:
        sha = await with_chunks(store, 3)
        await store.put_parse(ParsedDocument("mock text", 1, "mock-1", sha), "mock")
        old = [EmbeddingRow(i, [1.0, 0.0, 0.0, 0.0], "mock") for i in range(3)]
        await store.put_embeddings(sha, MODEL, DIMS, old)
        await store.put_embeddings(sha, MODEL, 2, [EmbeddingRow(0, [1.0, 0.0], "mock")])
        real = ParsedDocument("# Real text", 1, "lp-1", sha)
        chunks = [StoredChunk(0, "real 0"), StoredChunk(1, "real 1")]
        before = await store.row_counts()

        half_mock = [EmbeddingRow(0, [0.5] * 4, "real"), EmbeddingRow(1, [0.5] * 4, "mock")]
        with pytest.raises(ValueError, match="real results only"):
            await store.replace_outputs(real, chunks, MODEL, DIMS, half_mock)
        dangling = [EmbeddingRow(0, [0.5] * 4, "real"), EmbeddingRow(5, [0.5] * 4, "real")]
        with pytest.raises(NotStored):  # vector of a chunk not in the new set
            await store.replace_outputs(real, chunks, MODEL, DIMS, dangling)
        assert await store.row_counts() == before
        kept = await store.get_parse(sha)
        assert kept is not None
        assert kept.path == "mock"

        rows = [EmbeddingRow(i, [0.5] * 4, "real") for i in range(2)]
        await store.replace_outputs(real, chunks, MODEL, DIMS, rows)
        stored = await store.get_parse(sha)
        assert stored is not None
        assert (stored.parsed.markdown, stored.path) == ("# Real text", "real")
        assert await store.chunks(sha) == chunks
        assert [(e.chunk_index, e.path) for e in await store.embeddings(sha, MODEL, DIMS)] == [
            (0, "real"),
            (1, "real"),
        ]
        # The other model's vector described the old text, so it went too.
        assert await store.embeddings(sha, MODEL, 2) == []
        counts = await store.row_counts()
        assert (counts["chunks"], counts["embeddings"]) == (2, 2)

    run(db, body)


# -- the schema ---------------------------------------------------------------------


def test_opening_a_v1_database_upgrades_it_and_keeps_its_data(sqlite_db: Path) -> None:
    db = str(sqlite_db)
    with sqlite3.connect(db) as old:  # what the first release wrote
        old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT)")
        for statement in MIGRATIONS[0].render(SQLITE):
            old.execute(statement)
        old.execute("INSERT INTO schema_version VALUES (1, ?)", (MIGRATIONS[0].description,))
        old.execute("INSERT INTO documents VALUES ('abc', x'00')")
        old.execute(
            """INSERT INTO jobs VALUES ('job-abc', 'abc', 'old.txt', 'text/plain', 'chunked', 4,
            0, 0, NULL, NULL, 1, NULL, NULL, NULL, NULL, '2025-06-01T00:00:00.000Z',
            '2025-06-01T00:00:00.000Z')"""
        )
    old.close()

    async def body(store: Store) -> Job | None:
        assert await store.schema_version() == LATEST
        await store.put_chunks("abc", [StoredChunk(0, "added by v2")])
        return await store.get_job("job-abc")

    job = run(db, body)
    assert job is not None
    assert (job.filename, job.state, job.version, job.degraded) == ("old.txt", S.CHUNKED, 4, True)
    with sqlite3.connect(db) as raw:
        versions = [row[0] for row in raw.execute("SELECT version FROM schema_version")]
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    raw.close()
    assert versions == list(range(1, LATEST + 1))
    assert mode == "wal"


@pytest.mark.postgres
def test_opening_a_v1_postgres_database_upgrades_it_and_keeps_its_data(
    postgres_database: str,
) -> None:
    db = postgres_database
    raw_sql(
        db,
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL)",
        *MIGRATIONS[0].render(POSTGRES_SQL),
        "INSERT INTO schema_version VALUES (1, 'documents, jobs and their audit trail')",
        "INSERT INTO documents VALUES ('abc', '\\x00')",
        """INSERT INTO jobs VALUES ('job-abc', 'abc', 'old.txt', 'text/plain', 'chunked', 4,
        0, 0, NULL, NULL, TRUE, NULL, NULL, NULL, NULL, '2025-06-01T00:00:00.000Z',
        '2025-06-01T00:00:00.000Z')""",
        "SELECT 1",
    )

    async def body(store: Store) -> Job | None:
        assert await store.schema_version() == LATEST
        await store.put_chunks("abc", [StoredChunk(0, "added by v2")])
        return await store.get_job("job-abc")

    job = run(db, body)
    assert job is not None
    assert (job.filename, job.state, job.version, job.degraded) == ("old.txt", S.CHUNKED, 4, True)
    versions = raw_sql(db, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, LATEST + 1)]


def test_stores_opening_together_migrate_once(shared_db: str) -> None:
    """Four stores open one new database at once: each migration is applied exactly once."""

    async def main() -> list[int]:
        stores = await asyncio.gather(*(open_target(shared_db) for _ in range(4)))
        versions = [await store.schema_version() for store in stores]
        for store in stores:
            await store.close()
        return versions

    assert run_virtual(main()) == [LATEST] * 4
    rows = raw_sql(shared_db, "SELECT version FROM schema_version ORDER BY version")
    assert rows == [(v,) for v in range(1, LATEST + 1)]


def test_a_database_from_newer_code_is_refused(db: str) -> None:
    assert run(db, lambda store: store.schema_version()) == LATEST
    raw_sql(db, f"INSERT INTO schema_version VALUES ({LATEST + 1}, 'from the future')")
    with pytest.raises(SchemaTooNew, match=f"v{LATEST + 1}"):
        run(db, lambda store: store.schema_version())


def test_breakwater_db_picks_the_store() -> None:
    assert locate("jobs.sqlite3") == Path("jobs.sqlite3")
    assert locate(" sqlite:///var/jobs.db ") == Path("var/jobs.db")
    assert locate(Path("x.db")) == Path("x.db")
    url = "postgresql://breakwater@db.internal:5432/jobs"
    assert locate(url) == url
    assert locate("postgres://db/jobs") == "postgres://db/jobs"
    for wrong in ("", "mysql://db/jobs", "redis://cache"):
        with pytest.raises(ConfigError, match="BREAKWATER_DB"):
            locate(wrong)


def test_open_store_opens_either_backend(db: str) -> None:
    async def main() -> int:
        async with await open_store(db) as store:
            return await store.schema_version()

    assert run_virtual(main()) == LATEST


def test_an_unreachable_postgres_server_is_a_config_error_without_the_password() -> None:
    url = f"postgresql://breakwater:hunter2@127.0.0.1:{free_port()}/jobs"  # nobody listens
    with pytest.raises(ConfigError) as caught:
        asyncio.run(open_store(url))
    message = str(caught.value)
    assert message.startswith(
        "BREAKWATER_DB: cannot open the PostgreSQL database "
        f"postgresql://breakwater@127.0.0.1:{url.rsplit(':', 1)[1]}: "
    )
    assert "hunter2" not in message


# -- the budget ledger ----------------------------------------------------------------


def test_concurrent_reservations_never_exceed_the_limit(db: str) -> None:
    async def body(store: Store) -> tuple[int, tuple[float, int]]:
        budget = Budget(daily_usd=1.0, ledger=store.ledger(), scope="openai")
        results = await asyncio.gather(
            *(budget.reserve("openai", 0.03) for _ in range(50)), return_exceptions=True
        )
        assert all(
            not isinstance(r, BaseException) or isinstance(r, BudgetExceeded) for r in results
        )
        admitted = sum(not isinstance(r, BaseException) for r in results)
        return admitted, await budget.spent("day")

    admitted, (usd, requests) = run(db, body)
    assert admitted == 33
    assert requests == 33
    assert usd == pytest.approx(0.99)


def test_two_connections_share_one_limit(shared_db: str) -> None:
    db = shared_db

    async def main() -> tuple[int, float]:
        async with (
            await open_target(db) as first,
            await open_target(db) as second,
        ):
            budgets = [Budget(daily_usd=1.0, ledger=s.ledger()) for s in (first, second)]
            results = await asyncio.gather(
                *(budgets[i % 2].reserve("openai", 0.1) for i in range(25)),
                return_exceptions=True,
            )
            return sum(not isinstance(r, BaseException) for r in results), (
                await budgets[0].spent("day")
            )[0]

    admitted, usd = run_virtual(main())
    assert admitted == 10
    assert usd == pytest.approx(1.0)


def test_the_ledger_refuses_all_or_nothing_and_refunds(db: str) -> None:
    async def body(store: Store) -> None:
        ledger = store.ledger()
        hour = PeriodLimit("k:hour", usd=1.0, requests=None, expires_at=2e9)
        day = PeriodLimit("k:day", usd=None, requests=2, expires_at=2e9)
        assert await ledger.try_add([hour, day], 0.4, 1) == [(0.4, 1), (0.4, 1)]
        assert await ledger.try_add([hour, day], 0.7, 1) is None  # the hour's dollars
        assert await ledger.try_add([hour, day], 0.1, 1) == [(0.5, 2), (0.5, 2)]
        assert await ledger.try_add([hour, day], 0.1, 1) is None  # the day's requests
        assert await ledger.totals("k:hour") == (0.5, 2)
        assert await ledger.add(["k:hour", "k:day"], -0.5, -2) == [(0.0, 0), (0.0, 0)]
        assert await ledger.totals("unknown") == (0.0, 0)

    run(db, body)


def test_the_ledger_sweeps_expired_keys(db: str) -> None:
    async def body(store: Store) -> float:
        ledger = store.ledger(clock=lambda: 1_000.0)
        await ledger.try_add([PeriodLimit("old", None, None, expires_at=999.0)], 1.0, 1)
        await ledger.add(["stray"], 1.0, 1)  # lives default_ttl_s from the clock
        fresh = PeriodLimit("fresh", None, None, expires_at=5_000.0)
        for _ in range(1023):  # the 1,024th try_add sweeps
            await ledger.try_add([fresh], 0.0, 0)
        return (await ledger.totals("old"))[0] + (await ledger.totals("stray"))[0]

    assert run(db, body) == 1.0  # "old" is gone, "stray" lives on


# -- durability and time ---------------------------------------------------------------


def test_everything_survives_a_reopen(db: str) -> None:
    async def before(store: Store) -> Job:
        job = await leased_job(store)
        job = await move(store, job, T.START_PARSE)
        await store.put_chunks(job.sha256, [StoredChunk(0, "kept")])
        await store.put_embeddings(job.sha256, MODEL, 2, [EmbeddingRow(0, [0.5, -1.0], "real")])
        await Budget(daily_usd=5.0, ledger=store.ledger(), scope="openai").reserve("openai", 0.25)
        return job

    async def after(store: Store) -> None:
        assert await store.get_job(job.id) == job
        assert len(await store.history(job.id)) == 2
        assert await store.chunks(job.sha256) == [StoredChunk(0, "kept")]
        assert (await store.embeddings(job.sha256, MODEL, 2))[0].vector == [0.5, -1.0]
        budget = Budget(daily_usd=5.0, ledger=store.ledger(), scope="openai")
        assert await budget.spent("day") == (0.25, 1)
        # The lease survived too: another worker cannot take the job before it lapses.
        assert await store.lease("w2", now=wall_time(), lease_s=60) == []

    job = run(db, before)
    run(db, after)


def test_store_calls_do_not_move_virtual_time(db: str) -> None:
    """A store call holds the clock (aiosqlite's thread, PostgreSQL's round trips):
    a pending hour-long timer must not fire."""

    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        timer = asyncio.ensure_future(asyncio.sleep(3600))
        started = loop.time()
        async with await open_target(db) as store:
            job = await asyncio.wait_for(leased_job(store), timeout=1.0)
            for trigger in (T.START_PARSE, T.FINISH_PARSE, T.CHUNK):
                job = await move(store, job, trigger)
            await store.put_chunks(job.sha256, [StoredChunk(i, "x") for i in range(50)])
            await Budget(daily_usd=1.0, ledger=store.ledger()).reserve("openai", 0.01)
            await store.history(job.id)
        elapsed = loop.time() - started
        done = timer.done()
        await timer
        return elapsed, loop.time() - started, done

    elapsed, after_timer, fired_early = run_virtual(main())
    assert elapsed == 0.0
    assert not fired_early
    assert after_timer == 3600.0
