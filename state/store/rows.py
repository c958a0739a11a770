"""The rows every SQL store module shares: reading `Job` and `JobEvent`, writing audit
rows and parses.

sqlite3's `Row` and asyncpg's `Record` both answer `row["column"]`, and the
schema's columns are the same in both dialects, so one mapping serves both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Protocol

from providers.llamaparse.client import ParsedDocument
from resilience.router import Path as ServedBy
from state.machine import Job, JobState, WaitReason
from state.store.protocol import JobEvent, served_by


class Row(Protocol):
    """A result row: `row["column"]` or `row[position]`."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Executes(Protocol):
    """What `write_audit` needs of a `state.store.database.Session`."""

    async def execute(self, sql: str, params: Sequence[object] = ()) -> None: ...


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _real(value: float | None) -> float | None:
    return None if value is None else float(value)


def job_from_row(row: Row) -> Job:
    """The `Job` a `SELECT * FROM jobs` row describes."""
    return Job(
        id=str(row["id"]),
        sha256=str(row["sha256"]),
        filename=str(row["filename"]),
        mime_type=str(row["mime_type"]),
        state=JobState(row["state"]),
        version=int(row["version"]),
        step_attempts=int(row["step_attempts"]),
        not_before=float(row["not_before"]),
        wait_reason=None if row["wait_reason"] is None else WaitReason(row["wait_reason"]),
        resume_to=None if row["resume_to"] is None else JobState(row["resume_to"]),
        degraded=bool(row["degraded"]),
        last_error=_text(row["last_error"]),
        failure_reason=_text(row["failure_reason"]),
        lease_owner=_text(row["lease_owner"]),
        lease_expires_at=_real(row["lease_expires_at"]),
        created_at=str(row["created_at"]),
        updated_at=str(row["updated_at"]),
        correlation_id=str(row["correlation_id"]),
    )


def event_from_row(row: Row) -> JobEvent:
    """The `JobEvent` a `SELECT * FROM job_events` row describes."""
    return JobEvent(
        job_id=str(row["job_id"]),
        version=int(row["version"]),
        source=None if row["source"] is None else JobState(row["source"]),
        dest=JobState(row["dest"]),
        trigger=str(row["trigger"]),
        reason=str(row["reason"]),
        correlation_id=_text(row["correlation_id"]),
        at=str(row["at"]),
    )


_AUDIT: Final = """
INSERT INTO job_events (job_id, version, source, dest, trigger, reason, correlation_id, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""

# A mock result never replaces a real one. Once the document is chunked, its text is
# frozen: the chunks were cut from it, so a different text (a late real parse from a
# step whose lease lapsed, say) would leave them describing something else. Changing
# the text of a chunked document is `replace_outputs`' job.
PUT_PARSE: Final = """
INSERT INTO parses (sha256, markdown, pages, failed_pages, parser_job_id, path)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (sha256) DO UPDATE SET
    markdown = excluded.markdown, pages = excluded.pages, failed_pages = excluded.failed_pages,
    parser_job_id = excluded.parser_job_id, path = excluded.path
WHERE NOT (parses.path = 'real' AND excluded.path = 'mock')
    AND (parses.markdown = excluded.markdown
         OR NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.sha256 = parses.sha256))
RETURNING sha256"""


async def write_audit(
    tx: Executes,
    job: Job,
    source: JobState | None,
    trigger: str,
    reason: str,
    correlation_id: str | None,
) -> None:
    """The audit row of the move that left `job` as it is, from `source`."""
    await tx.execute(
        _AUDIT,
        (
            job.id,
            job.version,
            None if source is None else source.value,
            job.state.value,
            trigger,
            reason,
            correlation_id,
            job.updated_at,
        ),
    )


def parse_params(parsed: ParsedDocument, path: ServedBy) -> tuple[object, ...]:
    return (
        parsed.sha256,
        parsed.markdown,
        parsed.pages,
        json.dumps(parsed.failed_pages),
        parsed.job_id,
        served_by(path),
    )


def present(row: Row | None) -> Row:
    """A row the statement must have produced (an INSERT or a locked UPDATE ... RETURNING)."""
    if row is None:
        raise RuntimeError("a write inside a locked transaction returned no row")
    return row
