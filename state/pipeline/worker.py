"""The worker: leases jobs and walks each through the pipeline's steps (`steps`).

A job the worker holds moves forward step by step (parse, chunk, embed)
until it completes or leaves the worker's hands. What a provider step
(parse, embed) raised decides where the job goes:

| what a step raised                              | the job                                   |
|-------------------------------------------------|-------------------------------------------|
| `BudgetExceeded`, `CircuitOpen`, `RateLimited`  | `waiting` until `now + retry_after_s`     |
| a 429 that outlasted the guard's retries        | `waiting` (rate_limited) until its wait   |
| a failure (5xx, timeout, ...) after the guard's | `waiting` (retry), backing off; `failed`  |
| retries                                         | once `max_attempts` tries of the step fail |
| a caller, configuration or quota error          | `failed`, with the error as `last_error`  |
| `StaleJob`                                      | dropped: somebody else owns it now        |

In HYBRID mode the router serves the mock instead of raising the refusals,
and the job completes `degraded`. Rejections never count as attempts; a
job that keeps killing workers in a step (its lease picked up more than
`max_attempts` times there) is failed too. So is a job whose step finds
its input missing from the store (`MissingInput`): the store lost what it
had written, and no retry brings it back.

A parse is a remote job (`state.pipeline.remote`): its step submits the
document, records the remote job and lets the job go (`Parked`), so the
slot is free at once; the worker's poller (`RemoteParses.run`, beside the
lease loop in `run`, and once per `run_once`) finishes remote parses and
makes their jobs due again, and the next lease finds the parse stored.

Embedding is shared across documents: besides its `concurrency` slots, the
worker holds up to `embed_jobs` jobs whose next provider step is the
embedding, leased together (`JobStore.lease(to_embed=True)`) whenever more
jobs may be ready than its slots took, and every embed step sends its chunks
through one `EmbedCoalescer`, which packs the chunks of jobs leased together
into full requests (`state.pipeline.coalescer` says how, and what each job
gets back). `concurrency` thus bounds the jobs parsing at once; a job that
has only its embedding left costs a lease and a heartbeat.

Time: sleeps use the loop clock; every `now` given to the store is
`resilience.clock.wall_time()` (`clock`), so both follow virtual time in tests.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Unpack

from resilience import ErrorClass, Rejected, classify, correlation
from resilience.clock import wall_time
from resilience.events import emit
from state.machine import Job, JobState, Trigger, WaitReason
from state.pipeline.coalescer import EmbedCoalescer
from state.pipeline.remote import Parked, RemoteParses
from state.pipeline.steps import Done, MissingInput, Steps
from state.pipeline.wiring import Pipeline
from state.store.protocol import JobChanges, JobStore, StaleJob

IDLE_SLEEP_S: Final = 1.0
"""How long `run` sleeps when no job was ready."""

EMBED_JOBS: Final = 256
"""How many jobs ready to embed a worker holds at once, beside its `concurrency`."""

_TO_EMBED: Final = frozenset({JobState.PARSED, JobState.CHUNKED, JobState.EMBEDDING})
"""The steps from which a job's next provider call is the embedding."""

RETRY_BASE_S: Final = 30.0
"""A failed step waits this long, doubled per attempt, before it is tried again."""

_PERMANENT: Final = frozenset({ErrorClass.CALLER, ErrorClass.CONFIGURATION, ErrorClass.QUOTA})


@dataclass(slots=True)
class WorkerStats:
    """What a worker did, for tests and the CLI."""

    steps: int = 0
    completed: int = 0
    waited: int = 0
    failed: int = 0
    stale: int = 0
    parked: int = 0
    """Parse steps that submitted (or found) a remote parse and let the job go."""
    errors: int = 0
    """Unexpected errors outside a provider call; the job is released and retried."""
    released: int = 0
    by_wait_reason: dict[str, int] = field(default_factory=dict)


