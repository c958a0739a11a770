"""Durable remote parses: submit, record, let go; one poller per process finishes them.

A LlamaParse job runs 30-300 s and is paid once uploaded, so a worker must
neither hold a slot while it runs nor forget it when the process dies.
`RemoteParses.step` is the parse step of a job whose parse is not stored:

1. Reserve the estimated cost in the budget (`BudgetExceeded`: the job
   waits, or HYBRID serves the mock), then record an `intent` row carrying
   the reservation's record, under the name the upload will carry
   (`state.store.remote.upload_key`: the job's id and version).
2. Upload through the router (capability `SUBMIT`: guard, breaker, upload
   throttle; HYBRID falls back to the mock as for any call).
3. Record the remote id and let the job go, in one transaction: the job
   stays in `parsing`, unleased, not leased again before the remote job's
   deadline. The worker's slot is free at once.

The poller (`poll`, run by every `Worker` beside its leases) claims due rows
in batches, asks their states in one guarded request (v2's job list), and:
a COMPLETED job's result is fetched once, stored with the row marked `done`
and the job made due in one transaction, and only then is the reservation
settled at the reported cost; FAILED (or CANCELLED) rows are marked
`failed` and their reservation released; rows past their deadline are
failed as `job_timeout` and their reservation kept (LlamaParse may still
bill them). A job made due finds its parse stored and moves on, or takes
its row's failure and meets the usual retry rules (a 422 fails it; a
timeout retries under a new name).

What a crash at each point costs:

| the process dies                        | what happens next                                 |
|-----------------------------------------|---------------------------------------------------|
| after reserving, before the intent      | the estimate stays charged until the period ends; |
|                                         | nothing was uploaded (one database write wide)    |
| after the intent, before the upload     | the next lease finds the intent, finds no job of  |
| answered, or before the id was recorded | that name in LlamaParse's job list (`find`), or   |
|                                         | finds it and adopts it: one upload either way,    |
|                                         | on the intent's own reservation                   |
| while the remote job runs               | nothing held; any poller finishes it              |
| after the fetch, before it is stored    | the row is still `live`: fetched again (the only  |
|                                         | second fetch there is)                            |
| after storing, before settling          | the estimate stays charged instead of the cost    |

An intent whose job ended before anyone learnt whether its upload landed
(dead-lettered after crashes, or served by a mock since) is settled by the
poller all the same (`_resolve`): adopted and finished if LlamaParse has the
job, else dropped and its reservation released.

v1 cannot list jobs, so there an intent found after a crash is uploaded
again (under the same name; LlamaParse's cache may make it free), and one
whose job ended keeps its estimate charged.

What no lease can prevent: a process stalled past its lease in the middle of
an upload (a wall-clock jump, a paused VM) uploads while the job's next
owner, finding the intent and no job of that name yet, uploads again; the
stalled one cannot record its id (`StaleJob`), so that job is billed and
never charged. The chaos simulation meets this only after clock jumps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from providers import LLAMAPARSE
from providers.llamaparse.client import (
    Document,
    LlamaParse,
    ParsedDocument,
    RemoteParse,
    estimate_pages,
    upload_name,
)
from providers.llamaparse.webhooks import WebhookEvent, WebhookInbox
from resilience import Guard, ProviderError, Rejected, ServiceMode
from resilience.budget import Budget, Reservation
from resilience.clock import Clock, wall_time
from resilience.errors import BudgetExceeded
from resilience.events import emit
from state.machine import Job
from state.pipeline.wiring import PARSE, SUBMIT, Pipeline
from state.store.protocol import JobStore
from state.store.remote import RemoteJob, RemoteState, error_record, upload_key

CLAIM_S: Final = 60.0
"""How long a poller's claim on a row lasts: its poll and fetch must end within it."""
BATCH: Final = 100
"""Rows a poller claims per round: one v2 list request asks them all."""
TICK_S: Final = 1.0
"""How often a poller looks for due rows."""
SWEEP_S: Final = 60.0
"""How often a poller looks for intents whose job ended (`_resolve`)."""


@dataclass(frozen=True, slots=True)
class Parked:
    """The job's parse runs remotely as `remote_id`; the job was let go until it ends."""

    job: Job
    remote_id: str


