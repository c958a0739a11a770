"""The worker: leases jobs and walks each through the pipeline's steps, and the backfill.

A job the worker holds moves forward step by step (parse, chunk, embed)
until it completes or leaves the worker's hands:

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
`max_attempts` times there) is failed too.

Time: sleeps use the loop clock; every `now` given to the store is
`resilience.clock.wall_time()` (`clock`), so both follow virtual time in tests.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final, TypeVar, Unpack

from providers.llamaparse.client import Document, ParsedDocument, estimate_cost_usd
from resilience import ErrorClass, ProviderError, Rejected, Router, ServiceMode, classify
from resilience.clock import wall_time
from resilience.events import emit
from state.app.metrics import Metrics
from state.machine import Job, JobState, Trigger, WaitReason
from state.pipeline.chunking import chunk
from state.pipeline.wiring import EMBED, PARSE, PROVIDER_OF, Pipeline
from state.store.protocol import EmbeddingRow, JobChanges, JobStore, StaleJob

IDLE_SLEEP_S: Final = 1.0
"""How long `run` sleeps when no job was ready."""

RETRY_BASE_S: Final = 30.0
"""A failed step waits this long, doubled per attempt, before it is tried again."""

_PERMANENT: Final = frozenset({ErrorClass.CALLER, ErrorClass.CONFIGURATION, ErrorClass.QUOTA})

T = TypeVar("T")


def call_outcome(exc: BaseException) -> str:
    """The metrics outcome of a routed call that raised: the refusal's reason or the error class."""
    if isinstance(exc, Rejected):
        return exc.reason
    return classify(exc).value


class _Handed(Exception):
    """The job left this worker's hands (waiting or failed); stop walking it."""


@dataclass(slots=True)
class WorkerStats:
    """What a worker did, for tests and the CLI."""

    steps: int = 0
    completed: int = 0
    waited: int = 0
    failed: int = 0
    stale: int = 0
    errors: int = 0
    """Unexpected errors outside a provider call; the job is released and retried."""
    released: int = 0
    by_wait_reason: dict[str, int] = field(default_factory=dict)


