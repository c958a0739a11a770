"""Dead letters judged by the audit trail and by what the providers served, not by wording.

A healthy document (no permanent fault of its own) may end `failed` only
for one of two reasons, `dead letters`:

* LlamaParse itself failed a parse of it: one of its jobs for the document
  ended FAILED (its own record, `Emulator.llamaparse_jobs`);
* its step was tried `max_attempts` times and each try failed for a reason
  outside our code. The worker (`state.pipeline.worker`) counts a step's
  tries in `step_attempts`: a try that raised a transient error (recorded
  as a `wait` row whose reason is `retry`, or the final `fail` row), and a
  lease of the job in that step that never finished (its holder killed, or
  its lease lapsed under it). A try counts here only when, between the audit
  row before it and its own row, the emulator served a failure to that
  step's provider (an error status, an outage's 503, a hang or a client's
  timeout, a malformed answer) for this job, or in a request shared by many
  jobs (an embedding batch carries its first job's id only, a LlamaParse
  status list none: a poll that failed there can leave a finished parse
  unfetched until our deadline gives it up); or a LlamaParse
  job for it had existed for our whole timeout (`timeout_s`, on the wall
  clock the processes read, from its creation in LlamaParse's own record)
  when we gave up on it (one try each). Not our rows' deadlines: one counted
  from before the upload (the intent) would give up on an upload made late,
  or found after a crash, the moment it is recorded. A lease that
  never finished counts only when the journal of leases shows its holder
  died (`World.deaths`) or a wall clock jump fell inside it.

Audit rows carry wall times (to the millisecond); `World.epochs` maps them
back to the loop clock the journal uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from providers import LLAMAPARSE, OPENAI
from simulations.chaos.ground_truth import document_of, job_of
from simulations.chaos.leases import UNFENCED_METHOD
from simulations.chaos.oracle import LeaseEvent
from simulations.emulators.journal import UNTAGGED, Arrival
from simulations.emulators.llamaparse_v2 import ParseJob
from state.machine import JobState, WaitReason

AUDIT_SLACK_S: Final = 0.002
"""Audit times are rounded to the millisecond."""
PROVIDER_OF_STEP: Final = {JobState.PARSING: LLAMAPARSE, JobState.EMBEDDING: OPENAI}


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One `job_events` row, its wall time mapped to the loop clock."""

    source: str | None
    dest: str
    trigger: str
    reason: str
    at: float


def loop_time(epochs: Sequence[tuple[float, float]], iso: str) -> float:
    """The loop time of an audit row's wall time (`World.epochs`; jumps only go forward)."""
    wall = datetime.fromisoformat(iso).timestamp()
    for at, epoch in reversed(epochs):
        if wall - epoch >= at - AUDIT_SLACK_S:
            return wall - epoch
    return wall - epochs[0][1]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the world saw, for judging one run's dead letters."""

    arrivals: Sequence[Arrival]
    parse_jobs: Sequence[ParseJob]
    leases: Sequence[LeaseEvent]
    deaths: Mapping[int, float]
    jump_times: Sequence[float]
    timeout_s: float
    """Our deadline for a remote parse (LLAMA_CLOUD_JOB_TIMEOUT_S)."""
    wall_at: Callable[[float], float]
    """The wall time the processes read at a loop time (`World.wall_at`)."""


def dead_letter_problem(
    job_id: str,
    filename: str,
    correlation_id: str,
    rows: Sequence[AuditRow],
    max_attempts: int,
    evidence: Evidence,
) -> str | None:
    """Why healthy job `job_id`, ended failed with audit `rows`, should not have, or None."""
    remote = [
        job
        for job in evidence.parse_jobs
        if job_of(job.name) == job_id or document_of(job.name) == filename
    ]
    if any(job.outcome == "FAILED" and job.cancelled_at is None for job in remote):
        return None
    failed = rows[-1]
    step = _step_of(rows)
    if step is None:
        return f"job {job_id} failed ({failed.reason}) before any step"
    entered = max(
        (
            i
            for i, row in enumerate(rows)
            if row.dest == step and row.source not in (JobState.WAITING, step)
        ),
        default=0,
    )
    expired = list(remote)
    tries = 0
    for before, row in zip(rows[entered:], rows[entered + 1 :], strict=False):
        is_try = row.trigger == "fail" or (
            row.trigger == "wait" and row.reason.startswith(f"{WaitReason.RETRY}:")
        )
        if not is_try or step not in PROVIDER_OF_STEP:
            continue
        if _served_failure(evidence.arrivals, step, correlation_id, before.at, row.at):
            tries += 1
        elif step == JobState.PARSING:
            given_up = next((job for job in expired if _gave_up(job, row.at, evidence)), None)
            if given_up is not None:
                expired.remove(given_up)
                tries += 1
    lost = _lost_leases(job_id, rows[entered].at, failed.at, evidence)
    if tries + lost >= max_attempts:
        return None
    return (
        f"healthy job {job_id} failed in {step} ({failed.reason}) after {tries} tries the "
        f"providers failed and {lost} leases lost to a crash or a clock jump, "
        f"of the {max_attempts} it takes"
    )


def _step_of(rows: Sequence[AuditRow]) -> JobState | None:
    """The step the job was in when it failed (through a wait, the one it waited in)."""
    for row in reversed(rows):
        if row.source is not None and row.source != JobState.WAITING:
            return JobState(row.source)
    return None


def _gave_up(job: ParseJob, at: float, evidence: Evidence) -> bool:
    """Had LlamaParse made `job` at least `timeout_s` before loop time `at`, on the wall
    clock the processes read (a jump forward may end a timeout early in loop time)?"""
    since = evidence.wall_at(at) - evidence.wall_at(job.created_at)
    return since >= evidence.timeout_s - AUDIT_SLACK_S


def _served_failure(
    arrivals: Sequence[Arrival], step: JobState, correlation_id: str, start: float, end: float
) -> bool:
    provider = PROVIDER_OF_STEP[step]
    return any(
        arrival.provider == provider
        and arrival.client != UNTAGGED
        and arrival.failed
        and (arrival.correlation_id == correlation_id or _shared(arrival))
        and arrival.ended_at is not None
        and start - AUDIT_SLACK_S <= arrival.ended_at <= end + AUDIT_SLACK_S
        for arrival in arrivals
    )


def _shared(arrival: Arrival) -> bool:
    """A request that may serve many jobs and names one or none: an embedding batch, or
    a LlamaParse read (the poller asks for many jobs' states in one list)."""
    return arrival.provider == OPENAI or arrival.route.startswith(UNFENCED_METHOD)


def _lost_leases(job_id: str, start: float, end: float, evidence: Evidence) -> int:
    """Grants of the job between `start` and `end` whose holder died holding it, or under
    which the wall clock jumped."""
    events = [e for e in evidence.leases if e.job_id == job_id]
    lost = 0
    for i, event in enumerate(events):
        if event.owner is None or event.renewal or not start - AUDIT_SLACK_S <= event.at <= end:
            continue
        ended = next((e.at for e in events[i + 1 :] if not e.renewal), end)
        died = evidence.deaths.get(int(event.owner[1:]))
        if (died is not None and event.at <= died <= ended) or any(
            event.at <= jump <= ended for jump in evidence.jump_times
        ):
            lost += 1
    return lost


__all__ = ["AuditRow", "Evidence", "dead_letter_problem", "loop_time"]
