"""`breakwater serve` takes LlamaParse webhooks: the API and the worker share one pipeline.

The serve command's own wiring (`serve_app`, a `Worker` over the same
`Pipeline` with the server's `Metrics`) runs in one event loop on
127.0.0.1, as `breakwater serve` does, with the emulators configured the
way a deployment is (LLAMA_CLOUD_WEBHOOK_URL points at the server's
`/webhooks/llamaparse`, LLAMA_CLOUD_WEBHOOK_SECRET signs). A document
uploaded with `POST /documents` completes with its parse woken by the
webhook (the emulator sees no status poll), the worker's provider calls show
in `/metrics`, and the endpoint still refuses forged and unknown deliveries.
Both API versions: v1's webhook carries the result, so nothing is fetched;
v2's carries only the job, so the result is fetched once, with no poll before.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from providers.llamaparse.webhooks import LC_SIGNATURE_HEADER, WebhookInbox, sign_lc
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, RunningEmulator
from state import SqliteJobStore
from state.app.metrics import Metrics
from state.app.serve import serve_app
from state.pipeline.wiring import Pipeline
from state.pipeline.worker import Worker
from tests.loopback import serving, transport

SECRET = "serve-webhook-signing-secret"
STATUS = "GET /api/v1/parsing/job/{job_id}"
RESULT = "GET /api/v1/parsing/job/{job_id}/result/markdown"
V2_JOB = "GET /api/v2/parse/{job_id}"
UPLOAD = {"v1": "POST /api/v1/parsing/upload", "v2": "POST /api/v2/parse/upload"}
CONTENT = b"# Minutes\n\nThe webhook woke the parse.\n"


def environment(running: RunningEmulator, hook: str, api_version: str) -> dict[str, str]:
    return {
        "SERVICE_MODE": "real",
        "OPENAI_API_KEY": "sk-loopback",
        "OPENAI_BASE_URL": running.openai_base_url,
        "LLAMA_CLOUD_API_KEY": "llx-loopback",
        "LLAMA_CLOUD_BASE_URL": running.llamaparse_base_url,
        "LLAMA_CLOUD_WEBHOOK_URL": hook,
        "LLAMA_CLOUD_WEBHOOK_SECRET": SECRET,
        "LLAMA_CLOUD_API_VERSION": api_version,
    }


def event(job_id: str) -> bytes:
    return orjson.dumps(
        {"event_type": "parse.success", "job_id": job_id, "status": "SUCCESS", "data": {}}
    )


@asynccontextmanager
async def served(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def until_terminal(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            async with session.get(url) as answer:
                job: dict[str, Any] = (await answer.json())["job"]
            if job["terminal"]:
                return job
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("api_version", ["v1", "v2"])
def test_serve_completes_an_upload_by_webhook_and_counts_its_calls(
    tmp_path: Path, api_version: str
) -> None:
    async def main() -> None:
        emulator = Emulator(
            seed=3,
            faults=FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(0.05, 0.05))),
            webhook_secret=SECRET,
        )
        # The server's port must be known before the pipeline reads the webhook URL.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with (
            serving(emulator) as running,
            transport() as sender,
            await SqliteJobStore.open(tmp_path / "serve.sqlite3") as store,
        ):
            env = environment(running, f"{base}/webhooks/llamaparse", api_version)
            pipeline = Pipeline.from_env(
                env, transport=sender, ledger=store.ledger(), inbox=WebhookInbox()
            )
            metrics = Metrics()
            app = serve_app(store, pipeline, metrics=metrics, webhook_secret=SECRET)
            worker = Worker(store, pipeline, owner="serve-test", concurrency=2)
            stop = asyncio.Event()
            async with served(app, sock), aiohttp.ClientSession(base) as session:
                working = asyncio.create_task(worker.run(stop, idle_sleep_s=0.05))
                try:
                    form = aiohttp.FormData()
                    form.add_field(
                        "file", CONTENT, filename="minutes.md", content_type="text/markdown"
                    )
                    async with session.post("/documents", data=form) as answer:
                        assert answer.status == 201
                        job_id = (await answer.json())["job_id"]
                    job = await until_terminal(session, f"/jobs/{job_id}")
                    parse = await store.get_parse(job["sha256"])
                    assert parse is not None
                    lp_job = parse.parsed.job_id
                    # A redelivery after the job finished is acknowledged, not 404.
                    delivered = event(lp_job)
                    async with session.post(
                        "/webhooks/llamaparse",
                        data=delivered,
                        headers={LC_SIGNATURE_HEADER: sign_lc(SECRET, delivered)},
                    ) as answer:
                        assert answer.status == 200
                        again = await answer.json()

                    forged = event("lp-forged")
                    async with session.post(
                        "/webhooks/llamaparse",
                        data=forged,
                        headers={LC_SIGNATURE_HEADER: sign_lc("not-the-secret", forged)},
                    ) as answer:
                        assert answer.status == 401
                    unknown = event("lp-not-ours")
                    async with session.post(
                        "/webhooks/llamaparse",
                        data=unknown,
                        headers={LC_SIGNATURE_HEADER: sign_lc(SECRET, unknown)},
                    ) as answer:
                        assert answer.status == 404
                        assert (await answer.json())["error"]["code"] == "job_not_found"

                    async with session.get("/metrics") as answer:
                        text = await answer.text()
                finally:
                    stop.set()
                    await working

        assert (job["state"], job["degraded"]) == ("complete", False)
        assert again == {"status": "duplicate", "job_id": lp_job, "event": "parse.success"}
        stats = emulator.stats()
        assert stats.webhooks["delivered"] == 1
        assert (stats.count(STATUS), stats.count(RESULT)) == (0, 0)  # woken, never polled
        # v2: the one GET after the webhook fetches the result; v1's webhook carried it.
        assert stats.count(V2_JOB) == (1 if api_version == "v2" else 0)
        assert stats.count(UPLOAD[api_version], 200) == 1
        assert 'breakwater_calls_total{provider="llamaparse",outcome="ok",path="real"} 1' in text
        assert 'breakwater_calls_total{provider="openai",outcome="ok",path="real"} 1' in text

    asyncio.run(main())
