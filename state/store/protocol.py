"""The `JobStore` protocol: jobs, their audit trail, leases, and what each step produced.

Both backends, SQLite and PostgreSQL (one SQL store, `state.store.sql`,
over each database's dialect), implement this protocol with the same
semantics:

* Jobs. `create_job` keeps the upload's bytes (keyed by sha256, so a worker
  can re-read them) and is idempotent by content: identical bytes return
  the existing job, whatever the file name. The job id is
  `"job-" + sha256[:32]`: derived, so it is the same in every process and on
  every retry without a coordinator, and 128 bits of hash make a clash
  between two documents vanishingly unlikely.
* Transitions are a compare-and-set on (state, version): `transition` raises
  `StaleJob` if either moved, or if the caller no longer holds the lease,
  and writes the job and its audit row in one transaction. `next_state`
  (the machine) decides legality; the store applies `JobChanges` and these
  rules, the same for every backend:

  | trigger   | lease                          | also                                          |
  |-----------|--------------------------------|-----------------------------------------------|
  | forward   | kept; cleared on `complete`    | `step_attempts` 0 and `last_error` None,      |
  |           |                                | unless given                                  |
  | `wait`    | cleared                        | needs `not_before` and `wait_reason`;         |
  |           |                                | `resume_to` := the step left                  |
  | `resume`  | kept                           | `resume_to` and `wait_reason` cleared         |
  | `fail`    | cleared                        | needs `failure_reason`; keeps `last_error`    |

  `degraded` only ever rises through a transition: once a mock served a
  step, the job says so until `clear_degraded` (the backfill, after
  redoing that step for real) lowers it, with its own audit row.
* Leases. `lease` hands out jobs that are not terminal, whose `not_before`
  has come and whose lease is free or expired; it sets the owner and expiry
  atomically and counts the pick-up in `step_attempts` (not for waiting
  jobs: their next move is `resume`, not work; nor for a job its worker
  parked on a remote parse, `record_remote_parse`: the lease that wakes it is
  expected, not a worker that died in the step). A lease is live while
  `now < lease_expires_at`; once it lapses the owner can neither commit
  nor renew, even if nobody else has taken the job, because somebody may
  have taken and released it meanwhile. `owner=None` transitions are for
  operators and need the job unleased.
* Time is passed in, never read: `now` is epoch seconds from
  `resilience.clock.wall_time()` (which follows virtual time in tests), so
  leases work across processes and restarts. Audit rows and job stamps are
  ISO-8601 UTC (`resilience.clock.iso_utc`).
* Content is idempotent. Chunks are keyed by (sha256, index) and the first
  write wins, so a re-run cannot leave embeddings that describe other text.
  Embeddings are keyed by (sha256, chunk index, model, dimensions) and
  upserted: a real vector replaces a mock one (backfill), a mock never
  replaces a real one. Parse results follow the same real-over-mock rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypedDict, Unpack

from providers.llamaparse.client import ParsedDocument
from resilience.router import Path as ServedBy
from state.machine import Job, JobState, Trigger, WaitReason
from state.store.remote import RemoteParseStore


class StaleJob(Exception):
    """A compare-and-set lost: the job moved on, or the caller's lease is gone.

    The caller's work is not lost on the job (the winner's is recorded);
    re-read the job and decide again, or drop it.
    """

    def __init__(self, job_id: str, detail: str) -> None:
        super().__init__(f"job {job_id}: {detail}")
        self.job_id = job_id


class JobNotFound(LookupError):
    """No job has this id."""


class NotStored(LookupError):
    """A row names a document or chunk the store does not have; store that first."""


def served_by(value: object) -> ServedBy:
    """Check that `value` names a path, "real" or "mock"."""
    if value == "real":
        return "real"
    if value == "mock":
        return "mock"
    raise ValueError(f"a path is 'real' or 'mock', not {value!r}")


class JobChanges(TypedDict, total=False):
    """Fields a transition may set besides the state. See the module's table."""

    not_before: float
    wait_reason: WaitReason
    failure_reason: str
    last_error: str | None
    degraded: bool
    step_attempts: int


class Upload(NamedTuple):
    """What `create_job` returns: the job, and False when identical content already had one."""

    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One audit row: a job entering `dest` from `source` (None when it was created)."""

    job_id: str
    version: int
    source: JobState | None
    dest: JobState
    trigger: str
    """A `Trigger` value, or "create" for the row written by `create_job`."""
    reason: str
    correlation_id: str | None
    at: str
    """ISO-8601 UTC."""


class ChunkText(Protocol):
    """What `put_chunks` needs of a chunk; `state.pipeline.chunking.Chunk` is one."""

    @property
    def index(self) -> int:
        """The chunk's position in its document, from 0."""
        ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as the store gives it back: its index and the text that was embedded."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Embedding:
    """A chunk's vector for one (model, dimensions), and which path produced it."""

    chunk_index: int
    vector: list[float]
    path: ServedBy


