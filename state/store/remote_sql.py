"""`RemoteParseStore` in SQL, written once for SQLite and PostgreSQL (a part of `SqlJobStore`).

Each write that must agree with a job (recording an upload parks the job;
a finished row stores the parse and wakes the job) is one transaction.
Claims are one statement whose outer WHERE repeats the readiness test, so a
PostgreSQL claim that waited on a row another claim just took re-checks it
and skips it, as `lease` does.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, Final, Generic

from providers.llamaparse.client import ParsedDocument
from providers.llamaparse.settings import ApiVersion
from resilience.clock import iso_utc
from resilience.router import Path as ServedBy
from state.machine import Job, JobState
from state.store.database import Database, S
from state.store.protocol import StaleJob
from state.store.remote import RemoteJob, RemoteState, json_text
from state.store.rows import PUT_PARSE, Row, job_from_row, parse_params, present, write_audit
from state.store.rules import lease_problem

_LIVE: Final = "('intent', 'live')"

_BEGIN: Final = """
INSERT INTO remote_parses (name, sha256, job_id, correlation_id, status, remote_id,
    api_version, options, estimated_pages, estimated_usd, reservation, due_at, deadline, polls,
    claimed_by, error, created_at, updated_at)
VALUES (?, ?, ?, ?, 'intent', NULL, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?, ?)
ON CONFLICT DO NOTHING
RETURNING *"""

_CLAIM: Final = """
UPDATE remote_parses SET claimed_by = ?, due_at = ?
WHERE status = 'live' AND due_at <= ? AND name IN (
    SELECT name FROM remote_parses WHERE status = 'live' AND due_at <= ?
    ORDER BY due_at, name LIMIT ?
)
RETURNING *"""

# A parked job waits in `parsing`; one that moved on (failed by an operator) stays put.
_WAKE: Final = "UPDATE jobs SET not_before = ? WHERE id = ? AND state = 'parsing'"


class RemoteParseRows(Generic[S]):
    """The remote parse half of `SqlJobStore` (see `state.store.remote`)."""

    _db: Database[S]

    @abstractmethod
    async def _load(self, tx: S, job_id: str) -> Job:
        """The job, its row held until the transaction ends."""

    async def remote_parse_of(self, sha256: str) -> RemoteJob | None:
        async with self._db.session() as session:
            row = await session.fetch_one(
                f"""SELECT * FROM remote_parses
                WHERE sha256 = ? AND status IN {_LIVE}
                UNION ALL
                SELECT * FROM (SELECT * FROM remote_parses
                    WHERE sha256 = ? AND status = 'failed'
                    ORDER BY created_at DESC LIMIT 1) AS failed
                LIMIT 1""",
                (sha256, sha256),
            )
        return None if row is None else remote_from_row(row)

    async def remote_parses(self, job_id: str) -> list[RemoteJob]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT * FROM remote_parses WHERE job_id = ? ORDER BY created_at, name",
                (job_id,),
            )
        return [remote_from_row(row) for row in rows]

    async def begin_remote_parse(self, intent: RemoteJob, *, now: float) -> RemoteJob:
        params = (
            intent.name,
            intent.sha256,
            intent.job_id,
            intent.correlation_id,
            intent.api_version,
            json_text(intent.options),
            intent.estimated_pages,
            float(intent.estimated_usd),
            json_text(intent.reservation),
            float(intent.due_at),
            float(intent.deadline),
            float(now),
            iso_utc(now),
        )
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(_BEGIN, params)
            if row is None:  # the document's live row, or this name's, is the answer
                row = await tx.fetch_one(
                    f"""SELECT * FROM remote_parses
                    WHERE (sha256 = ? AND status IN {_LIVE}) OR name = ?
                    ORDER BY created_at DESC LIMIT 1""",
                    (intent.sha256, intent.name),
                )
        return remote_from_row(present(row))

    async def record_remote_parse(
        self, name: str, remote_id: str, *, owner: str, due_at: float, deadline: float, now: float
    ) -> Job:
        async with self._db.transaction() as tx:
            marked = await tx.fetch_one(
                """UPDATE remote_parses SET status = 'live', remote_id = ?, due_at = ?,
                    deadline = ?, updated_at = ?
                WHERE name = ? AND status = 'intent'
                RETURNING job_id, deadline""",
                (remote_id, float(due_at), float(deadline), iso_utc(now), name),
            )
            if marked is None:
                raise StaleJob(name, "this remote parse is no longer an intent")
            job = await self._load(tx, str(marked["job_id"]))
            problem = lease_problem(job, owner, now)
            if job.state is not JobState.PARSING:
                problem = f"expected parsing, found {job.state}"
            if problem is not None:
                raise StaleJob(job.id, problem)  # rolls the row back to `intent` too
            # Its step_attempts stay: `lease` does not count the pick-up that wakes it.
            row = await tx.fetch_one(
                """UPDATE jobs SET not_before = ?, lease_owner = NULL, lease_expires_at = NULL,
                    version = ?, updated_at = ?
                WHERE id = ? AND version = ? RETURNING *""",
                (
                    float(marked["deadline"]),
                    job.version + 1,
                    iso_utc(now),
                    job.id,
                    job.version,
                ),
            )
            parked = job_from_row(present(row))
            reason = f"submitted: remote parse {remote_id} ({name})"
            await write_audit(tx, parked, job.state, "submit", reason, job.correlation_id)
        return parked

    async def drop_remote_parse(self, name: str) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                "DELETE FROM remote_parses WHERE name = ? AND status = 'intent' RETURNING name",
                (name,),
            )
        return row is not None

    async def abandoned_intents(self, *, limit: int) -> list[RemoteJob]:
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT r.* FROM remote_parses r JOIN jobs j ON j.id = r.job_id
                WHERE r.status = 'intent' AND r.api_version = 'v2'
                    AND j.state IN ('complete', 'failed')
                ORDER BY r.created_at, r.name LIMIT ?""",
                (limit,),
            )
        return [remote_from_row(row) for row in rows]

    async def adopt_remote_parse(
        self, name: str, remote_id: str, *, due_at: float, deadline: float, now: float
    ) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE remote_parses SET status = 'live', remote_id = ?, due_at = ?,
                    deadline = ?, updated_at = ?
                WHERE name = ? AND status = 'intent' RETURNING name""",
                (remote_id, float(due_at), float(deadline), iso_utc(now), name),
            )
        return row is not None

    async def claim_remote_parses(
        self, owner: str, *, now: float, hold_s: float, limit: int
    ) -> list[RemoteJob]:
        if not owner or not hold_s > 0 or limit < 1:
            raise ValueError("a claim needs an owner, hold_s > 0 and limit >= 1")
        async with self._db.session() as session:
            rows = await session.fetch(
                _CLAIM, (owner, float(now + hold_s), float(now), float(now), limit)
            )
        return sorted(map(remote_from_row, rows), key=lambda r: (r.due_at, r.name))

    async def reschedule_remote_parse(
        self, name: str, *, owner: str, due_at: float, now: float
    ) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE remote_parses SET due_at = ?, polls = polls + 1, claimed_by = NULL,
                    updated_at = ?
                WHERE name = ? AND status = 'live' AND claimed_by = ? RETURNING name""",
                (float(due_at), iso_utc(now), name, owner),
            )
        return row is not None

    async def finish_remote_parse(
        self, name: str, parsed: ParsedDocument, path: ServedBy, *, owner: str, now: float
    ) -> bool:
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(
                """UPDATE remote_parses SET status = 'done', claimed_by = NULL, updated_at = ?
                WHERE name = ? AND status = 'live' AND claimed_by = ? RETURNING job_id""",
                (iso_utc(now), name, owner),
            )
            if row is None:
                return False
            await tx.fetch_one(PUT_PARSE, parse_params(parsed, path))
            await tx.execute(_WAKE, (float(now), str(row["job_id"])))
        return True

    async def fail_remote_parse(
        self, name: str, error: Mapping[str, Any], *, owner: str | None, now: float
    ) -> bool:
        sql = """UPDATE remote_parses SET status = 'failed', error = ?, claimed_by = NULL,
            updated_at = ?
        WHERE name = ? AND status = 'live'"""
        params: tuple[object, ...] = (json_text(error), iso_utc(now), name)
        if owner is not None:
            sql, params = sql + " AND claimed_by = ?", (*params, owner)
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(sql + " RETURNING job_id", params)
            if row is None:
                return False
            await tx.execute(_WAKE, (float(now), str(row["job_id"])))
        return True

    async def take_remote_failure(self, name: str, *, now: float) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE remote_parses SET status = ?, updated_at = ?
                WHERE name = ? AND status = 'failed' RETURNING name""",
                (RemoteState.REPORTED.value, iso_utc(now), name),
            )
        return row is not None

    async def mark_remote_parse_due(self, remote_id: str, *, now: float) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                """UPDATE remote_parses SET due_at = ?
                WHERE remote_id = ? AND status = 'live' AND due_at > ? AND claimed_by IS NULL
                RETURNING name""",
                (float(now), remote_id, float(now)),
            )
        return row is not None or await self.remote_parse_live(remote_id)

    async def remote_parse_live(self, remote_id: str) -> bool:
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT 1 FROM remote_parses WHERE remote_id = ? AND status = 'live'",
                (remote_id,),
            )
        return row is not None


def remote_from_row(row: Row) -> RemoteJob:
    """The `RemoteJob` a `SELECT * FROM remote_parses` row describes."""
    reservation, error = row["reservation"], row["error"]
    api_version: ApiVersion = "v1" if row["api_version"] == "v1" else "v2"
    return RemoteJob(
        name=str(row["name"]),
        sha256=str(row["sha256"]),
        job_id=str(row["job_id"]),
        correlation_id=str(row["correlation_id"]),
        status=RemoteState(row["status"]),
        remote_id=None if row["remote_id"] is None else str(row["remote_id"]),
        api_version=api_version,
        options=json.loads(row["options"]),
        estimated_pages=int(row["estimated_pages"]),
        estimated_usd=float(row["estimated_usd"]),
        reservation=None if reservation is None else json.loads(reservation),
        due_at=float(row["due_at"]),
        deadline=float(row["deadline"]),
        polls=int(row["polls"]),
        error=None if error is None else json.loads(error),
        created_at=float(row["created_at"]),
    )
