"""What the database commands share: the job store, the environment, the start banner.

The store is the one `--db`, else BREAKWATER_DB, else ./breakwater.sqlite3
names, opened by `state.store.open.open_store`: a SQLite path (or `sqlite:///PATH`)
or a `postgresql://` URL. Any other value, and a PostgreSQL server that
cannot be reached, is a `ConfigError` naming BREAKWATER_DB (exit code 2).
A URL is shown without its password or query (`state.store.open.shown`).

Safety: a command never spends without a key (the pipeline runs a key-less
provider MOCK-only) and never without a daily budget: a provider whose
BREAKWATER_<PROVIDER>_DAILY_BUDGET_USD is unset gets `DEFAULT_DAILY_BUDGET_USD`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from providers import PROVIDERS
from resilience.clock import wall_time
from resilience.config import variable_name
from state import JobState, JobStore
from state.pipeline.wiring import EMBED, PARSE, Pipeline
from state.pipeline.worker import Worker
from state.store.open import locate, shown

DEFAULT_DB: Final = "breakwater.sqlite3"
DEFAULT_DAILY_BUDGET_USD: Final = 1.0
"""The daily budget of each provider whose own variable is unset: small on purpose."""

_MIME_BY_SUFFIX: Final = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".pdf": "application/pdf",
}


def database_location(arg: str | None, environ: Mapping[str, str]) -> Path | str:
    """The SQLite file (a `Path`) or PostgreSQL URL (a `str`) from --db, BREAKWATER_DB or
    the default; anything else is a `ConfigError` naming BREAKWATER_DB
    (`state.store.open.locate`)."""
    return locate(arg or environ.get("BREAKWATER_DB", "").strip() or DEFAULT_DB)


def command_environment(environ: Mapping[str, str], *, mode: str | None = None) -> dict[str, str]:
    """`environ`, with --mode as SERVICE_MODE and the default daily budgets filled in."""
    env = dict(environ)
    if mode is not None:
        env["SERVICE_MODE"] = mode
    for provider in PROVIDERS:
        name = variable_name(provider, "daily_budget_usd")
        if not env.get(name, "").strip():
            env[name] = f"{DEFAULT_DAILY_BUDGET_USD:g}"
    return env


def mime_type(path: Path) -> str:
    guessed = _MIME_BY_SUFFIX.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    return guessed or "application/octet-stream"


def budget_banner(pipeline: Pipeline) -> str:
    """ "Daily budgets in force: ..." for the parse and embed providers."""
    parts = []
    for capability in (PARSE, EMBED):
        guard = pipeline.guard(capability)
        limit = None if guard.budget is None else guard.budget.limits.daily_usd
        parts.append(f"{guard.name} {'unlimited' if limit is None else f'${limit:.2f}'}")
    return "Daily budgets in force: " + ", ".join(parts)


def announce(pipeline: Pipeline, db: Path | str, out: TextIO) -> None:
    """The start banner: budgets, mode, database, and every provider that cannot spend."""
    print(budget_banner(pipeline), file=out)
    print(f"Mode: {pipeline.mode.value}; database: {shown(db)}", file=out)
    settings = pipeline.shared.settings if pipeline.shared is not None else None
    if settings is not None and (url := settings.redis_url) is not None:
        print(
            f"Limits and budgets shared through Redis at {shown(url)} "
            f"(unreachable: budgets {settings.budget_when_down}, local limits at "
            f"{settings.fallback_fraction:g} of the rate; breakers {settings.breaker_sharing})",
            file=out,
        )
    for capability in (PARSE, EMBED):
        if pipeline.mode.value != "mock" and not pipeline.can_spend(capability):
            name = pipeline.guard(capability).name
            print(f"  {name}: no API key set: runs mock-only and spends nothing", file=out)
    if pipeline.mode.value == "mock":
        print("  mock mode: no provider is called and nothing is spent", file=out)
    out.flush()


async def spend_lines(pipeline: Pipeline) -> list[str]:
    """Each provider's spend today against its daily budget."""
    lines = []
    for capability in (PARSE, EMBED):
        guard = pipeline.guard(capability)
        if guard.budget is None:
            lines.append(f"  {guard.name}: no budget set")
            continue
        usd, requests = await guard.budget.spent("day")
        limit = guard.budget.limits.daily_usd
        shown = "no limit" if limit is None else f"${limit:.2f}"
        lines.append(f"  {guard.name}: ${usd:.6f} of {shown} today ({requests} requests)")
    return lines


