"""`breakwater serve`: the API (`state.server`) over the SQLite job database.

It serves uploads, job status, health, metrics and costs, until SIGINT or
SIGTERM. Uploaded documents become jobs that `breakwater worker` processes.
Webhooks: the store cannot tell which LlamaParse job ids are ours, and no
public lookup exists yet, so every webhook event gets 404 (the parse step
polls LlamaParse, so nothing waits on them). Without LLAMA_CLOUD_WEBHOOK_SECRET
a random secret is used, so no delivery verifies at all.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import Mapping
from typing import TextIO

from aiohttp import web

from providers import LLAMAPARSE, OPENAI
from simulations.commands.common import announce, database_path
from state import SqliteJobStore
from state.metrics import Metrics
from state.pipeline import EMBED, PARSE, Pipeline
from state.server import create_app


async def _unknown_job(_llamaparse_job_id: str) -> bool:
    return False


async def _serve(
    host: str, port: int, db: str | None, environ: Mapping[str, str], out: TextIO
) -> int:
    db_path = database_path(db, environ)
    async with await SqliteJobStore.open(db_path) as store:
        pipeline = Pipeline.from_env(environ, ledger=store.ledger())
        try:
            announce(pipeline, db_path, out)
            secret = environ.get("LLAMA_CLOUD_WEBHOOK_SECRET", "").strip()
            if not secret:
                secret = secrets.token_hex(32)
                print(
                    "  LLAMA_CLOUD_WEBHOOK_SECRET unset: webhooks cannot verify and are refused",
                    file=out,
                )
            app = create_app(
                store,
                guards={OPENAI: pipeline.guard(EMBED), LLAMAPARSE: pipeline.guard(PARSE)},
                metrics=Metrics(),
                webhook_secret=secret,
                known_job=_unknown_job,
            )
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound = runner.addresses[0][1]
                print(
                    f"Serving on http://{host}:{bound} (POST /documents, GET /jobs/ID, "
                    "/health, /metrics, /costs); run `breakwater worker` to process jobs. "
                    "Ctrl-C stops.",
                    file=out,
                )
                out.flush()
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for number in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(number, stop.set)
                try:
                    await stop.wait()
                finally:
                    for number in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(number)
            finally:
                await runner.cleanup()
        finally:
            await pipeline.close()
    print("Stopped.", file=out)
    return 0


def run_serve(
    *, host: str, port: int, db: str | None, environ: Mapping[str, str], out: TextIO
) -> int:
    """Serve the API until SIGINT or SIGTERM; returns the exit code."""
    return asyncio.run(_serve(host, port, db, environ, out))