@dataclass(frozen=True, slots=True)
class Served:
    """A mock served the parse instead (MOCK mode, or HYBRID's fallback): store it."""

    parsed: ParsedDocument
    reason: str | None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched result, out of the guard's sight: a value with a `cost_usd` settles the
    guarded call's own reservation at that cost, and the parse's cost belongs to the
    intent's reservation (`_finish` settles it), so it would be charged twice."""

    parsed: ParsedDocument


@dataclass(slots=True)
class PollStats:
    """What a process's poller did, for tests and the CLI."""

    rounds: int = 0
    polled: int = 0
    finished: int = 0
    failed: int = 0
    expired: int = 0
    resumed: int = 0
    """Intents found after a crash whose upload LlamaParse already had: adopted."""


class RemoteParses:
    """The durable parse step and the poller, over one store, for one worker (`owner`)."""

    def __init__(
        self,
        store: JobStore,
        pipeline: Pipeline,
        parser: LlamaParse,
        *,
        owner: str,
        clock: Clock = wall_time,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.parser = parser
        self.owner = owner
        self.clock = clock
        self.stats = PollStats()
        self._heard = 0
        self._next_sweep = 0.0
        """The mark of the last webhook event taken from the inbox (`WebhookInbox.finished`)."""

    @property
    def _guard(self) -> Guard:
        return self.pipeline.guard(PARSE)

    @property
    def _inbox(self) -> WebhookInbox | None:
        """Where webhooks arrive, when the uploads ask for them."""
        return self.parser.inbox if self.parser.config.webhook_url else None

    @property
    def _budget(self) -> Budget | None:
        return self._guard.budget

    # -- the step ----------------------------------------------------------------

    async def step(self, job: Job, document: Document) -> Parked | Served | None:
        """Start, resume or wait on `job`'s remote parse; `Served` when a mock parsed it,
        None when its parse is stored already (a poller finished it since the caller looked)."""
        row = await self.store.remote_parse_of(job.sha256)
        if row is None and await self.store.get_parse(job.sha256) is not None:
            return None  # read after the row: a row that finished has stored its parse by now
        if row is not None and row.status is RemoteState.FAILED:
            if await self.store.take_remote_failure(row.name, now=self.clock()):
                raise row.failure()
            row = None  # another caller took it: start afresh
        if row is not None and row.status is RemoteState.LIVE:
            return await self._overdue(row)
        router = self.pipeline.router(SUBMIT)
        if router.mode is ServiceMode.MOCK:
            cid = job.correlation_id
            routed = await router.call(SUBMIT, document, name=None, correlation_id=cid)
            return Served(routed.value, routed.reason)
        if row is None:
            intended = await self._intend(job, document)
            if isinstance(intended, Served):
                return intended
            row = intended
        elif row.status is RemoteState.INTENT:
            found = await self._guard.call(
                self.parser.find,
                upload_name(document.name, row.name),
                since=row.created_at,
                correlation_id=job.correlation_id,
            )
            if found is not None:
                self.stats.resumed += 1
                emit("remote_parse.resumed", job_id=job.id, name=row.name, remote_id=found)
                return await self._record(job, row, found)
        return await self._submit(job, document, row)

    async def _intend(self, job: Job, document: Document) -> RemoteJob | Served:
        """Reserve the estimate and record the intent, or serve the mock for a refused budget.

        Raises a transient `ProviderError` (code "remote_conflict") when the
        store already holds a row that stands in the intent's way.
        """
        estimate = self.parser.estimate_cost_usd(document)
        budget = self._budget
        try:
            reservation = (
                None
                if budget is None
                else await budget.reserve(
                    LLAMAPARSE, estimate, requests=0, correlation_id=job.correlation_id
                )
            )
        except BudgetExceeded as exc:
            router = self.pipeline.router(SUBMIT)
            if router.mode is not ServiceMode.HYBRID:
                raise
            routed = await router.serve_mock(SUBMIT, "budget", exc, document, name=None)
            return Served(routed.value, routed.reason)
        now = self.clock()
        config = self.parser.config
        intent = RemoteJob(
            name=upload_key(job),
            sha256=job.sha256,
            job_id=job.id,
            correlation_id=job.correlation_id,
            status=RemoteState.INTENT,
            remote_id=None,
            api_version=config.api_version,
            options=self.parser.upload_options(),
            estimated_pages=estimate_pages(document),
            estimated_usd=estimate,
            reservation=None if reservation is None else reservation.record(),
            due_at=now,
            deadline=now + config.job_timeout_s,  # provisional: `_record` counts from the upload
            polls=0,
            error=None,
            created_at=now,
        )
        row = await self.store.begin_remote_parse(intent, now=now)
        if row.name == intent.name and row.created_at == now:
            return row
        # Another row stands in the way: this document's own live one (another process
        # got there first) or a finished row of this very name (a crash after a failure
        # was reported). Nothing is uploaded; the job retries once that has moved on.
        if reservation is not None:
            await reservation.budget.release(reservation, error_class="conflict")
        raise ProviderError(
            f"llamaparse: remote parse {row.name} is {row.status} for this document",
            code="remote_conflict",
        )

    async def _submit(self, job: Job, document: Document, row: RemoteJob) -> Parked | Served:
        """Upload under the intent's name; record it, or undo the intent if nothing was paid."""
        router = self.pipeline.router(SUBMIT)
        try:
            routed = await router.call(
                SUBMIT, document, name=row.name, correlation_id=job.correlation_id
            )
        except ProviderError as exc:
            if exc.status is not None:  # answered: nothing is remote, nothing was billed
                await self._undo(document, row, f"http_{exc.status}")
            raise  # unknown outcome: the intent stays, and the next lease looks for it by name
        except Rejected as exc:  # refused before sending (REAL mode)
            await self._undo(document, row, exc.reason)
            raise
        if isinstance(routed.value, RemoteParse):
            return await self._record(job, row, routed.value.job_id)
        if not await self._undo(document, row, routed.reason or "mock"):
            raise ProviderError(
                f"llamaparse: the upload of {row.name} got no answer", code="upload_unanswered"
            )
        return Served(routed.value, routed.reason)

    async def _undo(self, document: Document, row: RemoteJob, why: str) -> bool:
        """Drop the intent and release its reservation, unless an upload under its name got
        no answer (an earlier try of the guard's, or this one before HYBRID served the mock):
        LlamaParse may have that one, so the intent stays for the next lease to look for.
        False if it stays."""
        if self.parser.unanswered(upload_name(document.name, row.name)):
            return False
        if await self.store.drop_remote_parse(row.name):
            await self._release(row, why)
        return True

    async def _record(self, job: Job, row: RemoteJob, remote_id: str) -> Parked:
        now = self.clock()
        parked = await self.store.record_remote_parse(
            row.name,
            remote_id,
            owner=self.owner,
            due_at=now + self._first_poll_s,
            deadline=self._deadline(now),
            now=now,
        )
        emit("remote_parse.submitted", job_id=job.id, name=row.name, remote_id=remote_id)
        return Parked(parked, remote_id)

    def _deadline(self, now: float) -> float:
        """When a remote job made or found at `now` expires: `job_timeout_s` from then.

        Not from the intent: an upload made late (after hung tries, circuit-open
        waits) would be expired the moment it is recorded, and its job failed
        though LlamaParse completes it. A job `find` turns up after a crash was
        made earlier, but LlamaParse's `created_at` is on its clock, not ours
        (`find` allows `FIND_SLACK_S` between them), so the deadline counts
        from when we learnt of it: the job gets at least its full time, and at
        most the crash's gap more.
        """
        return now + self.parser.config.job_timeout_s

    @property
    def _first_poll_s(self) -> float:
        """When a new remote job is first polled: once its webhook is late, if one is due."""
        config = self.parser.config
        return config.webhook_deadline_s if self._inbox is not None else config.poll_initial_s

    async def _overdue(self, row: RemoteJob) -> Parked:
        """A live row's job came back: after its deadline (fail it as expired), or early."""
        now = self.clock()
        if now >= row.deadline:
            await self._expire(row, owner=None)
            if await self.store.take_remote_failure(row.name, now=now):
                raise row_timeout(row, self.parser.config.job_timeout_s)
        raise ProviderError(
            f"llamaparse: remote parse {row.remote_id} ({row.name}) is still running",
            code="remote_running",
        )

    # -- the poller ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, tick_s: float = TICK_S) -> None:
        """Poll due rows every `tick_s` until `stop` is set; a failed round is logged."""
        while not stop.is_set():
            try:
                await self.poll()
            except Exception as exc:  # the store or a bug: log it, try again next tick
                emit("remote_parse.poll_error", level="ERROR", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(stop.wait(), tick_s)
            except TimeoutError:
                pass

    async def poll(self) -> int:
        """One round: claim due rows, finish them from webhooks heard or from one status
        request per batch, and reschedule the rest; how many ended."""
        now = self.clock()
        inbox = self._inbox
        if inbox is not None:
            self._heard, events = inbox.finished(self._heard)
            for event in events:
                await self.store.mark_remote_parse_due(event.job_id, now=now)
        if now >= self._next_sweep:  # rare rows, and a join: not on every tick
            self._next_sweep = now + SWEEP_S
            for abandoned in await self.store.abandoned_intents(limit=BATCH):
                await self._resolve(abandoned)
        rows = await self.store.claim_remote_parses(
            self.owner, now=now, hold_s=CLAIM_S, limit=BATCH
        )
        if not rows:
            return 0
        self.stats.rounds += 1
        self.stats.polled += len(rows)
        ended = 0
        asked: list[RemoteJob] = []
        for row in rows:
            heard = None if inbox is None else inbox.terminal(row.remote_id or "")
            if heard is None:
                asked.append(row)
            else:
                ended += await self._heard_of(row, heard)
        for batch in _batches(asked):
            ended += await self._ask(batch)
        return ended

    async def _resolve(self, row: RemoteJob) -> None:
        """Settle an intent whose job ended first: adopt its upload if LlamaParse has it (the
        poller then fetches and settles it), else drop it and release its reservation.

        An upload of this process's that got no answer is looked up too (the job's
        tries are over, so nothing else will): waiting for an answer that never comes
        kept such an intent's estimate charged for good. Only a miss within a round of
        the job's end waits for the next round, in case LlamaParse lists it late."""
        job = await self.store.get_job(row.job_id)
        if job is None:
            return
        filename = upload_name(job.filename, row.name)
        try:
            found = await self._guard.call(
                self.parser.find, filename, since=row.created_at, correlation_id=row.correlation_id
            )
        except Exception:  # the breaker, limits, an outage: look again next round
            return
        now = self.clock()
        if found is None:
            if self.parser.unanswered(filename) and now < _epoch(job.updated_at) + SWEEP_S:
                return  # its last upload got no answer and may still land: look next round
            if await self.store.drop_remote_parse(row.name):
                await self._release(row, "abandoned")
        elif await self.store.adopt_remote_parse(
            row.name, found, due_at=now, deadline=self._deadline(now), now=now
        ):
            self.stats.resumed += 1
            emit("remote_parse.adopted", job_id=row.job_id, name=row.name, remote_id=found)

    async def _heard_of(self, row: RemoteJob, event: WebhookEvent) -> int:
        """Finish `row` from its terminal webhook: the result it carries, else one fetch."""
        try:
            parsed = self.parser.outcome(row.handle(), event)
        except ProviderError as exc:
            return await self._fail(row, exc)
        if parsed is None:
            return await self._fetch(row)
        return await self._finish(row, parsed)

    async def _ask(self, batch: list[RemoteJob]) -> int:
        """One status request for `batch` (under its job's correlation id if it is one job)."""
        cid = batch[0].correlation_id if len(batch) == 1 else None
        try:
            states = await self._guard.call(
                self.parser.statuses, [row.handle() for row in batch], correlation_id=cid
            )
        except Exception as exc:  # breaker open, limits, an outage: look again later
            error = type(exc).__name__
            emit("remote_parse.poll_failed", level="WARNING", rows=len(batch), error=error)
            for row in batch:
                await self._later(row)
            return 0
        ended = 0
        for row in batch:
            status = states.get(row.remote_id or "")
            if status is not None and status.error is not None:
                ended += await self._fail(row, status.error)
            elif status is not None and status.completed:
                ended += await self._fetch(row)
            elif self.clock() >= row.deadline:
                ended += await self._expire(row, owner=self.owner)
            else:
                await self._later(row)
        return ended

    async def _fetch(self, row: RemoteJob) -> int:
        try:
            fetched = await self._guard.call(
                self._result, row.handle(), correlation_id=row.correlation_id
            )
        except Exception as exc:  # a 422 ended the job; anything else: look again later
            if isinstance(exc, ProviderError) and exc.status == 422:
                return await self._fail(row, exc)
            await self._later(row)
            return 0
        return await self._finish(row, fetched.parsed)

    async def _result(self, handle: RemoteParse) -> Fetched:
        return Fetched(await self.parser.result(handle))

    async def _finish(self, row: RemoteJob, parsed: ParsedDocument) -> int:
        now = self.clock()
        if not await self.store.finish_remote_parse(
            row.name, parsed, "real", owner=self.owner, now=now
        ):
            return 0  # our claim lapsed and another poller took the row
        self.stats.finished += 1
        emit("remote_parse.finished", job_id=row.job_id, name=row.name, remote_id=row.remote_id)
        reservation = self._reservation(row)
        if reservation is not None:
            await reservation.budget.settle(reservation, parsed.cost_usd)
        return 1

    async def _fail(self, row: RemoteJob, error: ProviderError) -> int:
        if not await self.store.fail_remote_parse(
            row.name, error_record(error), owner=self.owner, now=self.clock()
        ):
            return 0
        self.stats.failed += 1
        emit(
            "remote_parse.failed",
            level="WARNING",
            job_id=row.job_id,
            name=row.name,
            code=error.code,
        )
        await self._release(row, error.code or "failed")
        return 1

    async def _expire(self, row: RemoteJob, *, owner: str | None) -> int:
        timeout = row_timeout(row, self.parser.config.job_timeout_s)
        if not await self.store.fail_remote_parse(
            row.name, error_record(timeout), owner=owner, now=self.clock()
        ):
            return 0
        self.stats.expired += 1
        emit("remote_parse.expired", level="WARNING", job_id=row.job_id, name=row.name)
        reservation = self._reservation(row)
        if reservation is not None:
            # Unknown outcome: LlamaParse may finish and bill it yet.
            await reservation.budget.keep(reservation, error_class="job_timeout")
        return 1

    async def _later(self, row: RemoteJob) -> None:
        config = self.parser.config
        interval = min(config.poll_initial_s + row.polls * config.poll_step_s, config.poll_max_s)
        now = self.clock()
        await self.store.reschedule_remote_parse(
            row.name, owner=self.owner, due_at=now + interval, now=now
        )

    async def _release(self, row: RemoteJob, why: str) -> None:
        reservation = self._reservation(row)
        if reservation is not None:
            await reservation.budget.release(reservation, error_class=why)

    def _reservation(self, row: RemoteJob) -> Reservation | None:
        """The reservation `row` carries, open again in this process's budget."""
        budget = self._budget
        if row.reservation is None or budget is None:
            return None
        return budget.reopen(row.reservation)


def _batches(rows: list[RemoteJob]) -> list[list[RemoteJob]]:
    """Status requests to make: v1 rows one by one (v1 has no job list), v2 rows together."""
    v1 = [[row] for row in rows if row.api_version == "v1"]
    v2 = [row for row in rows if row.api_version == "v2"]
    return v1 + [v2[start : start + BATCH] for start in range(0, len(v2), BATCH)]


def _epoch(iso: str) -> float:
    """Epoch seconds of an ISO-8601 stamp (a job's `updated_at`)."""
    return datetime.fromisoformat(iso).timestamp()


def row_timeout(row: RemoteJob, timeout_s: float) -> ProviderError:
    """The error a remote parse past its deadline ends with: transient, so it is retried."""
    return ProviderError(
        f"llamaparse: job {row.remote_id} did not finish within {timeout_s:g}s",
        code="job_timeout",
    )


__all__ = ["Parked", "PollStats", "RemoteParses", "Served"]