@dataclass(slots=True)
class Progress:
    """A progress bar of jobs done and the live breaker states, redrawn in place on a TTY.

    Elsewhere (a pipe, a test) a line is printed only when what it shows changes.
    """

    store: JobStore
    pipeline: Pipeline
    total: int
    out: TextIO = field(default_factory=lambda: sys.stdout)
    width: int = 24
    _last: str = ""

    async def line(self) -> str:
        counts = await self.store.jobs_by_state()
        done = counts.get(JobState.COMPLETE, 0) + counts.get(JobState.FAILED, 0)
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        parse = self.pipeline.guard(PARSE).breaker.state
        embed = self.pipeline.guard(EMBED).breaker.state
        return f"[{bar}] {done}/{self.total} jobs  breakers: parse {parse}, embed {embed}"

    async def draw(self) -> None:
        text = await self.line()
        if text == self._last:
            return
        self._last = text
        if self.out.isatty():
            self.out.write(f"\r{text}\x1b[K")
        else:
            self.out.write(f"  {text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.out.isatty() and self._last:
            self.out.write("\n")
            self.out.flush()

    async def run(self, interval_s: float = 0.1) -> None:
        while True:
            await self.draw()
            await asyncio.sleep(interval_s)


async def work_until_done(
    worker: Worker, job_ids: Sequence[str], *, timeout_s: float | None = None
) -> None:
    """Run `worker` until every job in `job_ids` is complete or failed."""
    async with asyncio.timeout(timeout_s):
        while True:
            jobs = [await worker.store.get_job(job_id) for job_id in job_ids]
            if all(job is not None and job.is_terminal for job in jobs):
                return
            if not await worker.run_once():
                await asyncio.sleep(0.05)


async def ingest_file(store: JobStore, path: Path, mime: str) -> str:
    content = await asyncio.to_thread(path.read_bytes)
    created = await store.create_job(content, filename=path.name, mime_type=mime, now=wall_time())
    return created.job.id


@dataclass(frozen=True, slots=True)
class Served:
    """How many stored parses and embeddings the real provider served, and the mock."""

    parses: dict[str, int]
    embeddings: dict[str, int]


async def served(store: JobStore, pipeline: Pipeline, job_ids: Sequence[str]) -> Served:
    parses = {"real": 0, "mock": 0}
    embeddings = {"real": 0, "mock": 0}
    model, dims = pipeline.embedder.model, pipeline.embedder.vector_dimensions
    for job_id in job_ids:
        job = await store.get_job(job_id)
        if job is None:
            continue
        stored = await store.get_parse(job.sha256)
        if stored is not None:
            parses[stored.path] += 1
        for row in await store.embeddings(job.sha256, model, dims):
            embeddings[row.path] += 1
    return Served(parses, embeddings)


async def summary(store: JobStore, pipeline: Pipeline, job_ids: Sequence[str], out: TextIO) -> None:
    counts = await store.jobs_by_state()
    by_state = ", ".join(f"{state.value} {n}" for state, n in counts.items() if n) or "none"
    degraded = await store.degraded_jobs()
    found = await served(store, pipeline, job_ids)
    print(f"Jobs by state: {by_state}", file=out)
    print(f"Degraded jobs: {len(degraded)}", file=out)
    for job in degraded:
        print(f"  {job.id}  {job.filename}", file=out)
    print(
        f"Parses: real {found.parses['real']}, mock {found.parses['mock']}; "
        f"embeddings: real {found.embeddings['real']}, mock {found.embeddings['mock']}",
        file=out,
    )
    print("Cost:", file=out)
    for line in await spend_lines(pipeline):
        print(line, file=out)