class EmbeddingRow(NamedTuple):
    """An embedding to store: (chunk index, vector, "real" or "mock")."""

    chunk_index: int
    vector: Sequence[float]
    path: ServedBy


class StoredParse(NamedTuple):
    """A stored parse result and which path produced it. Its `cost_usd` is 0: it is paid for."""

    parsed: ParsedDocument
    path: ServedBy


class JobStore(RemoteParseStore, Protocol):
    """Durable job state for the pipeline. Every method is atomic."""

    async def create_job(
        self,
        content: bytes,
        *,
        filename: str,
        mime_type: str,
        now: float,
        correlation_id: str | None = None,
    ) -> Upload:
        """Store the upload and open a job in `uploaded`, or return content's existing job.

        The job keeps `correlation_id` (else its own id) for every call and
        audit row of its life; an existing job keeps the one it was given."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def document(self, sha256: str) -> bytes | None:
        """The uploaded bytes with this sha256, if any job brought them."""
        ...

    async def history(self, job_id: str) -> list[JobEvent]:
        """The job's audit rows, oldest first."""
        ...

    async def lease(
        self, owner: str, *, now: float, lease_s: float, limit: int = 1, to_embed: bool = False
    ) -> list[Job]:
        """Take up to `limit` ready jobs for `owner` until `now + lease_s`, earliest first.

        `to_embed` takes only jobs whose next provider step is the embedding
        (`parsed`, `chunked`, `embedding`, or `waiting` to return to one of
        them), so a worker can gather many documents' chunks into shared
        requests (`state.pipeline.coalescer`).
        """
        ...

    async def renew_lease(self, job_id: str, owner: str, *, now: float, lease_s: float) -> Job:
        """Extend a live lease to `now + lease_s`; `StaleJob` if it is not live."""
        ...

    async def release_lease(self, job_id: str, owner: str) -> bool:
        """Give the job back at once; False if `owner` did not hold it."""
        ...

    async def transition(
        self,
        job_id: str,
        *,
        expected_state: JobState,
        expected_version: int,
        owner: str | None,
        trigger: Trigger,
        reason: str,
        correlation_id: str | None,
        now: float,
        **changes: Unpack[JobChanges],
    ) -> Job:
        """Compare-and-set the job through `trigger` and write its audit row.

        Raises `JobNotFound`, `StaleJob` (state, version or lease moved),
        `IllegalTransition`, or `ValueError` for changes the trigger does
        not allow. Nothing is written unless it returns.
        """
        ...

    async def put_parse(self, parsed: ParsedDocument, path: ServedBy) -> bool:
        """Store a document's parse result; True if it was written.

        A mock result never replaces a real one, and once the document has
        chunks its text never changes here (only `replace_outputs` does that).
        """
        ...

    async def get_parse(self, sha256: str) -> StoredParse | None: ...

    async def put_chunks(self, sha256: str, chunks: Sequence[ChunkText]) -> int:
        """Store chunks not stored yet; return how many were new."""
        ...

    async def chunks(self, sha256: str) -> list[StoredChunk]:
        """The document's chunks in index order."""
        ...

    async def put_embeddings(
        self, sha256: str, model: str, dimensions: int, rows: Iterable[EmbeddingRow]
    ) -> int:
        """Upsert vectors of stored chunks; return how many rows were inserted or replaced."""
        ...

    async def embeddings(self, sha256: str, model: str, dimensions: int) -> list[Embedding]:
        """The document's vectors for (model, dimensions) in chunk order."""
        ...

    async def replace_outputs(
        self,
        parsed: ParsedDocument,
        chunks: Sequence[ChunkText],
        model: str,
        dimensions: int,
        rows: Iterable[EmbeddingRow],
    ) -> None:
        """Replace a document's parse, chunks and vectors with real ones, all or nothing.

        The backfill's way to redo a mock-served parse whose real text differs:
        the old chunks describe the mock's text, so they and every vector of
        them (any model) go, and the real parse, its chunks and their vectors
        take their place in one transaction. Every row must be real.
        """
        ...

    async def jobs_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state; every state is present."""
        ...

    async def degraded_jobs(self) -> list[Job]:
        """Complete jobs some mock served: the backfill's work list, oldest first."""
        ...

    async def clear_degraded(
        self, job_id: str, *, reason: str, correlation_id: str | None, now: float
    ) -> Job:
        """Clear a complete job's `degraded` once backfill made every step real.

        The one way `degraded` falls. Writes an audit row (trigger
        "clear_degraded", complete -> complete) and bumps the version.
        Raises `JobNotFound`, or `StaleJob` unless the job is complete and
        degraded.
        """
        ...

    async def row_counts(self) -> dict[str, int]:
        """Rows per table (documents, jobs, job_events, parses, chunks, embeddings)."""
        ...

    async def close(self) -> None: ...
