"""What a transition does to a job besides its state, apart from any SQL.

The store (`state.store.sql`) loads the row, checks the compare-and-set and
`lease_problem`, then writes what `apply` returns; these rules can then be
tested, and read, without a database. The rules are tabled in
`state.store.protocol`'s docstring.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from resilience.clock import iso_utc
from state.machine import FORWARD, TERMINAL, Job, Trigger, WaitReason, next_state
from state.store.protocol import JobChanges

_ONLY_FOR: Final = {
    "not_before": Trigger.WAIT,
    "wait_reason": Trigger.WAIT,
    "failure_reason": Trigger.FAIL,
}
_REQUIRED: Final = {
    Trigger.WAIT: ("not_before", "wait_reason"),
    Trigger.FAIL: ("failure_reason",),
}


def job_id_for(sha256: str) -> str:
    """The id of the job for content with this sha256 (see `state.store.protocol`)."""
    return "job-" + sha256[:32]


def lease_problem(job: Job, owner: str | None, now: float) -> str | None:
    """Why `owner` may not change `job` at `now`, or None if it may.

    A worker needs a live lease of its own; `owner=None` (an operator) needs
    nobody to hold a live one.
    """
    live = job.lease_expires_at is not None and now < job.lease_expires_at
    if owner is None:
        if job.lease_owner is not None and live:
            return f"leased by {job.lease_owner} until {iso_utc(job.lease_expires_at or 0.0)}"
        return None
    if job.lease_owner != owner:
        holder = job.lease_owner or "nobody"
        return f"{owner} does not hold the lease ({holder} does)"
    if not live:
        return f"{owner}'s lease lapsed at {iso_utc(job.lease_expires_at or 0.0)}"
    return None


def check_changes(trigger: Trigger, changes: JobChanges) -> None:
    """Raise `ValueError` unless `changes` suit `trigger`. Called before any I/O."""
    unknown = set(changes) - JobChanges.__optional_keys__
    if unknown:
        raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")
    for field, only in _ONLY_FOR.items():
        if field in changes and trigger is not only:
            raise ValueError(f"{field} is set only by {only}, not {trigger}")
    missing = [field for field in _REQUIRED.get(trigger, ()) if field not in changes]
    if missing:
        raise ValueError(f"{trigger} needs {', '.join(missing)}")
    if "wait_reason" in changes:
        WaitReason(changes["wait_reason"])  # raises ValueError for a stray string
    if "failure_reason" in changes and not changes["failure_reason"].strip():
        raise ValueError("failure_reason must say why")
    if changes.get("step_attempts", 0) < 0:
        raise ValueError("step_attempts must be >= 0")


def apply(job: Job, trigger: Trigger, changes: JobChanges, now: float) -> Job:
    """The job after `trigger` at `now` (epoch seconds), or raise `IllegalTransition`.

    `changes` must have passed `check_changes`.
    """
    dest = next_state(job.state, trigger, job.resume_to)
    forward = trigger in FORWARD
    waits = trigger is Trigger.WAIT
    keeps_lease = not waits and dest not in TERMINAL
    return replace(
        job,
        state=dest,
        version=job.version + 1,
        step_attempts=changes.get("step_attempts", 0 if forward else job.step_attempts),
        not_before=changes.get("not_before", job.not_before),
        wait_reason=WaitReason(changes["wait_reason"]) if waits else None,
        resume_to=job.state if waits else None,
        degraded=job.degraded or changes.get("degraded", False),
        last_error=changes.get("last_error", None if forward else job.last_error),
        failure_reason=changes.get("failure_reason", job.failure_reason),
        lease_owner=job.lease_owner if keeps_lease else None,
        lease_expires_at=job.lease_expires_at if keeps_lease else None,
        updated_at=iso_utc(now),
    )
