"""One correlation id, from the upload to every provider request, log line and audit row.

A document is uploaded to the real API server over loopback with
`X-Correlation-ID: abc-123`; a worker takes it through LlamaParse and an
OpenAI that is down (HYBRID, so a retry, a breaker trip and a mock fill in).
The judges are independent of our code's own account where they can be: the
emulator's record of the headers each request carried, the JSON lines as
written to the log file, and the audit rows as the API serves them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from resilience.events import close_logging, configure_logging
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, OpenAIPlan, RunningEmulator
from simulations.samples import SAMPLES
from state import SqliteJobStore
from state.app.metrics import Metrics
from state.app.serve import serve_app
from state.pipeline.wiring import Pipeline
from state.pipeline.worker import Worker
from tests.loopback import serving, transport

CID = "abc-123"
OUTAGE = FaultPlan(
    llamaparse=LlamaParsePlan(parse_time_s=(0.05, 0.05)),
    openai=OpenAIPlan(outages=((0.0, 3600.0),)),
)
PROVIDER_EVENTS = ("breaker.", "guard.", "provider.", "fallback.", "openai.", "llamaparse.")


def environment(running: RunningEmulator) -> dict[str, str]:
    return {
        "SERVICE_MODE": "hybrid",
        "OPENAI_API_KEY": "sk-loopback",
        "OPENAI_BASE_URL": running.openai_base_url,
        "LLAMA_CLOUD_API_KEY": "llx-loopback",
        "LLAMA_CLOUD_BASE_URL": running.llamaparse_base_url,
        "LLAMA_CLOUD_API_VERSION": "v1",  # the routes asserted below are v1's
        # Two tries, then the breaker opens: a retry and a trip, both logged.
        "BREAKWATER_OPENAI_MAX_ATTEMPTS": "2",
        "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "2",
    }


async def upload(api: str, headers: dict[str, str]) -> Any:
    sample = SAMPLES[0]
    form = aiohttp.FormData()
    form.add_field(
        "file", sample.path.read_bytes(), filename=sample.name, content_type=sample.mime_type
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api}/documents", data=form, headers=headers) as response,
    ):
        return response.status, await response.json()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def run_job(tmp_path: Path) -> tuple[Any, Any, dict[str, dict[str, int]]]:
    emulator = Emulator(seed=5, faults=OUTAGE)
    async with serving(emulator) as running, transport() as sender:
        pipeline = Pipeline.from_env(environment(running), transport=sender)
        async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
            app = serve_app(store, pipeline, metrics=Metrics(), webhook_secret="whsec")
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            api = f"http://127.0.0.1:{port}"
            try:
                status, body = await upload(api, {"X-Correlation-ID": CID})
                assert status == 201, body
                worker = Worker(store, pipeline, owner="w1")
                async with asyncio.timeout(60):
                    while not (await get_json(f"{api}/jobs/{body['job_id']}"))["job"]["terminal"]:
                        if not await worker.run_once():
                            await asyncio.sleep(0.05)
                served = await get_json(f"{api}/jobs/{body['job_id']}")
                refused = await upload(api, {"X-Correlation-ID": "abc 123"})
            finally:
                await runner.cleanup()
    seen = emulator.stats().correlations
    return served, refused, seen


def test_the_uploads_correlation_id_reaches_requests_logs_and_audit_rows(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    configure_logging(str(log))
    try:
        served, refused, seen = asyncio.run(run_job(tmp_path))
    finally:
        close_logging()
    job, history = served["job"], served["history"]
    assert (job["state"], job["degraded"], job["correlation_id"]) == ("complete", True, CID)

    # What the providers saw: every request to either API carried the id, and nothing else did.
    assert set(seen) == {CID}, seen
    routes = seen[CID]
    assert routes["POST /api/v1/parsing/upload"] == 1
    assert routes["POST /v1/embeddings"] == 2  # the try and its retry, both into the outage

    # The audit trail, as the API serves it: every row of the job.
    assert len(history) >= 6
    assert {row["correlation_id"] for row in history} == {CID}

    # The log, as written: every breaker, guard and provider line of the run names it.
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    ours = [line for line in lines if line.get("event", "").startswith(PROVIDER_EVENTS)]
    kinds = {line["event"].split(".")[0] for line in ours}
    assert {"breaker", "guard", "provider", "fallback"} <= kinds, kinds
    assert [line for line in ours if line.get("correlation_id") != CID] == []

    # An id that could not travel in a header is refused, with the JSON error shape.
    status, body = refused
    assert status == 400
    assert body["error"]["code"] == "bad_correlation_id"