class Worker:
    """Leases up to `concurrency` jobs at a time and runs them through `pipeline`.

    With `metrics`, every routed provider call is counted there
    (`Metrics.record_call`): provider, outcome ("ok" for a real result, the
    fallback reason for a mock one, such as "mode" or "budget", or what a
    raised call was: a refusal's reason or the error class) and path
    ("real" or "mock"). An embed step counts one call per `embed` of its
    chunks, "mock" if any chunk was served by the mock.
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
        clock: Callable[[], float] = wall_time,
        metrics: Metrics | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or not lease_s > 0:
            raise ValueError("concurrency and max_attempts must be >= 1 and lease_s > 0")
        self.store = store
        self.pipeline = pipeline
        self.owner = owner
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.metrics = metrics
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"Worker(owner={self.owner!r}, concurrency={self.concurrency})"

    # -- the loop ------------------------------------------------------------

    async def run_once(self) -> int:
        """Lease up to `concurrency` ready jobs and walk each as far as it goes; how many."""
        jobs = await self.store.lease(
            self.owner, now=self.clock(), lease_s=self.lease_s, limit=self.concurrency
        )
        if jobs:
            await asyncio.gather(*(self._hold(job) for job in jobs))
        return len(jobs)

    async def run(self, stop: asyncio.Event, *, idle_sleep_s: float = IDLE_SLEEP_S) -> None:
        """Work until `stop` is set, holding at most `concurrency` jobs at once.

        A slot freed by one job is refilled at once (a long parse does not
        hold up the others). Once `stop` is set no job is leased; each held
        job finishes the step it is in and its lease is released.
        """
        self._stopping = stop
        loop = asyncio.get_running_loop()
        # By job id: a lease that lapsed under a running step (a stalled process, a
        # wall-clock jump) can come back to this same worker, and the job must then
        # stay with the task already walking it, not get a second one.
        active: dict[str, asyncio.Task[None]] = {}
        stopped = loop.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = self.concurrency - len(active)
                if free > 0:
                    jobs = await self.store.lease(
                        self.owner, now=self.clock(), lease_s=self.lease_s, limit=free
                    )
                    for job in jobs:
                        if job.id in active:
                            continue
                        task = loop.create_task(self._hold(job))
                        active[job.id] = task
                        task.add_done_callback(partial(_drop, active, job.id))
                await asyncio.wait(
                    {stopped, *active.values()},
                    timeout=idle_sleep_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stopped.cancel()
            if active:
                await asyncio.gather(*active.values(), return_exceptions=True)

    # -- one job -------------------------------------------------------------

    async def _hold(self, job: Job) -> None:
        """Walk `job` while holding its lease, renewing it; release it if still ours."""
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job.id))
        try:
            await self._walk(job)
        except StaleJob as exc:
            self.stats.stale += 1
            emit("worker.stale", level="WARNING", job_id=job.id, owner=self.owner, detail=str(exc))
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
                return

    async def _walk(self, job: Job) -> None:
        if job.state is JobState.WAITING:
            job = await self._move(job, Trigger.RESUME, f"resumed after {job.wait_reason}")
        elif job.step_attempts > self.max_attempts:
            reason = f"{job.state}: picked up {job.step_attempts} times without finishing"
            await self._fail(job, reason)
            return
        try:
            while not job.is_terminal:
                if self._stopping.is_set():
                    return  # released by `_hold`; the step is redone by the next lease
                job = await self._step(job)
                self.stats.steps += 1
        except _Handed:
            return
        self.stats.completed += 1

    async def _step(self, job: Job) -> Job:
        match job.state:
            case JobState.UPLOADED:
                return await self._move(job, Trigger.START_PARSE, "parsing")
            case JobState.PARSING:
                return await self._guarded(job, self._parse)
            case JobState.PARSED:
                return await self._chunk(job)
            case JobState.CHUNKED:
                return await self._move(job, Trigger.START_EMBED, "embedding")
            case JobState.EMBEDDING:
                return await self._guarded(job, self._embed)
        raise RuntimeError(f"job {job.id} cannot be worked in {job.state}")

    async def _parse(self, job: Job) -> Job:
        stored = await self.store.get_parse(job.sha256)
        if stored is None:
            content = await self.store.document(job.sha256)
            if content is None:
                raise ProviderError(f"no stored document for {job.sha256}", status=404)
            document = Document(job.filename, content, job.mime_type)
            routed = await self._counted(
                PARSE,
                self.pipeline.router(PARSE).call(
                    PARSE, document, cost=estimate_cost_usd(document), correlation_id=job.id
                ),
            )
            self._record(PARSE, routed.reason or "ok", routed.path)
            parsed: ParsedDocument = routed.value
            await self.store.put_parse(parsed, routed.path)
            path, reason = routed.path, routed.reason
        else:
            path, reason = stored.path, "stored"
        return await self._move(
            job, Trigger.FINISH_PARSE, f"parsed ({path}, {reason})", degraded=path == "mock"
        )

    async def _chunk(self, job: Job) -> Job:
        stored = await self.store.get_parse(job.sha256)
        if stored is None:
            raise RuntimeError(f"job {job.id} is parsed but its parse is not stored")
        chunks = chunk(stored.parsed.markdown, self.pipeline.chunking)
        await self.store.put_chunks(job.sha256, chunks)
        return await self._move(job, Trigger.CHUNK, f"{len(chunks)} chunks")

    async def _embed(self, job: Job) -> Job:
        embedder = self.pipeline.embedder
        model, dims = embedder.model, embedder.vector_dimensions
        chunks = await self.store.chunks(job.sha256)
        done = {e.chunk_index for e in await self.store.embeddings(job.sha256, model, dims)}
        todo = [c for c in chunks if c.index not in done]
        if todo:
            result = await self._counted(
                EMBED,
                embedder.embed(
                    [c.text for c in todo], self.pipeline.router(EMBED), correlation_id=job.id
                ),
            )
            mocked = [
                reason
                for path, reason in zip(result.paths, result.reasons, strict=True)
                if path == "mock"
            ]
            if mocked:
                self._record(EMBED, mocked[0] or "mode", "mock")
            else:
                self._record(EMBED, "ok", "real")
            rows = [
                EmbeddingRow(c.index, vector, path)
                for c, vector, path in zip(todo, result.vectors, result.paths, strict=True)
            ]
            await self.store.put_embeddings(job.sha256, model, dims, rows)
        stored = await self.store.embeddings(job.sha256, model, dims)
        mock = sum(1 for e in stored if e.path == "mock")
        return await self._move(
            job,
            Trigger.FINISH_EMBED,
            f"{len(stored)} embeddings, {mock} mock",
            degraded=mock > 0,
        )

    # -- metrics -------------------------------------------------------------

    def _record(self, capability: str, outcome: str, path: str) -> None:
        if self.metrics is not None:
            self.metrics.record_call(PROVIDER_OF[capability], outcome, path)

    async def _counted(self, capability: str, call: Awaitable[T]) -> T:
        """Await a routed call, counting it in the metrics if it raises."""
        try:
            return await call
        except Exception as exc:
            self._record(capability, call_outcome(exc), "real")
            raise

    # -- errors --------------------------------------------------------------

    async def _guarded(self, job: Job, step: Callable[[Job], Awaitable[Job]]) -> Job:
        """Run a provider step, turning what it raised into a wait or a failure."""
        try:
            return await step(job)
        except StaleJob:
            raise
        except Rejected as exc:
            await self._wait(job, WaitReason(exc.reason), exc.retry_after_s, str(exc))
        except Exception as exc:
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
        raise _Handed

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
            correlation_id=job.id,
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


# -- backfill -----------------------------------------------------------------


@dataclass(slots=True)
class BackfillReport:
    """What a backfill did: jobs made whole, and jobs still degraded (with why)."""

    repaired: list[str] = field(default_factory=list)
    still_degraded: dict[str, str] = field(default_factory=dict)


async def backfill(
    store: JobStore,
    pipeline: Pipeline,
    *,
    clock: Callable[[], float] = wall_time,
    correlation_id: str = "backfill",
) -> BackfillReport:
    """Redo the mock-served steps of degraded complete jobs in REAL mode, then clear `degraded`.

    Only a provider with a key is called. A parse served by the mock is
    redone. If the real text differs from the mock's, the old chunks and
    vectors describe the wrong text: the real text is chunked and embedded
    afresh and swapped in at once (`JobStore.replace_outputs`), or, if any
    piece came back mock, nothing is written. Embeddings whose stored path
    is mock are re-embedded; real ones replace them. A job whose every step
    is real then has `degraded` cleared, with an audit row. Errors leave the
    job as it was and are reported.
    """
    report = BackfillReport()
    routers = pipeline.routers_for(ServiceMode.REAL)
    embedder = pipeline.embedder
    model, dims = embedder.model, embedder.vector_dimensions
    for job in await store.degraded_jobs():
        try:
            problem = await _backfill_parse(store, pipeline, routers, job)
            if problem is None:
                problem = await _backfill_embeddings(store, pipeline, routers[EMBED], job)
        except (Rejected, ProviderError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            report.still_degraded[job.id] = problem
            emit("backfill.skipped", level="WARNING", job_id=job.id, reason=problem)
            continue
        embeddings = await store.embeddings(job.sha256, model, dims)
        await store.clear_degraded(
            job.id,
            reason=f"backfill: parse and {len(embeddings)} embeddings real",
            correlation_id=correlation_id,
            now=clock(),
        )
        report.repaired.append(job.id)
        emit("backfill.repaired", job_id=job.id, embeddings=len(embeddings))
    return report


async def _backfill_parse(
    store: JobStore, pipeline: Pipeline, routers: dict[str, Router], job: Job
) -> str | None:
    stored = await store.get_parse(job.sha256)
    if stored is None:
        return "no stored parse"
    if stored.path == "real":
        return None
    if not pipeline.can_spend(PARSE):
        return "parse was mock-served and the parse provider has no key"
    content = await store.document(job.sha256)
    if content is None:
        return "no stored document"
    document = Document(job.filename, content, job.mime_type)
    routed = await routers[PARSE].call(
        PARSE, document, cost=estimate_cost_usd(document), correlation_id=job.id
    )
    parsed: ParsedDocument = routed.value
    if routed.path != "real":
        return "the parse provider still served the mock"
    if parsed.markdown == stored.parsed.markdown:
        await store.put_parse(parsed, routed.path)
        return None
    return await _reprocess(store, pipeline, routers[EMBED], job, parsed)


async def _reprocess(
    store: JobStore, pipeline: Pipeline, router: Router, job: Job, parsed: ParsedDocument
) -> str | None:
    """Chunk and embed a real parse that differs from the mock's, then swap it all in."""
    if not pipeline.can_spend(EMBED):
        return "the real parse differs from the mock's and the embedding provider has no key"
    embedder = pipeline.embedder
    chunks = chunk(parsed.markdown, pipeline.chunking)
    result = await embedder.embed([c.text for c in chunks], router, correlation_id=job.id)
    if result.degraded:
        return "the embedding provider still served mocks for the re-chunked text"
    rows = [
        EmbeddingRow(c.index, vector, path)
        for c, vector, path in zip(chunks, result.vectors, result.paths, strict=True)
    ]
    await store.replace_outputs(parsed, chunks, embedder.model, embedder.vector_dimensions, rows)
    emit("backfill.reprocessed", job_id=job.id, chunks=len(chunks))
    return None


async def _backfill_embeddings(
    store: JobStore, pipeline: Pipeline, router: Router, job: Job
) -> str | None:
    embedder = pipeline.embedder
    model, dims = embedder.model, embedder.vector_dimensions
    mock = {
        e.chunk_index for e in await store.embeddings(job.sha256, model, dims) if e.path == "mock"
    }
    if not mock:
        return None
    if not pipeline.can_spend(EMBED):
        return "embeddings were mock-served and the embedding provider has no key"
    todo = [c for c in await store.chunks(job.sha256) if c.index in mock]
    result = await embedder.embed([c.text for c in todo], router, correlation_id=job.id)
    rows = [
        EmbeddingRow(c.index, vector, path)
        for c, vector, path in zip(todo, result.vectors, result.paths, strict=True)
    ]
    await store.put_embeddings(job.sha256, model, dims, rows)
    if result.degraded:
        return "the embedding provider still served mocks"
    return None


__all__ = [
    "BackfillReport",
    "Worker",
    "WorkerStats",
    "backfill",
    "install_signal_handlers",
    "remove_signal_handlers",
]
