"""`JobStore` on PostgreSQL, for several workers and servers on one database.

`PostgresJobStore.open(url)` connects a pool and upgrades the schema
(`state.store.postgres_db`). The semantics are `state.store.protocol`'s, the same as
`SqliteJobStore`'s, and the transition rules are `state.store.rules`'s, shared
with it; what differs is how atomicity is had without SQLite's one write
lock:

* A compare-and-set (`transition`, `renew_lease`, `clear_degraded`) reads
  the job with `SELECT ... FOR UPDATE`: a concurrent one waits for the row,
  then reads what the winner committed and raises `StaleJob`. The job and
  its audit row commit together.
* `lease` is one statement: a CTE picks ready jobs `FOR UPDATE SKIP LOCKED`,
  so workers polling together take different jobs instead of queueing on
  the same rows, and the UPDATE around it stamps the lease.
* `create_job` inserts with `ON CONFLICT DO NOTHING`: of two uploads of the
  same bytes at once, the second waits on the unique key, inserts nothing
  and returns the first's job.
* Batches (chunks, vectors) are one statement over `unnest` arrays, not a
  round trip a row. One statement may not upsert the same key twice, so a
  batch that repeats a key runs as several statements, each key's n-th row
  in the n-th: the outcome is what SQLite's row-by-row `executemany` gives.

The budget ledger lives in the same database (`PostgresJobStore.ledger`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Final, Self, Unpack

from providers.llamaparse.client import ParsedDocument
from resilience.clock import Clock, iso_utc, wall_time
from resilience.router import Path as ServedBy
from state.machine import Job, JobState, Trigger
from state.store.postgres_db import Connection, ForeignKeyViolation, PostgresDatabase
from state.store.postgres_ledger import PostgresLedger
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
from state.store.rows import Row, event_from_row, job_from_row
from state.store.rules import apply, check_changes, job_id_for, lease_problem
from state.store.vectors import pack_f32, unpack_f32

_LEASE: Final = """
WITH ready AS (
    SELECT id FROM jobs
    WHERE state NOT IN ('complete', 'failed') AND not_before <= $3
        AND (lease_owner IS NULL OR lease_expires_at <= $3)
    ORDER BY not_before, created_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs
SET lease_owner = $1, lease_expires_at = $2,
    step_attempts = step_attempts + CASE WHEN state = 'waiting' THEN 0 ELSE 1 END
FROM ready
WHERE jobs.id = ready.id
RETURNING jobs.*"""

_CREATE_JOB: Final = """
INSERT INTO jobs (id, sha256, filename, mime_type, state, version,
    step_attempts, not_before, degraded, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 1, 0, $6, FALSE, $7, $7)
ON CONFLICT DO NOTHING
RETURNING *"""

_WRITE_JOB: Final = """
UPDATE jobs
SET state = $1, version = $2, step_attempts = $3, not_before = $4, wait_reason = $5,
    resume_to = $6, degraded = $7, last_error = $8, failure_reason = $9, lease_owner = $10,
    lease_expires_at = $11, updated_at = $12
WHERE id = $13 AND version = $14
RETURNING *"""

_AUDIT: Final = """
INSERT INTO job_events (job_id, version, source, dest, trigger, reason, correlation_id, at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""

# As in SQLite: a mock never replaces a real result, and a chunked document's text is frozen.
_PUT_PARSE: Final = """
INSERT INTO parses (sha256, markdown, pages, failed_pages, parser_job_id, path)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (sha256) DO UPDATE SET
    markdown = excluded.markdown, pages = excluded.pages, failed_pages = excluded.failed_pages,
    parser_job_id = excluded.parser_job_id, path = excluded.path
WHERE NOT (parses.path = 'real' AND excluded.path = 'mock')
    AND (parses.markdown = excluded.markdown
         OR NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.sha256 = parses.sha256))
RETURNING sha256"""

_PUT_CHUNKS: Final = """
INSERT INTO chunks (sha256, chunk_index, text)
SELECT $1, chunk_index, text FROM unnest($2::integer[], $3::text[]) AS new (chunk_index, text)
ON CONFLICT DO NOTHING
RETURNING chunk_index"""

_PUT_EMBEDDINGS: Final = """
INSERT INTO embeddings (sha256, chunk_index, model, dimensions, vector, path)
SELECT $1, chunk_index, $2, $3, vector, path
FROM unnest($4::integer[], $5::bytea[], $6::text[]) AS new (chunk_index, vector, path)
ON CONFLICT (sha256, chunk_index, model, dimensions) DO UPDATE SET
    vector = excluded.vector, path = excluded.path
WHERE NOT (embeddings.path = 'real' AND excluded.path = 'mock')
RETURNING chunk_index"""

_TABLES: Final = ("documents", "jobs", "job_events", "parses", "chunks", "embeddings")

_Vector = tuple[int, bytes, ServedBy]
"""An embedding row ready for `_PUT_EMBEDDINGS`: chunk index, float32 bytes, path."""


class PostgresJobStore:
    """The `JobStore` protocol on PostgreSQL. Open with `await PostgresJobStore.open(url)`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    @classmethod
    async def open(cls, url: str, *, max_connections: int = 10) -> Self:
        """Connect to `url` (postgresql://user:password@host:port/database) and upgrade it."""
        return cls(await PostgresDatabase.open(url, max_size=max_connections))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def ledger(self, *, clock: Clock = wall_time) -> PostgresLedger:
        """A budget `LedgerStore` in this database; `clock` only dates keys for expiry."""
        return PostgresLedger(self._db, clock=clock)

    async def schema_version(self) -> int:
        return await self._db.schema_version()

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
        stamp = iso_utc(now)
        async with self._db.transaction() as tx:
            existing = await tx.fetch_one("SELECT * FROM jobs WHERE sha256 = $1", sha256)
            if existing is not None:
                return Upload(job_from_row(existing), created=False)
            await tx.execute(
                "INSERT INTO documents (sha256, content) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                sha256,
                content,
            )
            row = await tx.fetch_one(
                _CREATE_JOB,
                job_id_for(sha256),
                sha256,
                filename,
                mime_type,
                JobState.UPLOADED.value,
                float(now),
                stamp,
            )
            if row is None:  # an upload of the same bytes committed while we waited
                return Upload(await _load(tx, job_id_for(sha256)), created=False)
            job = job_from_row(row)
            await tx.execute(
                _AUDIT,
                job.id,
                job.version,
                None,
                job.state.value,
                "create",
                f"uploaded {filename}",
                correlation_id,
                stamp,
            )
        return Upload(job, created=True)

    async def get_job(self, job_id: str) -> Job | None:
        async with self._db.session() as session:
            row = await session.fetch_one("SELECT * FROM jobs WHERE id = $1", job_id)
        return None if row is None else job_from_row(row)

    async def document(self, sha256: str) -> bytes | None:
        async with self._db.session() as session:
            row = await session.fetch_one("SELECT content FROM documents WHERE sha256 = $1", sha256)
        return None if row is None else bytes(row[0])

    async def history(self, job_id: str) -> list[JobEvent]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT * FROM job_events WHERE job_id = $1 ORDER BY seq", job_id
            )
        return [event_from_row(row) for row in rows]

    async def lease(self, owner: str, *, now: float, lease_s: float, limit: int = 1) -> list[Job]:
        if not owner:
            raise ValueError("a lease needs an owner")
        if not lease_s > 0 or limit < 1:
            raise ValueError(f"lease_s must be > 0 and limit >= 1, got {lease_s!r}, {limit!r}")
        # One statement, so atomic without an explicit transaction.
        async with self._db.session() as session:
            rows = await session.fetch(_LEASE, owner, float(now + lease_s), float(now), limit)
        return sorted(
            map(job_from_row, rows), key=lambda job: (job.not_before, job.created_at, job.id)
        )

    async def renew_lease(self, job_id: str, owner: str, *, now: float, lease_s: float) -> Job:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        async with self._db.transaction() as tx:
            job = await _load(tx, job_id)
            problem = lease_problem(job, owner, now)
            if problem is not None:
                raise StaleJob(job_id, problem)
            row = await tx.fetch_one(
                "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 RETURNING *",
                float(now + lease_s),
                job_id,
            )
        return job_from_row(_present(row))

    async def release_lease(self, job_id: str, owner: str) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
                WHERE id = $1 AND lease_owner = $2 RETURNING id""",
                job_id,
                owner,
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
            job = await _load(tx, job_id)
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
            row = await tx.fetch_one(
                _WRITE_JOB,
                new.state.value,
                new.version,
                new.step_attempts,
                float(new.not_before),
                None if new.wait_reason is None else new.wait_reason.value,
                None if new.resume_to is None else new.resume_to.value,
                new.degraded,
                new.last_error,
                new.failure_reason,
                new.lease_owner,
                new.lease_expires_at,
                new.updated_at,
                job_id,
                job.version,
            )
            await tx.execute(
                _AUDIT,
                job_id,
                new.version,
                job.state.value,
                new.state.value,
                trigger.value,
                reason,
                correlation_id,
                new.updated_at,
            )
        return job_from_row(_present(row))

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
            job = await _load(tx, job_id)
            if job.state != JobState.COMPLETE or not job.degraded:
                raise StaleJob(
                    job_id, f"only a degraded complete job can be cleared, found {job.state}"
                )
            row = await tx.fetch_one(
                """UPDATE jobs SET degraded = FALSE, version = $1, updated_at = $2
                WHERE id = $3 AND version = $4 RETURNING *""",
                job.version + 1,
                stamp,
                job_id,
                job.version,
            )
            await tx.execute(
                _AUDIT,
                job_id,
                job.version + 1,
                job.state.value,
                job.state.value,
                "clear_degraded",
                reason,
                correlation_id,
                stamp,
            )
        return job_from_row(_present(row))

    async def row_counts(self) -> dict[str, int]:
        counts = ", ".join(f"(SELECT COUNT(*) FROM {table})" for table in _TABLES)
        async with self._db.session() as session:
            row = _present(await session.fetch_one(f"SELECT {counts}"))
        return {table: int(row[i]) for i, table in enumerate(_TABLES)}

    # -- what the steps produced ---------------------------------------------

    async def put_parse(self, parsed: ParsedDocument, path: ServedBy) -> bool:
        async with self._db.session() as session:
            try:
                row = await session.fetch_one(_PUT_PARSE, *_parse_params(parsed, path))
            except ForeignKeyViolation as exc:
                raise NotStored(f"no document {parsed.sha256} for this parse") from exc
        return row is not None

    async def get_parse(self, sha256: str) -> StoredParse | None:
        async with self._db.session() as session:
            row = await session.fetch_one("SELECT * FROM parses WHERE sha256 = $1", sha256)
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
        # DO NOTHING skips a key the same statement inserted, so first wins
        # within a batch too: no need to split it.
        async with self._db.session() as session:
            try:
                rows = await session.fetch(
                    _PUT_CHUNKS,
                    sha256,
                    [chunk.index for chunk in chunks],
                    [chunk.text for chunk in chunks],
                )
            except ForeignKeyViolation as exc:
                raise NotStored(f"no document {sha256} for these chunks") from exc
        return len(rows)

    async def chunks(self, sha256: str) -> list[StoredChunk]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT chunk_index, text FROM chunks WHERE sha256 = $1 ORDER BY chunk_index",
                sha256,
            )
        return [StoredChunk(int(row[0]), str(row[1])) for row in rows]

    async def put_embeddings(
        self, sha256: str, model: str, dimensions: int, rows: Iterable[EmbeddingRow]
    ) -> int:
        vectors = _vectors(dimensions, rows)
        async with self._db.transaction() as tx:
            try:
                return await _put_vectors(tx, sha256, model, dimensions, vectors)
            except ForeignKeyViolation as exc:
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
        async with self._db.transaction() as tx:
            if await tx.fetch_one("SELECT 1 FROM documents WHERE sha256 = $1", sha256) is None:
                raise NotStored(f"no document {sha256} for this parse")
            await tx.execute("DELETE FROM embeddings WHERE sha256 = $1", sha256)
            await tx.execute("DELETE FROM chunks WHERE sha256 = $1", sha256)
            await tx.fetch_one(_PUT_PARSE, *_parse_params(parsed, "real"))
            await tx.execute(
                """INSERT INTO chunks (sha256, chunk_index, text)
                SELECT $1, chunk_index, text
                FROM unnest($2::integer[], $3::text[]) AS new (chunk_index, text)""",
                sha256,
                [chunk.index for chunk in chunks],
                [chunk.text for chunk in chunks],
            )
            try:
                await _put_vectors(tx, sha256, model, dimensions, vectors)
            except ForeignKeyViolation as exc:
                raise NotStored(f"vectors for chunks of {sha256} not in the new set") from exc

    async def embeddings(self, sha256: str, model: str, dimensions: int) -> list[Embedding]:
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT chunk_index, vector, path FROM embeddings
                WHERE sha256 = $1 AND model = $2 AND dimensions = $3 ORDER BY chunk_index""",
                sha256,
                model,
                dimensions,
            )
        return [Embedding(int(row[0]), unpack_f32(row[1]), served_by(row[2])) for row in rows]


def _parse_params(parsed: ParsedDocument, path: ServedBy) -> tuple[object, ...]:
    return (
        parsed.sha256,
        parsed.markdown,
        parsed.pages,
        json.dumps(parsed.failed_pages),
        parsed.job_id,
        served_by(path),
    )


def _vectors(dimensions: int, rows: Iterable[EmbeddingRow]) -> list[_Vector]:
    """Check and pack every row before any I/O, so a bad row writes nothing."""
    vectors: list[_Vector] = []
    for chunk_index, vector, path in rows:
        if len(vector) != dimensions:
            raise ValueError(
                f"chunk {chunk_index}: {len(vector)} values for {dimensions} dimensions"
            )
        vectors.append((chunk_index, pack_f32(vector), served_by(path)))
    return vectors


async def _put_vectors(
    tx: Connection, sha256: str, model: str, dimensions: int, vectors: list[_Vector]
) -> int:
    """Upsert `vectors` in order; how many rows were inserted or replaced."""
    written = 0
    for batch in _rounds(vectors):
        rows = await tx.fetch(
            _PUT_EMBEDDINGS,
            sha256,
            model,
            dimensions,
            [index for index, _, _ in batch],
            [blob for _, blob, _ in batch],
            [path for _, _, path in batch],
        )
        written += len(rows)
    return written


def _rounds(vectors: list[_Vector]) -> list[list[_Vector]]:
    """Split so no batch repeats a chunk index: the n-th row of each index goes in batch n."""
    rounds: list[list[_Vector]] = []
    seen: dict[int, int] = {}
    for vector in vectors:
        n = seen.get(vector[0], 0)
        seen[vector[0]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(vector)
    return rounds


async def _load(tx: Connection, job_id: str) -> Job:
    """The job, its row locked until the transaction ends."""
    row = await tx.fetch_one("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    if row is None:
        raise JobNotFound(job_id)
    return job_from_row(row)


def _present(row: Row | None) -> Row:
    """A row the statement must have produced (a locked UPDATE ... RETURNING)."""
    if row is None:
        raise RuntimeError("a write inside a locked transaction returned no row")
    return row
