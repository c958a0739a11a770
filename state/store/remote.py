"""Remote parse jobs as the store keeps them: recorded before the upload, resumed after any crash.

A LlamaParse job takes 30-300 s and is paid for once uploaded, so it must
outlive the process that started it. Its life, one row per upload attempt
(`RemoteJob`), keyed by the name the document is uploaded under:

| status     | meaning                                         | next                        |
|------------|-------------------------------------------------|-----------------------------|
| `intent`   | about to upload; the budget reservation is kept | `live` (`record`, or        |
|            | here, so a restart can settle or release it     | `adopt` once its job ended),|
|            |                                                 | or gone (`drop`: nothing    |
|            |                                                 | was uploaded)               |
| `live`     | uploaded under `remote_id`; its job is parked   | `done`, `failed`            |
| `done`     | the result is stored in `parses` (fetched once) |                             |
| `failed`   | FAILED, CANCELLED or past its deadline          | `reported`                  |
| `reported` | the job's step has taken the failure            |                             |

Never pay twice: a unique index lets a document have at most one row
`intent` or `live` at a time, whatever process asks, and an `intent` found
after a crash is looked up by its name in LlamaParse's job list before any
new upload (`state.pipeline.remote`). The name carries the job's id and
version (`upload_key`), so it is the same on every retry of that version and
new once the job moved on (after a failure).

Who polls: each worker process's poller claims due `live` rows
(`claim_remote_parses`), as a worker leases jobs, so two processes never
poll or fetch the same row at once; a webhook its inbox heard makes a row
due at once (`mark_remote_parse_due`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from providers.llamaparse.client import ParsedDocument, RemoteParse
from providers.llamaparse.settings import ApiVersion
from resilience import ProviderError
from resilience.router import Path as ServedBy
from state.machine import Job


class RemoteState(StrEnum):
    """A remote parse row's status; the table in the module docstring says what each means."""

    INTENT = "intent"
    LIVE = "live"
    DONE = "done"
    FAILED = "failed"
    REPORTED = "reported"


def upload_key(job: Job) -> str:
    """What a job's upload is named after: its id and version, the same on every retry
    of this version, and new once a failure moved the job on."""
    return f"{job.id}-v{job.version}"


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """One remote parse row. Times are epoch seconds (`resilience.clock.wall_time`)."""

    name: str
    """The file name the document is uploaded under: the key LlamaParse's job list shows."""
    sha256: str
    job_id: str
    correlation_id: str
    """The job's: the poller's requests for this row carry it."""
    status: RemoteState
    remote_id: str | None
    api_version: ApiVersion
    options: Mapping[str, Any]
    estimated_pages: int
    estimated_usd: float
    reservation: Mapping[str, Any] | None
    """The budget reservation's record (`resilience.budget.Reservation.record`), if any."""
    due_at: float
    deadline: float
    """After this the remote job counts as expired: `job_timeout_s` after its upload was
    recorded or adopted (an intent's is provisional, from the intent: no upload is older)."""
    polls: int
    error: Mapping[str, Any] | None
    """For `failed`: the error's status, code and message."""
    created_at: float

    def handle(self) -> RemoteParse:
        """The client's handle for this job; only for a row with a `remote_id`."""
        if self.remote_id is None:
            raise ValueError(f"remote parse {self.name} has not been uploaded")
        return RemoteParse(
            job_id=self.remote_id,
            api_version=self.api_version,
            name=self.name,
            sha256=self.sha256,
            options=self.options,
            estimated_pages=self.estimated_pages,
            estimated_cost_usd=self.estimated_usd,
        )

    def failure(self) -> ProviderError:
        """The recorded failure as the error the client raised."""
        error = self.error or {}
        status = error.get("status")
        return ProviderError(
            str(error.get("message") or f"llamaparse: remote parse {self.name} failed"),
            status=status if isinstance(status, int) else None,
            code=str(error.get("code") or "remote_failed"),
        )


def error_record(exc: ProviderError) -> dict[str, Any]:
    """What `RemoteJob.failure` rebuilds the error from."""
    return {"status": exc.status, "code": exc.code, "message": exc.message}


