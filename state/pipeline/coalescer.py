"""The embedding coalescer: one worker's embed steps share requests across documents.

Why: OpenAI limits requests per minute as well as tokens, and a request takes
up to 2,048 inputs and 300,000 tokens. Embedding each small document on its
own spends a request on a few chunks; 200 of them cost 200 requests where one
would do.

How it fits the worker (`state.pipeline.worker`):

* The worker leases, besides its `concurrency` slots, up to `embed_jobs` jobs
  whose next provider step is the embedding (`JobStore.lease(to_embed=True)`:
  parsed, chunked, embedding, or waiting to return to one of these), and tells
  the coalescer to `expect` every held job of that kind, from either lease.
* Each job walks as always, under its own lease, heartbeat and correlation
  id; its embed step hands its chunks' texts to `embed` and awaits them.
* Expected jobs' submissions form a round, sent once no expected job is still
  on its way: jobs leased together go out together, however long the store
  takes to hand each its chunks. No linger on the clock: a timer would either
  wait for nobody or cut a round short when the store is slow, and the lease
  already says who is coming. A job that leaves without embedding (failed,
  stale, stopping, nothing left to embed) is `forget`-ed, as the worker does
  whenever it lets go of a job, so a round never waits for it.
* A job that was not expected (it reached the embedding in the same walk as
  its parse) is sent at once on its own, in its own task, as before: waiting
  could only hold it.
* A round is one `OpenAIEmbeddings.embed_groups`: every job's texts planned as
  one list into full requests, each routed, reserved, retried and settled as
  one call, as before. A request carries the correlation id of the job its
  first input belongs to and logs every job's id (`openai.shared_request`);
  each job's audit rows keep its own id.
* Each job gets its own vectors and paths (real or mock, per input), or the
  error of a request that held any of its chunks; its embed step then stores
  or raises as it did alone, so the worker's wait, retry and fail policy, and
  HYBRID's fallback, apply per job. Vectors are stored under the job's own
  document and upserted, so each lands on its own job, once, whoever retries.

A round runs in a task of its own, so one job cancelled does not cancel the
others' requests; if that task is cancelled, its jobs' waits are cancelled
too rather than left hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from providers.openai.client import Embeddings, Group
from state.machine import Job
from state.pipeline.wiring import EMBED, Pipeline


@dataclass(slots=True)
class _Entry:
    group: Group
    answer: asyncio.Future[Embeddings | Exception] = field(repr=False)


class EmbedCoalescer:
    """Gathers held jobs' texts into shared embedding requests; one per worker."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.rounds = 0
        """Rounds of expected jobs sent (a job sent alone is not one)."""
        self._expected: set[str] = set()
        self._pending: list[_Entry] = []
        self._sending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"EmbedCoalescer(expected={len(self._expected)}, pending={len(self._pending)}, "
            f"rounds={self.rounds})"
        )

    def expect(self, job_id: str) -> None:
        """A held job will reach `embed` (or `forget`); the round waits for it."""
        self._expected.add(job_id)

    def forget(self, job_id: str) -> None:
        """The job will not submit (any more); a round waiting only for it goes."""
        if job_id in self._expected:
            self._expected.discard(job_id)
            self._send_round()

    async def embed(self, job: Job, texts: Sequence[str]) -> Embeddings:
        """`texts`' vectors for `job`, maybe sent with other jobs'; raises what its requests did."""
        expected = job.id in self._expected
        self._expected.discard(job.id)
        if not texts:
            self._send_round()
            return Embeddings([], [], [])
        group = Group(job.correlation_id, texts)
        if not expected:  # nobody to wait for: alone and in its own task, as before
            [answer] = await self._embed_groups([group])
        else:
            answer = await self._in_round(group)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _in_round(self, group: Group) -> Embeddings | Exception:
        entry = _Entry(group, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        self._send_round()
        try:
            return await entry.answer
        except asyncio.CancelledError:
            if entry in self._pending:  # not sent yet: nobody pays for it
                self._pending.remove(entry)
            raise

    def _send_round(self) -> None:
        if self._pending and not self._expected:
            entries, self._pending = self._pending, []
            self.rounds += 1
            task = asyncio.get_running_loop().create_task(self._send(entries))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, entries: list[_Entry]) -> None:
        answers: Sequence[Embeddings | Exception]
        try:
            answers = await self._embed_groups([entry.group for entry in entries])
        except asyncio.CancelledError:
            for entry in entries:
                entry.answer.cancel()
            raise
        except Exception as exc:  # a planning error or a bug: each job handles it as its own
            answers = [exc] * len(entries)
        for entry, answer in zip(entries, answers, strict=True):
            if not entry.answer.done():  # its job was cancelled meanwhile
                entry.answer.set_result(answer)

    async def _embed_groups(self, groups: list[Group]) -> list[Embeddings | Exception]:
        return await self.pipeline.embedder.embed_groups(groups, self.pipeline.router(EMBED))


__all__ = ["EmbedCoalescer"]
