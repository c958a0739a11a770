"""Our uploads and our LlamaParse spend, judged by LlamaParse's own record of its jobs.

The emulator keeps every job it made (`Emulator.llamaparse_jobs`): its name
(ours: `<job id>-v<version>--<file name>`, or the bare file name for a parse
that waits), when it was made, how and when it ends, and the credits it
bills. That is what happened, whatever answers were garbled or lost and
whatever our store made of them; the store is read only for what we decided
ourselves (our deadline for a job, the estimate we reserved).

* `early_uploads`: a document uploaded again while an earlier upload of it
  was still running or had COMPLETED. Only a FAILED or CANCELLED job, or one
  we gave up on (expired: past our deadline for it), may be followed by
  another.
* `expected_usd`: what the budget ledger must hold for LlamaParse. Each job
  costs what it bills (its credits at our price; nothing once FAILED or
  CANCELLED), except one we gave up on, which stays charged at our estimate
  (LlamaParse may bill it or not: the outcome is unknown to us). A remote
  parse still in flight (an intent, or a live row) holds its estimate. So
  does an intent whose upload never happened: the reservation it carries is
  the killed process's, accounted for until a restart resolves it.

One known gap is let through, for jobs `lapsed`: a job whose lease lapsed
under a worker still running it (the wall clock jumped past the lease) can
have its intent uploaded by both workers. The loser's record of it is
refused, so that second job runs, bills and is never fetched nor charged:
no lease fences an upload.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Final

from simulations.emulators.llamaparse_v2 import ParseJob
from state.store.remote import RemoteJob, RemoteState

ENDED: Final = frozenset({"FAILED", "CANCELLED"})
"""A job in these states bills nothing, and may be followed by another upload."""
_OPEN: Final = frozenset({RemoteState.INTENT, RemoteState.LIVE})
_FAILED: Final = frozenset({RemoteState.FAILED, RemoteState.REPORTED})


def row_name(upload_name: str) -> str | None:
    """The remote parse row an upload was made for: the `<key>` of `<key>--<file name>`
    (`providers.llamaparse.client.upload_name`); None for a bare file name."""
    key, separator, _ = upload_name.partition("--")
    return key if separator else None


def job_of(upload_name: str) -> str | None:
    """The job an upload was made for (`state.store.remote.upload_key`: `<id>-v<version>`)."""
    key = row_name(upload_name)
    return None if key is None else key.rpartition("-v")[0]


def document_of(upload_name: str) -> str:
    """The document an upload carries: its file name, after our `<key>--` if any."""
    key, separator, document = upload_name.partition("--")
    return document if separator else key


def gave_up(row: RemoteJob) -> bool:
    """Did we give up on this remote parse (failed it as expired, the outcome unknown)?"""
    return row.status in _FAILED and (row.error or {}).get("code") == "job_timeout"


def early_uploads(
    jobs: Sequence[ParseJob],
    rows: Sequence[RemoteJob],
    *,
    wall_at: Callable[[float], float],
    timeout_s: float,
    lapsed: Collection[str] = (),
) -> list[str]:
    """Uploads made while an earlier job for the same document was live or COMPLETED.

    Our deadline for a recorded upload is its row's (wall time); an upload
    no row names (a waiting parse's, or one we lost track of) gets
    `timeout_s` from its creation.
    """
    deadlines: dict[str | None, float] = {row.name: row.deadline for row in rows}
    uploads: defaultdict[str, list[ParseJob]] = defaultdict(list)
    problems = []
    for later in jobs:
        at = later.created_at
        earlier_ones = uploads[document_of(later.name)]
        for earlier in earlier_ones:
            status = earlier.status(at)
            deadline = deadlines.get(row_name(earlier.name))
            if deadline is None:
                expired = at >= earlier.created_at + timeout_s
            else:
                expired = wall_at(at) >= deadline
            twice = earlier.name == later.name and job_of(later.name) in lapsed
            if status not in ENDED and not expired and not twice:
                problems.append(
                    f"{later.name} uploaded at {at:g} s while {earlier.name} "
                    f"(made at {earlier.created_at:g} s) was {status}"
                )
        earlier_ones.append(later)
    return problems


def expected_usd(
    jobs: Sequence[ParseJob],
    rows: Sequence[RemoteJob],
    *,
    usd_per_credit: float,
    lapsed: Collection[str] = (),
) -> float:
    """What LlamaParse's budget ledger must hold for `jobs` and our `rows` (module doc)."""
    made = {job.id: job for job in jobs}
    recorded = {row.remote_id for row in rows}
    named = {row.name for row in rows}
    intended = {row.name for row in rows if row.status is RemoteState.INTENT}
    total = 0.0
    for row in rows:
        if row.status in _OPEN or gave_up(row):
            total += float((row.reservation or {}).get("cost", 0.0))
        elif row.status is RemoteState.DONE and row.remote_id is not None:
            total += _billed(made[row.remote_id], usd_per_credit)
    for job in jobs:
        if job.id in recorded or row_name(job.name) in intended:
            continue
        second = job_of(job.name) in lapsed and row_name(job.name) in named
        if not second:  # the known gap (module doc) never reaches the ledger
            total += _billed(job, usd_per_credit)  # a job we lost track of is billed anyway
    return total


def _billed(job: ParseJob, usd_per_credit: float) -> float:
    """What `job` bills once it ends: its credits, unless it FAILED or was CANCELLED."""
    if job.cancelled_at is not None or job.outcome == "FAILED":
        return 0.0
    return job.credits * usd_per_credit


__all__ = [
    "ENDED",
    "document_of",
    "early_uploads",
    "expected_usd",
    "gave_up",
    "job_of",
    "row_name",
]