class RemoteParseStore(Protocol):
    """The remote parse rows. Every method is atomic; `now` is epoch seconds, passed in."""

    async def remote_parse_of(self, sha256: str) -> RemoteJob | None:
        """The document's `intent` or `live` row, else its newest unreported failure."""
        ...

    async def remote_parses(self, job_id: str) -> list[RemoteJob]:
        """Every row a job's uploads left, oldest first (for tests and operators)."""
        ...

    async def begin_remote_parse(self, intent: RemoteJob, *, now: float) -> RemoteJob:
        """Record `intent` (status `intent`) before its upload, and return it.

        When the document already has an `intent` or `live` row (or this name
        is taken), nothing is written and that row is returned instead.
        """
        ...

    async def record_remote_parse(
        self, name: str, remote_id: str, *, owner: str, due_at: float, deadline: float, now: float
    ) -> Job:
        """The upload was accepted as `remote_id`: mark the row `live` (polled from `due_at`,
        expired after `deadline`) and let its job go, in one transaction.

        The job stays in `parsing` with its lease released, its step attempts
        as they were (`lease` does not count the pick-up that wakes a job parked
        on a `live` or `failed` row: that lease is expected, not a sign of a
        worker dying in the step) and `not_before` at the row's deadline (after which any worker
        looks again); its version rises and an audit row (trigger "submit")
        says which remote job it waits on. Raises `StaleJob` unless `owner`
        holds the job's lease in `parsing` and the row is still an `intent`.
        """
        ...

    async def drop_remote_parse(self, name: str) -> bool:
        """Forget an `intent` whose upload was answered with an error (nothing is remote)."""
        ...

    async def abandoned_intents(self, *, limit: int) -> list[RemoteJob]:
        """v2 `intent` rows whose job ended (dead-lettered, or served by a mock) before it
        learnt whether its upload landed: no step will look for them again."""
        ...

    async def adopt_remote_parse(
        self, name: str, remote_id: str, *, due_at: float, deadline: float, now: float
    ) -> bool:
        """Mark an `intent` `live` under `remote_id`, expired after `deadline`, without
        touching its job (which has
        ended): the poller then finishes it and settles its reservation. False if it is
        no longer an intent."""
        ...

    async def claim_remote_parses(
        self, owner: str, *, now: float, hold_s: float, limit: int
    ) -> list[RemoteJob]:
        """Take up to `limit` `live` rows due by `now` for `owner`, not due again for
        `hold_s`: the poller's lease on them, earliest due first."""
        ...

    async def reschedule_remote_parse(
        self, name: str, *, owner: str, due_at: float, now: float
    ) -> bool:
        """Still running: look again at `due_at`. False if `owner`'s claim was lost."""
        ...

    async def finish_remote_parse(
        self, name: str, parsed: ParsedDocument, path: ServedBy, *, owner: str, now: float
    ) -> bool:
        """Store the result and mark the row `done`, and make its job due at once, in one
        transaction. False (nothing written) if `owner`'s claim was lost."""
        ...

    async def fail_remote_parse(
        self, name: str, error: Mapping[str, Any], *, owner: str | None, now: float
    ) -> bool:
        """Mark a `live` row `failed` with `error` and make its job due at once. `owner`
        None fails it whoever claimed it (its job's own worker, after the deadline)."""
        ...

    async def take_remote_failure(self, name: str, *, now: float) -> bool:
        """Mark a `failed` row `reported`: True for the one caller that did."""
        ...

    async def mark_remote_parse_due(self, remote_id: str, *, now: float) -> bool:
        """A webhook named `remote_id`: poll its `live` row at once. False if none is live."""
        ...

    async def remote_parse_live(self, remote_id: str) -> bool:
        """Is a `live` row waiting on `remote_id`? (The webhook endpoint's question.)"""
        ...


def json_text(value: Mapping[str, Any] | Sequence[Any] | None) -> str | None:
    """A column's JSON text, or NULL."""
    return None if value is None else json.dumps(value, sort_keys=True)
