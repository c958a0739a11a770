"""The emulated LlamaParse v2 API beyond what the SDK tests show: webhooks, expand, errors.

Webhook tests run over real loopback HTTP (the async `llama-cloud` SDK
creates the job, a small aiohttp app receives the deliveries); the rest run
in process on virtual time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from llama_cloud import AsyncLlamaCloud

from providers.transport import HttpRequest, HttpResponse
from simulations.emulators import (
    SIGNATURE_HEADER,
    Emulator,
    FaultPlan,
    InProcessTransport,
    LlamaParsePlan,
)
from tests.loopback import in_process, serving

AUTH = {"Authorization": "Bearer llx-test"}
BASE = "http://emulator"
MARKDOWN = b"# Breakwater\n\nWaves break on the outer wall.\n"


def plan(**options: Any) -> FaultPlan:
    return FaultPlan(llamaparse=LlamaParsePlan(**{"parse_time_s": (10.0, 10.0), **options}))


def seconds(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


def upload(configuration: dict[str, Any], data: bytes = MARKDOWN) -> HttpRequest:
    boundary = "emulator-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="wall.md"\r\n'
        f"Content-Type: text/markdown\r\n\r\n"
    ).encode() + data
    body += (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="configuration"\r\n\r\n'
        f"{orjson.dumps(configuration).decode()}\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return HttpRequest("POST", f"{BASE}/api/v2/parse/upload", headers, body)


def get(path: str) -> HttpRequest:
    return HttpRequest("GET", f"{BASE}{path}", AUTH, b"")


CONFIG: dict[str, Any] = {"tier": "fast", "version": "latest"}
BAD_RATIO = {"job_failure_conditions": {"allowed_page_failure_ratio": "lots"}}


def test_statuses_move_pending_running_completed_and_expand_returns_only_what_was_asked() -> None:
    async def scenario(transport: InProcessTransport) -> list[Any]:
        created = (await transport.send(upload(CONFIG))).json()
        seen = [created]
        for pause in (0.5, 5.0, 5.0):
            await asyncio.sleep(pause)
            seen.append((await transport.send(get(f"/api/v2/parse/{created['id']}"))).json())
        query = "expand=markdown&expand=text_full,job_metadata&expand=markdown_content_metadata"
        seen.append((await transport.send(get(f"/api/v2/parse/{created['id']}?{query}"))).json())
        return seen

    created, pending, running, done, expanded = in_process(Emulator(faults=plan()), scenario)
    assert created["status"] == "PENDING"
    assert "job" not in created  # create answers flat
    assert [pending["job"]["status"], running["job"]["status"]] == ["PENDING", "RUNNING"]
    assert done == {"job": done["job"]}  # nothing expanded: the job alone
    assert done["job"]["status"] == "COMPLETED"
    assert done["job"]["created_at"].endswith("Z")
    assert set(expanded) == {
        "job",
        "markdown",
        "text_full",
        "job_metadata",
        "result_content_metadata",
    }
    assert expanded["markdown"]["pages"] == [
        {"page_number": 1, "markdown": MARKDOWN.decode(), "success": True}
    ]
    assert expanded["text_full"] == MARKDOWN.decode()
    assert expanded["result_content_metadata"]["markdown"]["size_bytes"] > 0


def test_invalid_requests_are_fastapi_errors() -> None:
    async def scenario(transport: InProcessTransport) -> list[HttpResponse]:
        job = (await transport.send(upload(CONFIG))).json()
        return [
            await transport.send(upload({"version": "latest"})),
            await transport.send(upload({"tier": "fast", "version": "1999-01-01"})),
            await transport.send(upload({**CONFIG, "processing_control": BAD_RATIO})),
            await transport.send(get(f"/api/v2/parse/{job['id']}?expand=everything")),
            await transport.send(get("/api/v2/parse/pjb-unknown")),
            await transport.send(HttpRequest("GET", f"{BASE}/api/v2/parse/versions", {}, b"")),
        ]

    answers = in_process(Emulator(faults=plan()), scenario)
    assert [answer.status for answer in answers] == [422, 422, 422, 422, 404, 401]
    assert all("detail" in answer.json() for answer in answers)


def test_uploads_share_a_window_and_429_says_when_to_retry() -> None:
    async def scenario(transport: InProcessTransport) -> list[HttpResponse]:
        return [await transport.send(upload(CONFIG)) for _ in range(3)]

    emulator = Emulator(faults=plan(v2_upload_limit=2, upload_window_s=10.0))
    answers = in_process(emulator, scenario)
    assert [answer.status for answer in answers] == [200, 200, 429]
    assert answers[2].headers["retry-after"] == "10"
    assert emulator.stats().count("POST /api/v2/parse/upload", 429) == 1


def test_a_lost_upload_answer_leaves_a_job_that_is_listed_and_completes() -> None:
    async def scenario(transport: InProcessTransport) -> tuple[dict[str, Any], dict[str, Any]]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await transport.send(upload(CONFIG))
        listed = (await transport.send(get("/api/v2/parse"))).json()
        (job,) = listed["items"]
        await asyncio.sleep(10.0)
        return job, (await transport.send(get(f"/api/v2/parse/{job['id']}"))).json()

    emulator = Emulator(faults=plan(lost_upload_answer_rate=1.0))
    listed, later = in_process(emulator, scenario)
    assert listed["name"] == "wall.md"
    assert later["job"]["status"] == "COMPLETED"
    stats = emulator.stats()
    assert stats.jobs_created == 1
    assert stats.faults["llamaparse"]["lost_answer"] == 1
    assert stats.count("POST /api/v2/parse/upload") == 0  # never answered


def test_lost_answers_leave_every_other_draw_as_it_was() -> None:
    async def scenario(transport: InProcessTransport) -> list[float]:
        async def send(content: bytes) -> None:
            try:
                async with asyncio.timeout(1.0):
                    await transport.send(upload(CONFIG, content))
            except TimeoutError:
                pass

        await asyncio.gather(*(send(MARKDOWN + bytes([n])) for n in range(6)))
        await asyncio.sleep(20.0)
        listed = (await transport.send(get("/api/v2/parse"))).json()["items"]
        return [seconds(job["updated_at"]) - seconds(job["created_at"]) for job in listed]

    def run(rate: float) -> tuple[list[float], int]:
        emulator = Emulator(
            seed=3, faults=plan(parse_time_s=(1.0, 9.0), lost_upload_answer_rate=rate)
        )
        jobs = in_process(emulator, scenario)
        return jobs, emulator.stats().faults["llamaparse"]["lost_answer"]

    (plain, none_lost), (lossy, lost) = run(0.0), run(0.5)
    assert (none_lost, 0 < lost < 6) == (0, True)
    assert lossy == pytest.approx(plain, abs=1e-5)  # each job's parse time, newest first


def test_jobs_list_newest_first_in_pages_by_creation_time() -> None:
    async def scenario(transport: InProcessTransport) -> tuple[list[str], list[Any]]:
        ids = []
        for _ in range(3):
            ids.append((await transport.send(upload(CONFIG))).json()["id"])
            await asyncio.sleep(1.0)
        first = (await transport.send(get("/api/v2/parse?page_size=2"))).json()
        token = first["next_page_token"]
        second = (await transport.send(get(f"/api/v2/parse?page_size=2&page_token={token}"))).json()
        return ids, [first, second]

    ids, (first, second) = in_process(Emulator(faults=plan()), scenario)
    assert [job["id"] for job in first["items"] + second["items"]] == ids[::-1]
    assert second["next_page_token"] is None
    assert {job["name"] for job in first["items"]} == {"wall.md"}


def test_correlation_ids_are_counted_on_v2_routes() -> None:
    async def scenario(transport: InProcessTransport) -> None:
        request = upload(CONFIG)
        headers = {**request.headers, "X-Correlation-ID": "job-42"}
        await transport.send(HttpRequest(request.method, request.url, headers, request.body))

    emulator = Emulator(faults=plan())
    in_process(emulator, scenario)
    assert emulator.stats().correlations["job-42"] == {"POST /api/v2/parse/upload": 1}


def test_webhooks_follow_each_configuration_events_format_and_secret() -> None:
    received: list[tuple[str, bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((request.path, await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    async def main() -> Any:
        app = web.Application()
        app.router.add_post("/{hook}", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hooks = f"http://127.0.0.1:{runner.addresses[0][1]}"
        faults = plan(parse_time_s=(0.1, 0.1), page_failure_rate=0.0)
        try:
            async with serving(Emulator(faults=faults)) as running:
                client = AsyncLlamaCloud(api_key="llx-test", base_url=running.llamaparse_base_url)
                job = await client.parsing.create(
                    tier="fast",
                    version="latest",
                    upload_file=("wall.md", MARKDOWN, "text/markdown"),
                    webhook_configurations=[
                        {
                            "webhook_url": f"{hooks}/signed",
                            "webhook_events": ["parse.success"],
                            "webhook_output_format": "json",
                            "webhook_signing_secret": "whsec-test",
                            "webhook_headers": {"X-Team": "harbour"},
                        },
                        {"webhook_url": f"{hooks}/all"},
                    ],
                )
                await asyncio.sleep(0.5)
                await client.close()
                return job
        finally:
            await runner.cleanup()

    job = asyncio.run(main())
    signed = [(body, headers) for path, body, headers in received if path == "/signed"]
    every = [orjson.loads(orjson.loads(body)) for path, body, _ in received if path == "/all"]
    ((body, headers),) = signed
    expected = "sha256=" + hmac.new(b"whsec-test", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["X-Team"] == "harbour"
    event = orjson.loads(body)
    assert (event["event_type"], event["job_id"], event["status"]) == (
        "parse.success",
        job.id,
        "COMPLETED",
    )
    assert event["data"]["job"]["id"] == job.id
    assert [e["event_type"] for e in every] == ["parse.pending", "parse.running", "parse.success"]
    assert all(SIGNATURE_HEADER not in h for path, _, h in received if path == "/all")
