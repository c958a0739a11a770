"""`breakwater serve`: the API (`state.app.server`) over the job store, and a worker.

The store is SQLite or PostgreSQL, as `--db` or BREAKWATER_DB says
(`common.database_location`). On PostgreSQL, several `serve` and
`breakwater worker` processes can share one database.

It serves uploads, job status, LlamaParse webhooks, health, metrics and
costs until SIGINT or SIGTERM. By default (`--workers N`, N > 0) a `Worker`
runs in the same process over the same `Pipeline`, so uploaded documents
are processed here, and the LlamaParse client's `WebhookInbox` is the
server's: a verified webhook for a job the client uploaded and still waits
on (`LlamaParse.awaiting`) wakes its parse; any other job's webhook is 404.
The server's `Metrics` counts the calls the pipeline's routers route
(`breakwater_calls_total` at `/metrics`), whichever worker made them.

Webhooks are used when LLAMA_CLOUD_WEBHOOK_URL (this server's
`/webhooks/llamaparse`, as LlamaCloud reaches it) and
LLAMA_CLOUD_WEBHOOK_SECRET are set; otherwise parses poll. Without the
secret a random one is used, so no delivery verifies at all (and the
parses do not wait for one).

`--workers 0` serves the API only: jobs wait for `breakwater worker`, and
every webhook is 404 (no parse waits in this process).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from collections.abc import Mapping
from typing import Final, TextIO

from aiohttp import web

from providers import LLAMAPARSE, OPENAI
from providers.llamaparse.webhooks import WebhookInbox
from state.app.common import announce, database_location
from state.app.metrics import Metrics
from state.app.server import KnownJob, create_app
from state.pipeline.wiring import EMBED, PARSE, Pipeline
from state.pipeline.worker import Worker
from state.store.open import open_store
from state.store.protocol import JobStore

DEFAULT_WORKERS: Final = 2
"""`breakwater serve --workers`: jobs the in-process worker holds at once."""


def known_job_of(pipeline: Pipeline, store: JobStore) -> KnownJob:
    """The server's `known_job`: is a remote parse recorded live in `store`, or does a parse
    here, or in a process sharing Redis, wait on it?

    An accepted event reaches the pollers through the inbox (shared through
    Redis when configured): each marks the row due when it hears it, so the
    row is claimed only where the event is already known.
    """
    parser = pipeline.parser

    async def known_job(llamaparse_job_id: str) -> bool:
        if parser is None:
            return False
        if await store.remote_parse_live(llamaparse_job_id):
            return True
        if parser.awaiting(llamaparse_job_id):
            return True
        # A worker in another process may wait for it (a shared inbox asks Redis).
        return parser.inbox is not None and await parser.inbox.known(llamaparse_job_id)

    return known_job


def serve_app(
    store: JobStore,
    pipeline: Pipeline,
    *,
    metrics: Metrics,
    webhook_secret: str,
) -> web.Application:
    """The API over `store`, taking webhooks into the pipeline's LlamaParse inbox.

    The pipeline must have been built with an inbox (`Pipeline.from_env(...,
    inbox=...)`) for webhooks to wake a parse; without one the server keeps
    a private inbox and no parse waits on it. `metrics` counts the calls
    routed through the pipeline's routers.
    """
    parser = pipeline.parser
    metrics.count_calls(pipeline.routers)
    return create_app(
        store,
        guards={OPENAI: pipeline.guard(EMBED), LLAMAPARSE: pipeline.guard(PARSE)},
        metrics=metrics,
        webhook_secret=webhook_secret,
        known_job=known_job_of(pipeline, store),
        inbox=None if parser is None else parser.inbox,
    )


async def _serve(
    host: str,
    port: int,
    db: str | None,
    environ: Mapping[str, str],
    out: TextIO,
    workers: int,
) -> int:
    where = database_location(db, environ)
    async with await open_store(where) as store:
        secret = environ.get("LLAMA_CLOUD_WEBHOOK_SECRET", "").strip()
        # Without a secret no delivery verifies: parses poll rather than wait for one.
        inbox = WebhookInbox() if secret else None
        pipeline = Pipeline.from_env(environ, ledger=store.ledger(), inbox=inbox)
        try:
            announce(pipeline, where, out)
            if not secret:
                secret = secrets.token_hex(32)
                print(
                    "  LLAMA_CLOUD_WEBHOOK_SECRET unset: webhooks cannot verify and are refused",
                    file=out,
                )
            elif workers and not environ.get("LLAMA_CLOUD_WEBHOOK_URL", "").strip():
                print("  LLAMA_CLOUD_WEBHOOK_URL unset: parses poll LlamaParse", file=out)
            metrics = Metrics()
            app = serve_app(store, pipeline, metrics=metrics, webhook_secret=secret)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound = runner.addresses[0][1]
                working = (
                    f"a worker holds up to {workers} jobs"
                    if workers
                    else "run `breakwater worker` to process jobs"
                )
                print(
                    f"Serving on http://{host}:{bound} (POST /documents, GET /jobs/ID, "
                    f"POST /webhooks/llamaparse, /health, /metrics, /costs); {working}. "
                    "Ctrl-C stops.",
                    file=out,
                )
                out.flush()
                await _until_signalled(store, pipeline, workers)
            finally:
                await runner.cleanup()
        finally:
            await pipeline.close()
    print("Stopped.", file=out)
    return 0


async def _until_signalled(store: JobStore, pipeline: Pipeline, workers: int) -> None:
    """Run the worker (if any) until SIGINT or SIGTERM; it stops before the server does."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    try:
        if workers:
            owner = f"serve-{socket.gethostname()}-{os.getpid()}"
            worker = Worker(store, pipeline, owner=owner, concurrency=workers)
            await worker.run(stop)
        else:
            await stop.wait()
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)


def run_serve(
    *,
    host: str,
    port: int,
    db: str | None,
    environ: Mapping[str, str],
    out: TextIO,
    workers: int = DEFAULT_WORKERS,
) -> int:
    """Serve the API (and a worker, unless `workers` is 0) until SIGINT or SIGTERM."""
    return asyncio.run(_serve(host, port, db, environ, out, workers))
