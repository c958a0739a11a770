"""`breakwater demo`: the real pipeline rides out an embeddings outage, then backfills.

Everything runs on this machine, with no keys and no network: the OpenAI and
LlamaParse emulators are served on 127.0.0.1, and the pipeline's real
clients reach them over HTTP with throwaway demo keys the emulators accept.
The demo builds its own environment mapping (it never reads the user's keys),
so no money can be spent.

The script, in HYBRID mode, into a SQLite file recreated on every run:

1. healthy: the first sample is parsed, chunked and embedded for real;
2. outage: the emulator answers 503 to every embeddings request; the next
   sample's embeddings fail until the breaker trips (closed -> open) and the
   mock serves them; after the cooldown the third sample's embeddings are a
   probe (open -> half_open) that fails (half_open -> open), mock again;
3. heal: the outage ends; after the (doubled) cooldown the backfill's first
   call is a probe that succeeds (half_open -> closed), and it re-embeds the
   mock-served chunks for real, making the degraded jobs whole.

While it runs it redraws a progress bar and the live breaker states; at the
end it prints jobs by state, the degraded count, real versus mock results,
the spend against the daily budgets, the breaker trips from the log, and the
log's path.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TextIO

from providers import LLAMAPARSE, OPENAI
from resilience.events import close_logging, configure_logging, emit
from resilience.logreport import analyze, render
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, OpenAIPlan, start
from simulations.samples import SAMPLES
from state import SqliteJobStore
from state.app.common import (
    Progress,
    budget_banner,
    ingest_file,
    summary,
    work_until_done,
)
from state.pipeline.backfill import backfill
from state.pipeline.wiring import EMBED, Pipeline
from state.pipeline.worker import Worker

DEMO_LOG: Final = "breakwater-demo.log.jsonl"
"""Where the demo logs when neither --log nor BREAKWATER_LOG says otherwise."""
DEMO_DB: Final = "breakwater-demo.sqlite3"
"""The demo's SQLite file when --db is not given; recreated on every run."""

COOLDOWN_S: Final = 1.0
"""The embeddings breaker's first cooldown; a failed probe doubles it."""
DAILY_BUDGET_USD: Final = {OPENAI: 0.05, LLAMAPARSE: 0.25}
"""The demo's daily budgets, printed at start (nothing is spent: the emulators are local)."""

_FAST_PARSE: Final = LlamaParsePlan(parse_time_s=(0.05, 0.05))
HEALTHY: Final = FaultPlan(llamaparse=_FAST_PARSE)
OUTAGE: Final = FaultPlan(llamaparse=_FAST_PARSE, openai=OpenAIPlan(outages=((0.0, 3600.0),)))
"""Every embeddings request answered 503 from when the plan is applied."""


def demo_environment(openai_base_url: str, llamaparse_base_url: str) -> dict[str, str]:
    """The variables the demo's pipeline is built from: never the user's own keys."""
    return {
        "SERVICE_MODE": "hybrid",
        "OPENAI_API_KEY": "sk-breakwater-demo",
        "OPENAI_BASE_URL": openai_base_url,
        "LLAMA_CLOUD_API_KEY": "llx-breakwater-demo",
        "LLAMA_CLOUD_BASE_URL": llamaparse_base_url,
        # Two failed tries trip the breaker; short cooldowns keep the demo brief.
        "BREAKWATER_OPENAI_MAX_ATTEMPTS": "2",
        "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "2",
        "BREAKWATER_OPENAI_COOLDOWN_S": f"{COOLDOWN_S:g}",
        "BREAKWATER_OPENAI_COOLDOWN_MAX_S": f"{4 * COOLDOWN_S:g}",
        "BREAKWATER_OPENAI_DAILY_BUDGET_USD": f"{DAILY_BUDGET_USD[OPENAI]:g}",
        "BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD": f"{DAILY_BUDGET_USD[LLAMAPARSE]:g}",
    }


def _calls_line(emulator: Emulator) -> str:
    """What the emulated APIs were asked, so far: real calls, answered and refused."""
    stats = emulator.stats()
    embeds = stats.count("POST /v1/embeddings")
    refused = embeds - stats.count("POST /v1/embeddings", 200)
    uploads = stats.count("POST /api/v1/parsing/upload")
    return (
        f"Real calls (to the emulators): {embeds} embeddings requests ({refused} refused "
        f"during the outage), {uploads} LlamaParse uploads"
    )


def _read_from(path: str, offset: int) -> list[str]:
    with Path(path).open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", errors="replace").splitlines()


