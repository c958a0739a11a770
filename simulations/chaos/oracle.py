"""What the simulation checks, written from the issue's words rather than from our code.

The job edges here are the specification (uploaded -> parsing -> parsed ->
chunked -> embedding -> complete, with waiting and failed, and parsing ->
parsing when the job is let go while its parse runs remotely), not
`state.machine`'s table, so a bug in that table is caught, not copied.
`CheckedStore` is the real `SqliteJobStore` with four additions: before
each commit it reads the job and judges the lease itself, and records a
commit the store accepted under a lease that had lapsed; it records each
lease taken over from a process still running (a wall clock jump lapses
leases under their holders); it keeps every lease's history (`LeaseEvent`:
each grant, renewal and release, at its loop time, with its holder and
expiry), so who might call for a job when can be judged against what the
providers saw; and it keeps every budget ledger row the ledger's sweep
deletes, so the money ever charged can be summed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Final, TypeVar, Unpack

from resilience.clock import wall_time
from state.machine import Job, JobState, Trigger
from state.store.database import Database
from state.store.protocol import JobChanges
from state.store.remote import RemoteJob
from state.store.remote_sql import remote_from_row
from state.store.rows import job_from_row
from state.store.sqlite import SqliteJobStore, SqliteSession

S = JobState
T = TypeVar("T")
PIPELINE: Final = (S.UPLOADED, S.PARSING, S.PARSED, S.CHUNKED, S.EMBEDDING, S.COMPLETE)
STEPS: Final = frozenset(PIPELINE[:-1])

LEGAL: Final = frozenset(
    {(None, S.UPLOADED)}
    | set(pairwise(PIPELINE))
    | {(step, S.WAITING) for step in STEPS}
    | {(S.WAITING, step) for step in STEPS}
    | {(step, S.FAILED) for step in (*STEPS, S.WAITING)}
    | {(S.COMPLETE, S.COMPLETE)}  # clear_degraded, after a backfill
    | {(S.PARSING, S.PARSING)}  # submitted: let go while LlamaParse parses (issue 13)
)
"""Every (from, to) pair the issue allows."""


def edge_problem(source: str | None, dest: str, previous: str | None) -> str | None:
    """Why one audit row breaks the specification, or None."""
    src = None if source is None else S(source)
    if (src, S(dest)) not in LEGAL:
        return f"illegal edge {source} -> {dest}"
    if src != (None if previous is None else S(previous)):
        return f"the edge starts at {source} but the job was in {previous}"
    return None


_MOCK_STEP: Final = """reason LIKE 'parsed (mock%'
    OR (trigger = 'finish_embed' AND reason NOT LIKE '%, 0 mock')"""
"""Audit rows of a step a mock served (the worker's reasons say which path served)."""


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A change to a job's lease, as the store committed it."""

    at: float
    """Loop time of the commit."""
    job_id: str
    owner: str | None
    """Who holds the lease from now on; None: nobody (released, parked, waiting, ended)."""
    expires_at: float | None
    """Wall time the lease lapses at; None with no owner."""
    wall: float
    """The wall clock at the commit: which side of a clock jump at the same loop time."""
    renewal: bool = False


class ProcessKilled(Exception):
    """The process this store belonged to was killed; it can reach nothing any more."""


class CheckedStore(SqliteJobStore):
    """`SqliteJobStore`, recording commits it accepted under a lapsed lease.

    Each simulated process gets its own `sibling()` over the one database.
    Killing a process (`alive = False`) cuts its store off, as a SIGKILL
    would: the `finally` blocks a cancelled worker still runs (releasing its
    leases, say) fail instead of writing, so its leases must lapse.
    """

    def __init__(
        self,
        database: Database[SqliteSession],
        lapsed_commits: list[str] | None = None,
        taken_over: set[str] | None = None,
        leases: list[LeaseEvent] | None = None,
    ) -> None:
        self.alive = True
        super().__init__(database)
        self.lapsed_commits: list[str] = [] if lapsed_commits is None else lapsed_commits
        self.taken_over: set[str] = set() if taken_over is None else taken_over
        self.leases: list[LeaseEvent] = [] if leases is None else leases
        """Every lease change any sibling committed, in commit order."""
        """Jobs whose lease another owner took while its holder still ran (`running`)."""
        self.running: Callable[[str], bool] = lambda owner: False
        """Is the worker `owner` still running? (The world says.)"""

    @property
    def _db(self) -> Database[SqliteSession]:
        if not self.alive:
            raise ProcessKilled("this process was killed")
        return self._database

    @_db.setter
    def _db(self, database: Database[SqliteSession]) -> None:
        self._database = database

    def sibling(self) -> CheckedStore:
        """Another store over the same database, sharing the records of lapses."""
        sibling = CheckedStore(self._database, self.lapsed_commits, self.taken_over, self.leases)
        sibling.running = self.running
        return sibling

    async def lease(
        self, owner: str, *, now: float, lease_s: float, limit: int = 1, to_embed: bool = False
    ) -> list[Job]:
        async with self._db.session() as session:
            lapsed = await session.fetch(
                """SELECT id, lease_owner FROM jobs
                WHERE lease_owner IS NOT NULL AND lease_owner != ? AND lease_expires_at <= ?""",
                (owner, float(now)),
            )
        jobs = await super().lease(owner, now=now, lease_s=lease_s, limit=limit, to_embed=to_embed)
        holders = {str(job_id): str(holder) for job_id, holder in lapsed}
        self.taken_over.update(
            job.id for job in jobs if job.id in holders and self.running(holders[job.id])
        )
        for job in jobs:
            self._lease_changed(job.id, job.lease_owner, job.lease_expires_at)
        return jobs

    async def renew_lease(self, job_id: str, owner: str, *, now: float, lease_s: float) -> Job:
        job = await super().renew_lease(job_id, owner, now=now, lease_s=lease_s)
        self._lease_changed(job_id, job.lease_owner, job.lease_expires_at, renewal=True)
        return job

    async def release_lease(self, job_id: str, owner: str) -> bool:
        released = await super().release_lease(job_id, owner)
        if released:
            self._lease_changed(job_id, None, None)
        return released

    async def record_remote_parse(
        self, name: str, remote_id: str, *, owner: str, due_at: float, deadline: float, now: float
    ) -> Job:
        job = await super().record_remote_parse(
            name, remote_id, owner=owner, due_at=due_at, deadline=deadline, now=now
        )
        self._lease_changed(job.id, None, None)  # parked: unleased while LlamaParse parses
        return job

    def _lease_changed(
        self, job_id: str, owner: str | None, expires_at: float | None, *, renewal: bool = False
    ) -> None:
        at = asyncio.get_running_loop().time()
        self.leases.append(LeaseEvent(at, job_id, owner, expires_at, wall_time(), renewal))

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
        before = await self.get_job(job_id)
        lapsed = (
            owner is not None
            and before is not None
            and before.lease_owner == owner
            and (before.lease_expires_at is None or now >= before.lease_expires_at)
        )
        job = await super().transition(
            job_id,
            expected_state=expected_state,
            expected_version=expected_version,
            owner=owner,
            trigger=trigger,
            reason=reason,
            correlation_id=correlation_id,
            now=now,
            **changes,
        )
        if lapsed:
            self.lapsed_commits.append(f"{owner} committed {trigger} on {job_id} after its lease")
        if before is not None and before.lease_owner is not None and job.lease_owner is None:
            self._lease_changed(job_id, None, None)
        return job

    # -- what the checks read ------------------------------------------------

    async def all_jobs(self) -> list[Job]:
        async with self._db.session() as session:
            rows = await session.fetch("SELECT * FROM jobs ORDER BY id")
        return [job_from_row(row) for row in rows]

    async def leased_by(self, owner: str) -> list[str]:
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT id FROM jobs WHERE lease_owner = ? ORDER BY id", (owner,)
            )
        return [str(row[0]) for row in rows]

    async def events_since(self, seq: int) -> list[tuple[int, str, str | None, str]]:
        """Audit rows after `seq`, in order: (seq, job id, from, to)."""
        async with self._db.session() as session:
            rows = await session.fetch(
                "SELECT seq, job_id, source, dest FROM job_events WHERE seq > ? ORDER BY seq",
                (seq,),
            )
        return [
            (int(r[0]), str(r[1]), None if r[2] is None else str(r[2]), str(r[3])) for r in rows
        ]

    async def served_by_mock(self, sha256: str) -> bool:
        """Whether a mock produced this document's parse or any of its vectors."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                """SELECT EXISTS (SELECT 1 FROM parses WHERE sha256 = ? AND path = 'mock')
                OR EXISTS (SELECT 1 FROM embeddings WHERE sha256 = ? AND path = 'mock')""",
                (sha256, sha256),
            )
        return bool(row and row[0])

    async def budget_refusals(self) -> int:
        """Steps a budget refused: jobs sent to wait, or parses the mock served instead."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                "SELECT COUNT(*) FROM job_events WHERE reason LIKE '%budget%'"
            )
        return int(row[0]) if row else 0

    async def audit_rows(self) -> list[tuple[object, ...]]:
        """Every audit row, every column, in order."""
        async with self._db.session() as session:
            rows = await session.fetch("SELECT * FROM job_events ORDER BY seq")
        return [tuple(row) for row in rows]

    async def mock_steps(self, job_id: str) -> int:
        """The job's steps a mock served, by its audit rows."""
        async with self._db.session() as session:
            row = await session.fetch_one(
                f"SELECT COUNT(*) FROM job_events WHERE job_id = ? AND ({_MOCK_STEP})", (job_id,)
            )
        return int(row[0]) if row else 0

    async def remote_rows(self) -> list[RemoteJob]:
        """Every remote parse row, oldest first."""
        async with self._db.session() as session:
            rows = await session.fetch("SELECT * FROM remote_parses ORDER BY created_at, name")
        return [remote_from_row(row) for row in rows]

    async def remote_in_flight(self, owner: str, uploaded: list[str]) -> list[str]:
        """Names of the remote parses `owner` has in flight: intents of jobs it leases, rows
        its poller claimed, and live rows among `uploaded` (the uploads it made)."""
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT r.name, r.status, r.claimed_by, j.lease_owner FROM remote_parses r
                JOIN jobs j ON j.id = r.job_id WHERE r.status IN ('intent', 'live')
                ORDER BY r.name"""
            )
        return [
            str(name)
            for name, status, claimed_by, lease_owner in rows
            if (status == "intent" and lease_owner == owner)
            or (status == "live" and (claimed_by == owner or name in uploaded))
        ]

    async def keep_swept_ledger(self) -> None:
        """From now on, keep each budget ledger row the sweep deletes in `swept_ledger`."""
        async with self._db.session() as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS swept_ledger (key TEXT NOT NULL, usd REAL NOT NULL)"
            )
            await session.execute(
                """CREATE TRIGGER IF NOT EXISTS keep_swept BEFORE DELETE ON budget_ledger
                BEGIN INSERT INTO swept_ledger (key, usd) VALUES (OLD.key, OLD.usd); END"""
            )

    async def remote_accounts(
        self, scope: str, meanwhile: Callable[[], T]
    ) -> tuple[list[RemoteJob], float, T]:
        """The remote parse rows, every dollar the budget `scope` ever charged (its day
        keys, swept ones too), and what `meanwhile()` says, all at one moment: nothing
        writes to the database while this holds it."""
        pattern = f"{scope}:day:%"
        async with self._db.session() as session:
            rows = await session.fetch("SELECT * FROM remote_parses ORDER BY created_at, name")
            charged = await session.fetch_one(
                """SELECT (SELECT COALESCE(SUM(usd), 0) FROM budget_ledger WHERE key LIKE ?)
                + (SELECT COALESCE(SUM(usd), 0) FROM swept_ledger WHERE key LIKE ?)""",
                (pattern, pattern),
            )
            seen = meanwhile()
        usd = float(charged[0]) if charged else 0.0
        return [remote_from_row(row) for row in rows], usd, seen

    async def complete_parses(self) -> list[tuple[object, ...]]:
        """Per complete job: (id, version, sha256, file name, media type, degraded, markdown,
        pages, failed pages as JSON, parser job id, path), the parse's columns None when
        there is no parse."""
        async with self._db.session() as session:
            rows = await session.fetch(
                """SELECT j.id, j.version, j.sha256, j.filename, j.mime_type, j.degraded,
                p.markdown, p.pages, p.failed_pages, p.parser_job_id, p.path
                FROM jobs j LEFT JOIN parses p ON p.sha256 = j.sha256
                WHERE j.state = 'complete' ORDER BY j.id"""
            )
        return [tuple(row) for row in rows]

    async def vectors_of(
        self, documents: list[str], model: str, dimensions: int
    ) -> list[tuple[str, int, str, bytes, str]]:
        """The stored vectors of (`model`, `dimensions`) of these documents (by sha256):
        (sha256, chunk index, chunk text, float32 bytes, path)."""
        found: list[tuple[str, int, str, bytes, str]] = []
        for start in range(0, len(documents), 500):
            part = documents[start : start + 500]
            async with self._db.session() as session:
                rows = await session.fetch(
                    f"""SELECT e.sha256, e.chunk_index, c.text, e.vector, e.path
                    FROM embeddings e JOIN chunks c
                    ON c.sha256 = e.sha256 AND c.chunk_index = e.chunk_index
                    WHERE e.model = ? AND e.dimensions = ?
                    AND e.sha256 IN ({", ".join("?" * len(part))})""",
                    (model, dimensions, *part),
                )
            found += [
                (str(sha), int(index), str(text), bytes(vector), str(path))
                for sha, index, text, vector, path in rows
            ]
        return found

    async def mock_served_count(self) -> int:
        """Parses and vectors a mock produced, ever (backfill replaces vectors, not this)."""
        async with self._db.session() as session:
            row = await session.fetch_one(f"SELECT COUNT(*) FROM job_events WHERE {_MOCK_STEP}")
        return int(row[0]) if row else 0


__all__ = ["LEGAL", "PIPELINE", "CheckedStore", "LeaseEvent", "edge_problem"]
