"""`JobStore` in SQL, written once for SQLite and PostgreSQL.

Every method is one statement in a session, or one transaction, on a
`state.store.database.Database`; what the two databases cannot share sits
in its `Dialect`. Open a store with `SqliteJobStore.open(path)`
(`state.store.sqlite`) or `PostgresJobStore.open(url)` (`state.store.postgres`),
or let `state.store.open.open_store` pick by `BREAKWATER_DB`.

How a compare-and-set (`transition`, `renew_lease`, `clear_degraded`) holds:
it reads the job inside a transaction, the row held by the dialect's
`row_lock` (PostgreSQL) or by the transaction itself (SQLite's `BEGIN
IMMEDIATE` takes the file's write lock at the start), judges it with
`state.store.rules`, and writes the job and its audit row together. A
concurrent one waits, then reads what the winner committed and raises
`StaleJob`. `lease` is one statement, so atomic without a transaction.

`create_job` inserts the job with `ON CONFLICT DO NOTHING`: of two uploads
of the same bytes at once on PostgreSQL, the second waits on the unique
key, inserts nothing and returns the first's job (on SQLite the write lock
already kept them apart, and the first SELECT finds it).

The budget ledger lives in the same database (`ledger()`), so totals
survive restarts along with the jobs they paid for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Final, Generic, Self, Unpack

from providers.llamaparse.client import ParsedDocument
from resilience.clock import Clock, iso_utc, wall_time
from resilience.router import Path as ServedBy
from state.machine import Job, JobState, Trigger
from state.store.database import Database, Params, S, Vector, schema_version
from state.store.ledger import SqlLedger
from state.store.protocol import (
    ChunkText,
    Embedding,
    EmbeddingRow,
    JobChanges,
    JobEvent,
    JobNotFound,
    NotStored,
    StaleJob,
    StoredChunk,
    StoredParse,
    Upload,
    served_by,
)
from state.store.remote_sql import RemoteParseRows
from state.store.rows import (
    PUT_PARSE,
    event_from_row,
    job_from_row,
    parse_params,
    present,
    write_audit,
)
from state.store.rules import apply, check_changes, job_id_for, lease_problem
from state.store.vectors import pack_f32, unpack_f32

_CREATE_JOB: Final = """
INSERT INTO jobs (id, sha256, filename, mime_type, state, version,
    step_attempts, not_before, degraded, created_at, updated_at, correlation_id)