async def _run(db: Path, log_path: str, out: TextIO) -> int:
    emulator = Emulator(seed=7, faults=HEALTHY)
    running = await start(emulator, "127.0.0.1", 0)
    env = demo_environment(running.openai_base_url, running.llamaparse_base_url)
    pipeline = Pipeline.from_env(env)
    try:
        async with await SqliteJobStore.open(db) as store:
            print(budget_banner(pipeline), file=out)
            print(
                f"Emulators on {running.base_url} with throwaway demo keys: "
                "no real provider is called and no money can be spent.",
                file=out,
            )
            print(f"Mode: {pipeline.mode.value}; database: {db}; log: {log_path}", file=out)
            print(
                f"Script: ingest {', '.join(s.name for s in SAMPLES)}; the embeddings API "
                f"goes down after the first and comes back after the last "
                f"(breaker: 2 failures trip it, {COOLDOWN_S:g}s cooldown).",
                file=out,
            )
            print(file=out)
            worker = Worker(store, pipeline, owner="demo", concurrency=1, lease_s=30.0)
            progress = Progress(store, pipeline, total=len(SAMPLES), out=out)
            drawing = asyncio.get_running_loop().create_task(progress.run())
            ids: list[str] = []
            emit("demo.started", db=str(db))
            try:
                first, *rest = SAMPLES
                ids.append(await ingest_file(store, first.path, first.mime_type))
                await work_until_done(worker, ids, timeout_s=60)
                emulator.set_faults(OUTAGE)
                emit("demo.outage", provider=OPENAI, phase="start")
                for number, sample in enumerate(rest):
                    if number:  # let the cooldown pass, so this document's embeddings probe
                        await asyncio.sleep(COOLDOWN_S + 0.2)
                    ids.append(await ingest_file(store, sample.path, sample.mime_type))
                    await work_until_done(worker, ids, timeout_s=60)
                emulator.set_faults(HEALTHY)
                emit("demo.outage", provider=OPENAI, phase="end")
                await progress.draw()
            finally:
                drawing.cancel()
                progress.finish()
            print(file=out)
            print("Summary after ingest", file=out)
            await summary(store, pipeline, ids, out)
            print(_calls_line(emulator), file=out)

            breaker = pipeline.guard(EMBED).breaker
            wait_s = breaker.retry_after_s() if breaker.state == "open" else 0.0
            print(file=out)
            print(
                f"The embeddings API is back. Backfilling degraded jobs in REAL mode "
                f"(after the breaker's {wait_s:.1f}s cooldown)...",
                file=out,
            )
            await asyncio.sleep(wait_s + 0.1)
            report = await backfill(store, pipeline)
            emit("demo.finished", repaired=len(report.repaired))
            print(f"Backfill: {len(report.repaired)} made whole", file=out)
            for job_id, why in report.still_degraded.items():
                print(f"  still degraded: {job_id}: {why}", file=out)
            print(file=out)
            print("Summary after backfill", file=out)
            await summary(store, pipeline, ids, out)
            print(_calls_line(emulator), file=out)
    finally:
        await pipeline.close()
        await running.close()
    return 0


def run_demo(
    *, log: str | None, db: str | None, environ: Mapping[str, str], out: TextIO | None = None
) -> int:
    """Run the demo; the log is appended to, the database recreated. Returns the exit code."""
    stream = out or sys.stdout
    log_path: str = log or environ.get("BREAKWATER_LOG") or DEMO_LOG
    db_path = Path(db or DEMO_DB)
    # Logs are appended to, so the report reads only this run's lines.
    offset = Path(log_path).stat().st_size if log_path != "-" and Path(log_path).is_file() else 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    configure_logging(log_path)
    try:
        code = asyncio.run(_run(db_path, log_path, stream))
    finally:
        close_logging()
    print(file=stream)
    if log_path == "-":
        print("Events went to standard error, so there is no log file to report on.", file=stream)
        return code
    report = analyze(_read_from(log_path, offset))
    trips = {name: p.trips for name, p in report.providers.items()}
    shown = ", ".join(f"{name} {n}" for name, n in sorted(trips.items())) or "none"
    print(f"Breaker trips: {shown}", file=stream)
    print(f"Breaker log: {log_path}  (read it with: breakwater logs {log_path})", file=stream)
    print(file=stream)
    print(render(report), end="", file=stream)
    return code


__all__ = ["DEMO_DB", "DEMO_LOG", "demo_environment", "run_demo"]