class Worker:
    """Leases up to `concurrency` jobs at a time and runs them through `pipeline`'s steps.

    Up to `embed_jobs` more jobs whose next provider step is the embedding are
    held besides, so their chunks share requests (0: none besides). Provider
    calls are counted by whoever subscribes to the pipeline's routers
    (`Metrics.count_calls`), not here.
    """

    def __init__(
        self,
        store: JobStore,
        pipeline: Pipeline,
        *,
        owner: str,
        concurrency: int = 4,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        embed_jobs: int = EMBED_JOBS,
        clock: Callable[[], float] = wall_time,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or not lease_s > 0 or embed_jobs < 0:
            raise ValueError(
                "concurrency and max_attempts must be >= 1, embed_jobs >= 0 and lease_s > 0"
            )
        self.store = store
        self.pipeline = pipeline
        self.coalescer = EmbedCoalescer(pipeline)
        parser = pipeline.parser
        self.remote = (
            None
            if parser is None
            else RemoteParses(store, pipeline, parser, owner=owner, clock=clock)
        )
        """The durable parse step and this worker's poller; None without a LlamaParse client."""
        self.steps = Steps(store, pipeline, self.coalescer, self.remote)
        self.owner = owner
        self.concurrency = concurrency
        self.embed_jobs = embed_jobs
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"Worker(owner={self.owner!r}, concurrency={self.concurrency}, "
            f"embed_jobs={self.embed_jobs})"
        )

    # -- the loop ------------------------------------------------------------

    async def run_once(self) -> int:
        """Lease up to `concurrency` ready jobs, and up to `embed_jobs` more ready to embed,
        and walk each as far as it goes; then poll the remote parses that are due once.
        How many jobs were walked plus how many remote parses ended."""
        jobs = await self._lease(self.concurrency, to_embed=False)
        if len(jobs) == self.concurrency:  # else no other job was ready
            jobs += await self._lease(self.embed_jobs, to_embed=True)
        active: dict[str, asyncio.Task[None]] = {}
        self._start(jobs, active, held=set())
        walked = len(active)  # each task drops itself from `active` as it ends
        if active:
            await asyncio.gather(*active.values())
        finished = 0 if self.remote is None else await self.remote.poll()
        return walked + finished

    async def run(self, stop: asyncio.Event, *, idle_sleep_s: float = IDLE_SLEEP_S) -> None:
        """Work until `stop` is set, holding at most `concurrency` jobs at once
        (and up to `embed_jobs` more that only wait to embed).

        A slot freed by one job is refilled at once (a long parse does not
        hold up the others). Once `stop` is set no job is leased; each held
        job finishes the step it is in and its lease is released.
        """
        self._stopping = stop
        # By job id: a lease that lapsed under a running step (a stalled process, a
        # wall-clock jump) can come back to this same worker, and the job must then
        # stay with the task already walking it, not get a second one.
        slots: dict[str, asyncio.Task[None]] = {}
        embedding: dict[str, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        stopped = loop.create_task(stop.wait())
        polling = None if self.remote is None else loop.create_task(self.remote.run(stop))
        next_poll = loop.time()
        try:
            while not stop.is_set():
                asked = self.concurrency - len(slots)
                fresh = await self._lease(asked, to_embed=False)
                ready: list[Job] = []
                # Only while more jobs may be ready: the lease above came back full, or,
                # with every slot busy, once per IDLE_SLEEP_S rather than on every wake.
                if len(fresh) == asked and (asked > 0 or loop.time() >= next_poll):
                    next_poll = loop.time() + IDLE_SLEEP_S
                    ready = await self._lease(self.embed_jobs - len(embedding), to_embed=True)
                # Started only once both leases are in, so that a round of embedding
                # waits for every job ready to embed, not only the first lease's.
                held = slots.keys() | embedding.keys()
                self._start(fresh, slots, held=held)
                self._start(ready, embedding, held=held)
                await asyncio.wait(
                    {stopped, *slots.values(), *embedding.values()},
                    timeout=idle_sleep_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stopped.cancel()
            if polling is not None:
                polling.cancel()
            if slots or embedding:
                await asyncio.gather(*slots.values(), *embedding.values(), return_exceptions=True)

    async def _lease(self, limit: int, *, to_embed: bool) -> list[Job]:
        if limit < 1:
            return []
        return await self.store.lease(
            self.owner, now=self.clock(), lease_s=self.lease_s, limit=limit, to_embed=to_embed
        )

    def _start(
        self, jobs: list[Job], tasks: dict[str, asyncio.Task[None]], *, held: AbstractSet[str]
    ) -> None:
        """Walk each of `jobs` not `held` already in a task of its own, kept in `tasks`."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            if job.id in held:
                continue
            step = job.resume_to if job.state is JobState.WAITING else job.state
            if step in _TO_EMBED:
                self.coalescer.expect(job.id)
            task = loop.create_task(self._hold(job))
            tasks[job.id] = task
            task.add_done_callback(partial(_drop, tasks, job.id))

    # -- one job -------------------------------------------------------------

    async def _hold(self, job: Job) -> None:
        """Walk `job` while holding its lease, renewing it; release it if still ours.

        The job's correlation id is bound throughout, so its log lines and
        provider requests carry it (`resilience.correlation`).
        """
        with correlation.bound(job.correlation_id):
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job.id))
            try:
                await self._walk(job)
            except StaleJob as exc:
                self.stats.stale += 1
                emit(
                    "worker.stale",
                    level="WARNING",
                    job_id=job.id,
                    owner=self.owner,
                    detail=str(exc),
                )
            except Exception as exc:  # a bug or a store error: log it, let the lease go, carry on
                self.stats.errors += 1
                emit(
                    "worker.error",
                    level="ERROR",
                    job_id=job.id,
                    state=job.state.value,
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                heartbeat.cancel()
                self.coalescer.forget(job.id)
                if await self.store.release_lease(job.id, self.owner):
                    self.stats.released += 1

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_lease(
                    job_id, self.owner, now=self.clock(), lease_s=self.lease_s
                )
            except StaleJob:
                # Lapsed (a stalled process, a wall clock jump) or taken. This worker's
                # next lease may take the job back while this walk still runs, and that
                # lease must be renewed too; if another worker took it, the walk's next
                # write fails and ends it.
                continue

    async def _walk(self, job: Job) -> None:
        if job.state is JobState.WAITING:
            job = await self._move(job, Trigger.RESUME, f"resumed after {job.wait_reason}")
        elif job.step_attempts > self.max_attempts:
            reason = f"{job.state}: picked up {job.step_attempts} times without finishing"
            await self._fail(job, reason)
            return
        while not job.is_terminal:
            if self._stopping.is_set():
                return  # released by `_hold`; the step is redone by the next lease
            moved = await self._step(job)
            if moved is None:
                return
            job = moved
            self.stats.steps += 1
        self.stats.completed += 1

    async def _step(self, job: Job) -> Job | None:
        """Move `job` one step on; None once it left this worker's hands (waiting or failed)."""
        match job.state:
            case JobState.UPLOADED:
                return await self._move(job, Trigger.START_PARSE, "parsing")
            case JobState.PARSING:
                return await self._provider_step(job, self.steps.parse)
            case JobState.PARSED:
                return await self._record(job, await self.steps.chunk(job))
            case JobState.CHUNKED:
                return await self._move(job, Trigger.START_EMBED, "embedding")
            case JobState.EMBEDDING:
                return await self._provider_step(job, self.steps.embed)
        raise RuntimeError(f"job {job.id} cannot be worked in {job.state}")

    async def _record(self, job: Job, outcome: Done | MissingInput | Parked) -> Job | None:
        """Move `job` through the trigger of the step it finished, or fail it for a lost input.

        None once the job left this worker's hands: failed, or parked on its
        remote parse (the store released the lease when it recorded it).
        """
        if isinstance(outcome, Parked):
            self.stats.parked += 1
            return None
        if isinstance(outcome, MissingInput):
            error = f"{type(outcome).__name__}: {outcome}"
            await self._fail(job, f"{job.state}: no stored {outcome.what}", last_error=error)
            return None
        return await self._move(job, outcome.trigger, outcome.reason, degraded=outcome.degraded)

    # -- errors --------------------------------------------------------------

    async def _provider_step(
        self, job: Job, step: Callable[[Job], Awaitable[Done | MissingInput | Parked]]
    ) -> Job | None:
        """Run a provider step and record it; what it raised becomes a wait or a failure."""
        try:
            return await self._record(job, await step(job))
        except StaleJob:
            raise
        except Rejected as exc:
            await self._wait(job, WaitReason(exc.reason), exc.retry_after_s, str(exc))
        except Exception as exc:
            await self._on_error(job, exc)
        return None

    async def _on_error(self, job: Job, exc: Exception) -> None:
        """Fail a permanent error; wait out a 429 or, with backoff, a transient failure."""
        error_class = classify(exc)
        error = f"{type(exc).__name__}: {exc}"
        if error_class in _PERMANENT:
            await self._fail(job, f"{job.state}: {error_class} error", last_error=error)
        elif error_class is ErrorClass.RATE_LIMITED:
            retry_after = getattr(exc, "retry_after_s", None) or RETRY_BASE_S
            await self._wait(job, WaitReason.RATE_LIMITED, retry_after, error)
        else:
            attempts = job.step_attempts + 1
            if attempts >= self.max_attempts:
                await self._fail(
                    job,
                    f"{job.state}: failed {attempts} times (max_attempts {self.max_attempts})",
                    last_error=error,
                )
            else:
                delay = RETRY_BASE_S * 2 ** (attempts - 1)
                await self._wait(job, WaitReason.RETRY, delay, error, step_attempts=attempts)

    async def _wait(
        self,
        job: Job,
        reason: WaitReason,
        retry_after_s: float,
        error: str,
        *,
        step_attempts: int | None = None,
    ) -> None:
        now = self.clock()
        changes: JobChanges = {
            "not_before": now + max(retry_after_s, 0.0),
            "wait_reason": reason,
            "last_error": error,
        }
        if step_attempts is not None:
            changes["step_attempts"] = step_attempts
        await self._move(job, Trigger.WAIT, f"{reason}: {error}", now=now, **changes)
        self.stats.waited += 1
        self.stats.by_wait_reason[reason.value] = self.stats.by_wait_reason.get(reason.value, 0) + 1

    async def _fail(self, job: Job, reason: str, *, last_error: str | None = None) -> None:
        changes: JobChanges = {"failure_reason": reason}
        if last_error is not None:
            changes["last_error"] = last_error
        await self._move(job, Trigger.FAIL, reason, **changes)
        self.stats.failed += 1
        emit("worker.failed", level="WARNING", job_id=job.id, reason=reason, error=last_error)

    async def _move(
        self,
        job: Job,
        trigger: Trigger,
        reason: str,
        *,
        now: float | None = None,
        **changes: Unpack[JobChanges],
    ) -> Job:
        """Compare-and-set `job` through `trigger` under this worker's lease."""
        return await self.store.transition(
            job.id,
            expected_state=job.state,
            expected_version=job.version,
            owner=self.owner,
            trigger=trigger,
            reason=reason,
            correlation_id=job.correlation_id,
            now=self.clock() if now is None else now,
            **changes,
        )


def _drop(active: dict[str, asyncio.Task[None]], job_id: str, _: asyncio.Task[None]) -> None:
    active.pop(job_id, None)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM, so `Worker.run` shuts down gracefully."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


__all__ = ["Worker", "WorkerStats", "install_signal_handlers", "remove_signal_handlers"]
