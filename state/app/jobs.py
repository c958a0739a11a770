"""`breakwater ingest`, `worker`, `backfill` and `costs`, on the job store: SQLite or PostgreSQL.

`--db` or BREAKWATER_DB chooses the store (`common.database_location`); the
budget ledger is that store's `ledger()`, so spend is shared by every
process on the same database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from state import JobState, JobStore
from state.app.common import (
    Progress,
    announce,
    database_location,
    ingest_file,
    mime_type,
    spend_lines,
    summary,
    work_until_done,
)
from state.pipeline.backfill import backfill
from state.pipeline.wiring import EMBED, PARSE, Pipeline
from state.pipeline.worker import Worker, install_signal_handlers, remove_signal_handlers
from state.store.open import open_store

DEFAULT_LEASE_S: Final = 60.0
"""`breakwater worker --lease-s`: the `Worker` default."""

Body = Callable[[JobStore, Pipeline], Awaitable[int]]


async def _with_pipeline(
    db: Path | str, environ: Mapping[str, str], out: TextIO, body: Body, *, banner: bool = True
) -> int:
    """Open the store at `db`, build the pipeline over its ledger, announce, run `body`,
    close both."""
    async with await open_store(db) as store:
        pipeline = Pipeline.from_env(environ, ledger=store.ledger())
        try:
            if banner:
                announce(pipeline, db, out)
            return await body(store, pipeline)
        finally:
            await pipeline.close()


def _owner(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


def run_ingest(
    paths: Sequence[str],
    *,
    db: str | None,
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    concurrency: int = 4,
    lease_s: float = DEFAULT_LEASE_S,
) -> int:
    """Upload `paths` as jobs, work them to the end with a progress bar, print the summary.

    Returns 0, or 1 when a job failed, or 2 when a file cannot be read.
    """
    files = [Path(p) for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"breakwater ingest: not a readable file: {', '.join(missing)}", file=err)
        return 2
    where = database_location(db, environ)

    async def body(store: JobStore, pipeline: Pipeline) -> int:
        ids = list(dict.fromkeys([await ingest_file(store, f, mime_type(f)) for f in files]))
        print(f"{len(ids)} job(s) for {len(files)} file(s); identical files share a job", file=out)
        worker = Worker(
            store, pipeline, owner=_owner("ingest"), concurrency=concurrency, lease_s=lease_s
        )
        progress = Progress(store, pipeline, total=len(ids), out=out)
        drawing = asyncio.get_running_loop().create_task(progress.run())
        try:
            await work_until_done(worker, ids)
            await progress.draw()
        finally:
            drawing.cancel()
            progress.finish()
        print(file=out)
        await summary(store, pipeline, ids, out)
        jobs = [await store.get_job(job_id) for job_id in ids]
        failed = [job for job in jobs if job is not None and job.state is JobState.FAILED]
        for job in failed:
            print(f"  failed: {job.filename}: {job.failure_reason}", file=out)
        return 1 if failed else 0

    return asyncio.run(_with_pipeline(where, environ, out, body))


def run_worker(
    *,
    db: str | None,
    environ: Mapping[str, str],
    out: TextIO,
    concurrency: int,
    lease_s: float = DEFAULT_LEASE_S,
) -> int:
    """Work the database's jobs until SIGINT or SIGTERM, then stop gracefully.

    A job's lease lasts `lease_s` unrenewed, so the jobs of a worker that died
    are taken again by another after at most that long.
    """
    where = database_location(db, environ)

    async def body(store: JobStore, pipeline: Pipeline) -> int:
        worker = Worker(
            store, pipeline, owner=_owner("worker"), concurrency=concurrency, lease_s=lease_s
        )
        stop = asyncio.Event()
        install_signal_handlers(stop)
        print(f"Worker {worker.owner} running (concurrency {concurrency}); Ctrl-C stops.", file=out)
        out.flush()
        try:
            await worker.run(stop)
        finally:
            remove_signal_handlers()
        stats = worker.stats
        print(
            f"Worker stopped: {stats.completed} completed, {stats.waited} waits, "
            f"{stats.failed} failed, {stats.steps} steps",
            file=out,
        )
        return 0

    return asyncio.run(_with_pipeline(where, environ, out, body))


def run_backfill(*, db: str | None, environ: Mapping[str, str], out: TextIO) -> int:
    """Redo the mock-served steps of degraded jobs with the real providers (keys needed)."""
    where = database_location(db, environ)

    async def body(store: JobStore, pipeline: Pipeline) -> int:
        before = await store.degraded_jobs()
        print(f"Degraded jobs: {len(before)}", file=out)
        report = await backfill(store, pipeline)
        print(f"Backfill: {len(report.repaired)} made whole", file=out)
        for job_id, why in report.still_degraded.items():
            print(f"  still degraded: {job_id}: {why}", file=out)
        return 0

    return asyncio.run(_with_pipeline(where, environ, out, body))


async def _costs(pipeline: Pipeline) -> list[dict[str, Any]]:
    rows = []
    for capability in (PARSE, EMBED):
        guard = pipeline.guard(capability)
        if guard.budget is None:
            continue
        limits = guard.budget.limits
        for period in ("day", "hour"):
            usd, requests = await guard.budget.spent(period)
            limit_usd, limit_requests = limits.of(period)
            rows.append(
                {
                    "provider": guard.name,
                    "period": period,
                    "cost_usd": round(usd, 9),
                    "requests": requests,
                    "limit_usd": limit_usd,
                    "limit_requests": limit_requests,
                }
            )
    return rows


COST_COLUMNS = ("provider", "period", "cost_usd", "requests", "limit_usd", "limit_requests")


def run_costs(
    *, db: str | None, environ: Mapping[str, str], out: TextIO, export: str | None
) -> int:
    """Spend this UTC day and hour per provider, from the budget ledger in the database.

    The ledger keeps totals per period; the per-hour breakdown of tokens and
    errors (`GET /costs` on `breakwater serve`) lives in the serving process only.
    """
    where = database_location(db, environ)

    async def body(_store: JobStore, pipeline: Pipeline) -> int:
        rows = await _costs(pipeline)
        if export == "json":
            out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif export == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, COST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            out.write(buffer.getvalue())
        else:
            announce(pipeline, where, out)
            print("Spend (from the budget ledger in the database):", file=out)
            for line in await spend_lines(pipeline):
                print(line, file=out)
        return 0

    return asyncio.run(_with_pipeline(where, environ, out, body, banner=False))
