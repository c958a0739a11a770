"""Database rows to `Job` and `JobEvent`, for every store.

sqlite3's `Row` and asyncpg's `Record` both answer `row["column"]`, and the
schema's columns are the same in both dialects, so one mapping serves both.
"""

from __future__ import annotations

from typing import Any, Protocol

from state.machine import Job, JobState, WaitReason
from state.store.protocol import JobEvent


class Row(Protocol):
    """A result row: `row["column"]` or `row[position]`."""

    def __getitem__(self, key: str | int, /) -> Any: ...


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
