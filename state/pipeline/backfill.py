"""The backfill: redo in REAL mode what a mock served, once a provider is healthy or keyed.

Degraded jobs completed with mock output (HYBRID fallbacks, or a provider
without a key). `backfill` walks them with routers in REAL mode over the
pipeline's own guards and clients, so it spends only within the same
budgets and never serves a mock in place of a real answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from providers.llamaparse.client import ParsedDocument
from resilience import ProviderError, Rejected, Router, ServiceMode, correlation
from resilience.clock import wall_time
from resilience.events import emit
from state.machine import Job
from state.pipeline.chunking import chunk
from state.pipeline.steps import MissingInput, any_mock, embed_rows, route_parse
from state.pipeline.wiring import EMBED, PARSE, Pipeline
from state.store.protocol import JobStore


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
) -> BackfillReport:
    """Redo the mock-served steps of degraded complete jobs in REAL mode, then clear `degraded`.

    Only a provider with a key is called. A parse served by the mock is
    redone. If the real text differs from the mock's, the old chunks and
    vectors describe the wrong text: the real text is chunked and embedded
    afresh and swapped in at once (`JobStore.replace_outputs`), or, if any
    piece came back mock, nothing is written. Embeddings whose stored path
    is mock are re-embedded; real ones replace them. A job whose every step
    is real then has `degraded` cleared, with an audit row. Errors leave the
    job as it was and are reported. Each job's calls, log lines and audit row
    carry its own correlation id.
    """
    report = BackfillReport()
    routers = pipeline.routers_for(ServiceMode.REAL)
    embedder = pipeline.embedder
    model, dims = embedder.model, embedder.vector_dimensions
    for job in await store.degraded_jobs():
        with correlation.bound(job.correlation_id):
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
                correlation_id=job.correlation_id,
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
    routed = await route_parse(store, pipeline, routers[PARSE], job)
    if isinstance(routed, MissingInput):
        return str(routed)
    if routed.path != "real":
        return "the parse provider still served the mock"
    parsed = routed.value
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
    rows = await embed_rows(embedder, router, chunks, job)
    if any_mock(rows):
        return "the embedding provider still served mocks for the re-chunked text"
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
    rows = await embed_rows(embedder, router, todo, job)
    await store.put_embeddings(job.sha256, model, dims, rows)
    if any_mock(rows):
        return "the embedding provider still served mocks"
    return None


__all__ = ["BackfillReport", "backfill"]