VALUES (?, ?, ?, ?, ?, 1, 0, ?, FALSE, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING *"""

_WRITE_JOB: Final = """
UPDATE jobs
SET state = ?, version = ?, step_attempts = ?, not_before = ?, wait_reason = ?, resume_to = ?,
    degraded = ?, last_error = ?, failure_reason = ?, lease_owner = ?, lease_expires_at = ?,
    updated_at = ?
WHERE id = ? AND version = ?
RETURNING *"""

_TABLES: Final = ("documents", "jobs", "job_events", "parses", "chunks", "embeddings")


class SqlJobStore(RemoteParseRows[S], Generic[S]):
    """The `JobStore` protocol on a SQL `Database`; see the module for how it stays atomic."""

    def __init__(self, database: Database[S]) -> None:
        self._db = database
        self._load_job = "SELECT * FROM jobs WHERE id = ?" + database.dialect.row_lock

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def ledger(self, *, clock: Clock = wall_time) -> SqlLedger[S]:
        """A budget `LedgerStore` in this database; `clock` only dates keys for expiry."""
        return SqlLedger(self._db, clock=clock)

    async def schema_version(self) -> int:
        async with self._db.session() as session:
            return await schema_version(session)

    async def close(self) -> None:
        await self._db.close()

    # -- jobs ----------------------------------------------------------------

    async def create_job(
        self,
        content: bytes,
        *,
        filename: str,
        mime_type: str,
        now: float,
        correlation_id: str | None = None,
    ) -> Upload:
        sha256 = hashlib.sha256(content).hexdigest()
        job_id = job_id_for(sha256)
        stamp = iso_utc(now)
        async with self._db.transaction() as tx:
            existing = await tx.fetch_one("SELECT * FROM jobs WHERE sha256 = ?", (sha256,))
            if existing is not None:
                return Upload(job_from_row(existing), created=False)
            await tx.execute(
                "INSERT INTO documents (sha256, content) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (sha256, content),
            )
            row = await tx.fetch_one(
                _CREATE_JOB,
                (
                    job_id,
                    sha256,
                    filename,
                    mime_type,
                    JobState.UPLOADED.value,
                    float(now),
                    stamp,
                    stamp,
                    correlation_id or job_id,
                ),
            )
            if row is None:  # an upload of the same bytes committed while we waited
                return Upload(await self._load(tx, job_id), created=False)
            job = job_from_row(row)
            await write_audit(tx, job, None, "create", f"uploaded {filename}", job.correlation_id)
        return Upload(job, created=True)

    async def get_job(self, job_id: str) -> Job | None:
        async with self._db.session() as session:
            row = await session.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else job_from_row(row)

    async def document(self, sha256: str) -> bytes | None:
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT content FROM documents WHERE sha256 = ?", (sha256,)
            )
        return None if row is None else bytes(row[0])

    async def history(self, job_id: str) -> list[JobEvent]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT * FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        return [event_from_row(row) for row in rows]

    async def lease(
        self, owner: str, *, now: float, lease_s: float, limit: int = 1, to_embed: bool = False
    ) -> list[Job]:
        if not owner:
            raise ValueError("a lease needs an owner")
        if not lease_s > 0 or limit < 1:
            raise ValueError(f"lease_s must be > 0 and limit >= 1, got {lease_s!r}, {limit!r}")
        async with self._db.session() as session:
            rows = await session.fetch(
                self._db.dialect.lease,
                (owner, float(now + lease_s), float(now), limit, to_embed),
            )
        return sorted(
            map(job_from_row, rows), key=lambda job: (job.not_before, job.created_at, job.id)
        )

    async def renew_lease(self, job_id: str, owner: str, *, now: float, lease_s: float) -> Job:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        async with self._db.transaction() as tx:
            job = await self._load(tx, job_id)
            problem = lease_problem(job, owner, now)
            if problem is not None:
                raise StaleJob(job_id, problem)
            row = await tx.fetch_one(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? RETURNING *",
                (float(now + lease_s), job_id),
            )
        return job_from_row(present(row))

    async def release_lease(self, job_id: str, owner: str) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
                WHERE id = ? AND lease_owner = ? RETURNING id""",
                (job_id, owner),
            )
        return row is not None

    async def transition(
        self,
        job_id: str,
        *,
        expected_state: JobState,
        expected_version: int,
        owner: str | None,
        trigger: Trigger,
        reason: str,
        correlation_id: str | None,
        now: float,
        **changes: Unpack[JobChanges],
    ) -> Job:
        trigger = Trigger(trigger)
        check_changes(trigger, changes)
        async with self._db.transaction() as tx:
            job = await self._load(tx, job_id)
            if job.state != expected_state or job.version != expected_version:
                raise StaleJob(
                    job_id,
                    f"expected {expected_state} v{expected_version}, "
                    f"found {job.state} v{job.version}",
                )
            problem = lease_problem(job, owner, now)
            if problem is not None:
                raise StaleJob(job_id, problem)
            new = apply(job, trigger, changes, now)
            row = await tx.fetch_one(_WRITE_JOB, (*_job_params(new), job_id, job.version))
            await write_audit(tx, new, job.state, trigger.value, reason, correlation_id)
        return job_from_row(present(row))

    async def jobs_by_state(self) -> dict[JobState, int]:
        async with self._db.session() as session:
            rows = await session.fetch("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(row[0]): int(row[1]) for row in rows})
        return counts

    async def degraded_jobs(self) -> list[Job]:
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT * FROM jobs WHERE state = 'complete' AND degraded
                ORDER BY created_at, id"""
            )
        return [job_from_row(row) for row in rows]

    async def clear_degraded(
        self, job_id: str, *, reason: str, correlation_id: str | None, now: float
    ) -> Job:
        if not reason.strip():
            raise ValueError("clearing degraded must say why")
        stamp = iso_utc(now)
        async with self._db.transaction() as tx:
            job = await self._load(tx, job_id)
            if job.state != JobState.COMPLETE or not job.degraded:
                raise StaleJob(
                    job_id, f"only a degraded complete job can be cleared, found {job.state}"
                )
            row = await tx.fetch_one(
                """UPDATE jobs SET degraded = FALSE, version = ?, updated_at = ?
                WHERE id = ? AND version = ? RETURNING *""",
                (job.version + 1, stamp, job_id, job.version),
            )
            cleared = job_from_row(present(row))
            await write_audit(tx, cleared, job.state, "clear_degraded", reason, correlation_id)
        return cleared

    async def row_counts(self) -> dict[str, int]:
        counts = ", ".join(f"(SELECT COUNT(*) FROM {table})" for table in _TABLES)
        async with self._db.session() as session:
            row = present(await session.fetch_one(f"SELECT {counts}"))
        return {table: int(row[i]) for i, table in enumerate(_TABLES)}

    async def _load(self, tx: S, job_id: str) -> Job:
        """The job, its row held until the transaction ends."""
        row = await tx.fetch_one(self._load_job, (job_id,))
        if row is None:
            raise JobNotFound(job_id)
        return job_from_row(row)

    # -- what the steps produced ---------------------------------------------

    async def put_parse(self, parsed: ParsedDocument, path: ServedBy) -> bool:
        async with self._db.session() as session:
            try:
                row = await session.fetch_one(PUT_PARSE, parse_params(parsed, path))
            except self._db.dialect.missing_parent as exc:
                raise NotStored(f"no document {parsed.sha256} for this parse") from exc
        return row is not None

    async def get_parse(self, sha256: str) -> StoredParse | None:
        async with self._db.session() as session:
            row = await session.fetch_one("SELECT * FROM parses WHERE sha256 = ?", (sha256,))
        if row is None:
            return None
        parsed = ParsedDocument(
            markdown=str(row["markdown"]),
            pages=int(row["pages"]),
            job_id=str(row["parser_job_id"]),
            sha256=sha256,
            failed_pages=[int(page) for page in json.loads(row["failed_pages"])],
        )
        return StoredParse(parsed, served_by(row["path"]))

    async def put_chunks(self, sha256: str, chunks: Sequence[ChunkText]) -> int:
        if any(chunk.index < 0 for chunk in chunks):
            raise ValueError("chunk indexes count from 0")
        dialect = self._db.dialect
        async with self._db.transaction() as tx:
            try:
                return await dialect.put_chunks(tx, sha256, chunks, keep_existing=True)
            except dialect.missing_parent as exc:
                raise NotStored(f"no document {sha256} for these chunks") from exc

    async def chunks(self, sha256: str) -> list[StoredChunk]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT chunk_index, text FROM chunks WHERE sha256 = ? ORDER BY chunk_index",
                (sha256,),
            )
        return [StoredChunk(int(row[0]), str(row[1])) for row in rows]

    async def put_embeddings(
        self, sha256: str, model: str, dimensions: int, rows: Iterable[EmbeddingRow]
    ) -> int:
        vectors = _vectors(dimensions, rows)
        dialect = self._db.dialect
        async with self._db.transaction() as tx:
            try:
                return await dialect.put_vectors(tx, sha256, model, dimensions, vectors)
            except dialect.missing_parent as exc:
                raise NotStored(f"embeddings for chunks of {sha256} never stored") from exc

    async def replace_outputs(
        self,
        parsed: ParsedDocument,
        chunks: Sequence[ChunkText],
        model: str,
        dimensions: int,
        rows: Iterable[EmbeddingRow],
    ) -> None:
        sha256 = parsed.sha256
        vectors = _vectors(dimensions, rows)
        if any(path != "real" for _, _, path in vectors):
            raise ValueError("replace_outputs takes real results only")
        dialect = self._db.dialect
        async with self._db.transaction() as tx:
            if await tx.fetch_one("SELECT 1 FROM documents WHERE sha256 = ?", (sha256,)) is None:
                raise NotStored(f"no document {sha256} for this parse")
            await tx.execute("DELETE FROM embeddings WHERE sha256 = ?", (sha256,))
            await tx.execute("DELETE FROM chunks WHERE sha256 = ?", (sha256,))
            await tx.fetch_one(PUT_PARSE, parse_params(parsed, "real"))
            await dialect.put_chunks(tx, sha256, chunks, keep_existing=False)
            try:
                await dialect.put_vectors(tx, sha256, model, dimensions, vectors)
            except dialect.missing_parent as exc:
                raise NotStored(f"vectors for chunks of {sha256} not in the new set") from exc

    async def embeddings(self, sha256: str, model: str, dimensions: int) -> list[Embedding]:
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT chunk_index, vector, path FROM embeddings
                WHERE sha256 = ? AND model = ? AND dimensions = ? ORDER BY chunk_index""",
                (sha256, model, dimensions),
            )
        return [Embedding(int(row[0]), unpack_f32(row[1]), served_by(row[2])) for row in rows]


def _job_params(job: Job) -> Params:
    """The job's columns in `_WRITE_JOB`'s SET order."""
    return (
        job.state.value,
        job.version,
        job.step_attempts,
        float(job.not_before),
        None if job.wait_reason is None else job.wait_reason.value,
        None if job.resume_to is None else job.resume_to.value,
        job.degraded,
        job.last_error,
        job.failure_reason,
        job.lease_owner,
        job.lease_expires_at,
        job.updated_at,
    )


def _vectors(dimensions: int, rows: Iterable[EmbeddingRow]) -> list[Vector]:
    """Check and pack every row before any I/O, so a bad row writes nothing."""
    vectors: list[Vector] = []
    for chunk_index, vector, path in rows:
        if len(vector) != dimensions:
            raise ValueError(
                f"chunk {chunk_index}: {len(vector)} values for {dimensions} dimensions"
            )
        vectors.append((chunk_index, pack_f32(vector), served_by(path)))
    return vectors
