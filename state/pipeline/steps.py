"""The pipeline's steps: parse a job's document, chunk the parse, embed the chunks.

Each step reads its input from the store, writes its output there, and
returns what the worker records on the job: `Done` (the trigger, the audit
reason, whether a mock served it) or `MissingInput`. The worker makes the
move under its lease and decides what a raised error means; the steps know
nothing of leases, waits or metrics. `route_parse` and `embed_rows` are the
routed parts, shared with the backfill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from providers.llamaparse.client import Document, ParsedDocument
from providers.openai.client import Embeddings, OpenAIEmbeddings
from resilience import Routed, Router
from state.machine import Job, Trigger
from state.pipeline.chunking import chunk
from state.pipeline.coalescer import EmbedCoalescer
from state.pipeline.remote import Parked, RemoteParses
from state.pipeline.wiring import PARSE, Pipeline
from state.store.protocol import ChunkText, EmbeddingRow, JobStore


@dataclass(frozen=True, slots=True)
class Done:
    """A step's output is stored: `trigger` records it on the job, `reason` in the audit row."""

    trigger: Trigger
    reason: str
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class MissingInput:
    """The store lacks what a step reads: an internal error, not a provider's.

    The store wrote the input before the job could reach the step, so it
    was lost or deleted; no retry brings it back.
    """

    what: Literal["document", "parse"]
    sha256: str

    def __str__(self) -> str:
        return f"no stored {self.what} for {self.sha256}"


async def job_document(store: JobStore, job: Job) -> Document | None:
    """`job`'s stored document, if the store still has it."""
    content = await store.document(job.sha256)
    return None if content is None else Document(job.filename, content, job.mime_type)


def _parsed(path: str, reason: str | None) -> Done:
    return Done(Trigger.FINISH_PARSE, f"parsed ({path}, {reason})", degraded=path == "mock")


async def route_parse(
    store: JobStore, pipeline: Pipeline, router: Router, job: Job
) -> Routed[ParsedDocument] | MissingInput:
    """Parse `job`'s stored document through `router`, under the job's correlation id,
    reserving what the pipeline's parser would charge for it."""
    document = await job_document(store, job)
    if document is None:
        return MissingInput("document", job.sha256)
    return await router.call(
        PARSE,
        document,
        cost=pipeline.parse_estimate_usd(document),
        correlation_id=job.correlation_id,
    )


async def embed_rows(
    embedder: OpenAIEmbeddings, router: Router, chunks: Sequence[ChunkText], job: Job
) -> list[EmbeddingRow]:
    """Embed `chunks` through `router`: one row per chunk, each marked real or mock."""
    result = await embedder.embed(
        [c.text for c in chunks], router, correlation_id=job.correlation_id
    )
    return rows_of(chunks, result)


def rows_of(chunks: Sequence[ChunkText], result: Embeddings) -> list[EmbeddingRow]:
    """The rows to store for `chunks`, given their vectors in order."""
    return [
        EmbeddingRow(c.index, vector, path)
        for c, vector, path in zip(chunks, result.vectors, result.paths, strict=True)
    ]


def any_mock(rows: Sequence[EmbeddingRow]) -> bool:
    return any(row.path == "mock" for row in rows)


class Steps:
    """The three steps over one store, routed by `pipeline` in its configured mode.

    Embeddings go through `coalescer`, which shares requests with other jobs'.
    Parses are remote jobs through `remote` when given (see `parse`).
    """

    def __init__(
        self,
        store: JobStore,
        pipeline: Pipeline,
        coalescer: EmbedCoalescer,
        remote: RemoteParses | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.coalescer = coalescer
        self.remote = remote

    async def parse(self, job: Job) -> Done | MissingInput | Parked:
        """Parse the document, unless a parse of the same bytes is stored already.

        With a LlamaParse client (`remote`) the parse is a remote job: the
        step submits it and returns `Parked`, and a poller stores the result
        (`state.pipeline.remote`); the job comes back here to find it stored.
        Without one, the step waits for the whole parse.
        """
        stored = await self.store.get_parse(job.sha256)
        if stored is not None:
            return _parsed(stored.path, "stored")
        if self.remote is None:
            routed = await route_parse(self.store, self.pipeline, self.pipeline.router(PARSE), job)
            if isinstance(routed, MissingInput):
                return routed
            await self.store.put_parse(routed.value, routed.path)
            return _parsed(routed.path, routed.reason)
        document = await job_document(self.store, job)
        if document is None:
            return MissingInput("document", job.sha256)
        outcome = await self.remote.step(job, document)
        if outcome is None:
            return await self.parse(job)  # stored since we looked: take it
        if isinstance(outcome, Parked):
            return outcome
        await self.store.put_parse(outcome.parsed, "mock")
        return _parsed("mock", outcome.reason)

    async def chunk(self, job: Job) -> Done | MissingInput:
        stored = await self.store.get_parse(job.sha256)
        if stored is None:
            return MissingInput("parse", job.sha256)
        chunks = chunk(stored.parsed.markdown, self.pipeline.chunking)
        await self.store.put_chunks(job.sha256, chunks)
        return Done(Trigger.CHUNK, f"{len(chunks)} chunks")

    async def embed(self, job: Job) -> Done:
        """Embed the chunks not embedded yet with this model, so a retried step resumes."""
        embedder = self.pipeline.embedder
        model, dims = embedder.model, embedder.vector_dimensions
        chunks = await self.store.chunks(job.sha256)
        done = {e.chunk_index for e in await self.store.embeddings(job.sha256, model, dims)}
        todo = [c for c in chunks if c.index not in done]
        result = await self.coalescer.embed(job, [c.text for c in todo])
        if todo:
            await self.store.put_embeddings(job.sha256, model, dims, rows_of(todo, result))
        stored = await self.store.embeddings(job.sha256, model, dims)
        mock = sum(1 for e in stored if e.path == "mock")
        return Done(
            Trigger.FINISH_EMBED, f"{len(stored)} embeddings, {mock} mock", degraded=mock > 0
        )
