"""The emulated LlamaParse v1 API: jobs, results, limits, cache, and signed webhooks.

Lifecycle and webhook tests run over real loopback HTTP with tiny parse
times (the loop is real-time there); the rest run in-process on virtual
time, where a 300 s parse finishes at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web

from providers.llamaparse.webhooks import STANDARD_TOLERANCE_S, verify_standard_webhook
from providers.transport import HttpRequest, HttpResponse
from resilience.testing import DEFAULT_WALL_EPOCH
from simulations.emulators import (
    SIGNATURE_HEADER,
    Emulator,
    FaultPlan,
    InProcessTransport,
    LlamaParsePlan,
    RunningEmulator,
    WebhookPlan,
    start,
)
from tests.loopback import in_process

T = TypeVar("T")
V1 = "/api/v1/parsing"
LEGACY = "/api/parsing"
SECRET = "test-webhook-secret"
AUTH = {"Authorization": "Bearer llx-test"}
NOT_READY = {"detail": "Result not found. Check job status to see if it has completed."}
MARKDOWN = "# Title\n\nSome *markdown* body.\n"


def fast_plan(**options: Any) -> FaultPlan:
    return FaultPlan(llamaparse=LlamaParsePlan(**{"parse_time_s": (0.05, 0.05), **options}))


# -- over real HTTP ------------------------------------------------------------


@asynccontextmanager
async def serving(
    emulator: Emulator,
) -> AsyncIterator[tuple[RunningEmulator, aiohttp.ClientSession]]:
    running = await start(emulator)
    async with aiohttp.ClientSession(running.base_url, headers=AUTH) as session:
        try:
            yield running, session
        finally:
            await running.close()


def form(
    data: bytes = MARKDOWN.encode(),
    filename: str = "doc.md",
    content_type: str = "text/markdown",
    **fields: str,
) -> aiohttp.FormData:
    payload = aiohttp.FormData()
    payload.add_field("file", data, filename=filename, content_type=content_type)
    for name, value in fields.items():
        payload.add_field(name, value)
    return payload


async def get_json(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with session.get(path) as response:
        return response.status, await response.json()


async def upload(
    session: aiohttp.ClientSession, payload: aiohttp.FormData, prefix: str = V1
) -> tuple[int, Any]:
    async with session.post(f"{prefix}/upload", data=payload) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("prefix", [V1, LEGACY])
def test_job_lifecycle_over_http(prefix: str) -> None:
    # Real time here: 0.3 s leaves room to see PENDING even on a slow machine.
    plan = FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(0.3, 0.3)))

    async def main() -> None:
        async with serving(Emulator(faults=plan)) as (_, session):
            status, job = await upload(session, form(), prefix)
            assert status == 200
            assert job == {
                "id": job["id"],
                "status": "PENDING",
                "error_code": None,
                "error_message": None,
            }
            job_path = f"{prefix}/job/{job['id']}"
            assert await get_json(session, f"{job_path}/result/markdown") == (404, NOT_READY)
            assert (await get_json(session, job_path))[1]["status"] == "PENDING"
            await asyncio.sleep(0.4)
            assert (await get_json(session, job_path))[1]["status"] == "SUCCESS"
            status, result = await get_json(session, f"{job_path}/result/markdown")
            assert status == 200
            assert result == {
                "markdown": MARKDOWN,
                "job_metadata": {"job_pages": 1, "job_is_cache_hit": False, "credits_used": 3},
            }
            status, text = await get_json(session, f"{job_path}/result/text")
            assert (status, text["text"]) == (200, MARKDOWN)

    asyncio.run(main())


def test_both_prefixes_see_the_same_jobs() -> None:
    async def main() -> None:
        emulator = Emulator(faults=fast_plan())
        async with serving(emulator) as (_, session):
            _, job = await upload(session, form(), LEGACY)
            status, seen = await get_json(session, f"{V1}/job/{job['id']}")
            assert (status, seen["id"]) == (200, job["id"])
        stats = emulator.stats()
        assert stats.count(f"POST {LEGACY}/upload", 200) == 1
        assert stats.count(f"GET {V1}/job/{{job_id}}", 200) == 1

    asyncio.run(main())


def test_authentication() -> None:
    async def main() -> None:
        emulator = Emulator(faults=fast_plan(), llamaparse_api_key="llx-right")
        running = await start(emulator)
        try:
            async with aiohttp.ClientSession(running.base_url) as session:
                for headers in (
                    {},
                    {"Authorization": "Bearer llx-wrong"},
                    {"Authorization": "llx"},
                ):
                    async with session.post(
                        f"{V1}/upload", data=form(), headers=headers
                    ) as response:
                        assert response.status == 401
                        assert await response.json() == {"detail": "Invalid API key"}
                    async with session.get(f"{V1}/job/x", headers=headers) as response:
                        assert response.status == 401
                async with session.post(
                    f"{V1}/upload", data=form(), headers={"Authorization": "Bearer llx-right"}
                ) as response:
                    assert response.status == 200
        finally:
            await running.close()

    asyncio.run(main())


def test_unknown_jobs_and_paths_are_404s() -> None:
    async def main() -> None:
        async with serving(Emulator()) as (_, session):
            for path in (f"{V1}/job/nope", f"{V1}/job/nope/result/markdown"):
                assert await get_json(session, path) == (404, {"detail": "Job not found"})
            assert await get_json(session, "/api/v1/parsing/nothing") == (
                404,
                {"detail": "Not Found"},
            )

    asyncio.run(main())


@dataclass
class Receiver:
    """A webhook endpoint: answers with `statuses` in turn (then 200), records what came."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.received.append((dict(request.headers), body))
            self.arrived.notify_all()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


def valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers[SIGNATURE_HEADER], expected)


def test_webhook_is_delivered_signed_after_success() -> None:
    async def main() -> None:
        receiver = Receiver()
        emulator = Emulator(faults=fast_plan(), webhook_secret=SECRET)
        async with receiving(receiver) as hook, serving(emulator) as (_, session):
            _, job = await upload(session, form(webhook_url=hook))
            await receiver.wait_for(1)
            ((headers, body),) = receiver.received
            assert valid(SECRET, headers, body)
            assert not valid("another-secret", headers, body)
            assert headers["Content-Type"] == "application/json"
            assert orjson.loads(body) == {
                "event_type": "parse.success",
                "job_id": job["id"],
                "status": "SUCCESS",
                "data": {
                    "md": MARKDOWN,
                    "job_metadata": {"job_pages": 1, "job_is_cache_hit": False, "credits_used": 3},
                },
            }
            # It was sent once the job had succeeded.
            assert (await get_json(session, f"{V1}/job/{job['id']}"))[1]["status"] == "SUCCESS"
            stats = emulator.stats().webhooks
            assert (stats["delivered"], stats["attempts"], stats["failed"]) == (1, 1, 0)

    asyncio.run(main())


def test_webhook_retries_non_2xx_then_delivers() -> None:
    async def main() -> None:
        receiver = Receiver(statuses=[500, 503])
        webhook = WebhookPlan(retry_backoff_s=(0.02, 0.02, 0.02))
        emulator = Emulator(faults=fast_plan(webhook=webhook), webhook_secret=SECRET)
        async with receiving(receiver) as hook, serving(emulator) as (_, session):
            await upload(session, form(webhook_url=hook))
            await receiver.wait_for(3)
            await asyncio.sleep(0.1)
            assert len(receiver.received) == 3
            assert len({body for _, body in receiver.received}) == 1
            stats = emulator.stats().webhooks
            assert (stats["attempts"], stats["delivered"], stats["failed"]) == (3, 1, 0)

    asyncio.run(main())


def test_webhook_gives_up_after_its_retries() -> None:
    async def main() -> None:
        receiver = Receiver(statuses=[500] * 10)
        webhook = WebhookPlan(retry_backoff_s=(0.01, 0.01))
        emulator = Emulator(faults=fast_plan(webhook=webhook))
        async with receiving(receiver) as hook, serving(emulator) as (_, session):
            await upload(session, form(webhook_url=hook))
            await receiver.wait_for(3)
            await asyncio.sleep(0.1)
            assert len(receiver.received) == 3
            stats = emulator.stats().webhooks
            assert (stats["attempts"], stats["delivered"], stats["failed"]) == (3, 0, 1)

    asyncio.run(main())


def test_duplicate_and_bad_signature_deliveries_over_http() -> None:
    async def main() -> None:
        receiver = Receiver()
        webhook = WebhookPlan(duplicate_rate=1.0, bad_signature_rate=1.0)
        emulator = Emulator(faults=fast_plan(webhook=webhook), webhook_secret=SECRET)
        async with receiving(receiver) as hook, serving(emulator) as (_, session):
            await upload(session, form(webhook_url=hook))
            await receiver.wait_for(2)
            (first_headers, first), (second_headers, second) = receiver.received
            assert first == second
            assert first_headers[SIGNATURE_HEADER] == second_headers[SIGNATURE_HEADER]
            assert not valid(SECRET, first_headers, first)
            stats = emulator.stats().webhooks
            assert (stats["delivered"], stats["duplicated"], stats["bad_signature"]) == (1, 1, 1)

    asyncio.run(main())


def test_language_and_bracketed_language_are_accepted_over_http() -> None:
    async def main() -> None:
        async with serving(Emulator(faults=fast_plan())) as (_, session):
            for payload in (form(language="fr"), form()):
                payload.add_field("language[]", "fr")
                status, job = await upload(session, payload)
                assert (status, job["status"]) == (200, "PENDING")

    asyncio.run(main())


# -- in-process, on virtual time -----------------------------------------------


def multipart(
    fields: list[tuple[str, str]],
    file: tuple[str, str, bytes] | None = ("doc.md", "text/markdown", MARKDOWN.encode()),
) -> tuple[str, bytes]:
    """A form body as httpx writes one (the LlamaParse SDKs use httpx)."""
    boundary = "b0undary-for-tests"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    if file is not None:
        filename, content_type, data = file
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def upload_request(
    fields: list[tuple[str, str]] | None = None,
    file: tuple[str, str, bytes] | None = ("doc.md", "text/markdown", MARKDOWN.encode()),
    prefix: str = V1,
) -> HttpRequest:
    content_type, body = multipart(fields or [], file)
    return HttpRequest(
        "POST", f"https://llama.test{prefix}/upload", {**AUTH, "Content-Type": content_type}, body
    )


def get(path: str) -> HttpRequest:
    return HttpRequest("GET", f"https://llama.test{path}", AUTH)


def test_a_300_second_parse_finishes_instantly_in_virtual_time() -> None:
    plan = FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(300.0, 300.0)))

    async def scenario(transport: InProcessTransport) -> tuple[float, list[str]]:
        loop = asyncio.get_running_loop()
        job = (await transport.send(upload_request())).json()
        seen = []
        while True:
            status = (await transport.send(get(f"{V1}/job/{job['id']}"))).json()["status"]
            seen.append(status)
            if status == "SUCCESS":
                return loop.time(), seen
            await asyncio.sleep(10.0)

    started = time.perf_counter()
    finished_at, seen = in_process(Emulator(faults=plan), scenario)
    assert time.perf_counter() - started < 5.0
    assert finished_at == pytest.approx(300.0)
    assert seen == ["PENDING"] * 30 + ["SUCCESS"]


def test_parse_times_are_drawn_from_the_range_reproducibly() -> None:
    plan = FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(10.0, 20.0)))

    async def scenario(transport: InProcessTransport) -> list[float]:
        loop = asyncio.get_running_loop()
        jobs = [(await transport.send(upload_request())).json()["id"] for _ in range(5)]
        done: dict[str, float] = {}
        while len(done) < len(jobs):
            await asyncio.sleep(0.5)
            for job in jobs:
                answer = (await transport.send(get(f"{V1}/job/{job}"))).json()
                if answer["status"] == "SUCCESS":
                    done.setdefault(job, loop.time())
        return [done[job] for job in jobs]

    first = in_process(Emulator(seed=4, faults=plan), scenario)
    assert all(10.0 <= t <= 20.5 for t in first)
    assert len(set(first)) > 1
    assert in_process(Emulator(seed=4, faults=plan), scenario) == first


def pdf(pages: int) -> bytes:
    objects = b"".join(b"<< /Type /Page /Parent 2 0 R >>\n" for _ in range(pages))
    tree = b"<< /Type /Pages /Count " + str(pages).encode() + b" >>\n"
    return b"%PDF-1.7\n" + tree + objects + b"%%EOF\n"


@pytest.mark.parametrize(
    ("fields", "pages", "credits"),
    [
        ([], 3, 9),
        ([("max_pages", "2")], 2, 6),
        ([("fast_mode", "true")], 3, 3),
        ([("premium_mode", "true")], 3, 135),
        ([("parse_mode", "parse_page_with_agent")], 3, 30),
    ],
)
def test_pdfs_get_placeholder_pages_and_credits(
    fields: list[tuple[str, str]], pages: int, credits: int
) -> None:
    async def scenario(transport: InProcessTransport) -> dict[str, Any]:
        job = (
            await transport.send(upload_request(fields, ("r.pdf", "application/pdf", pdf(3))))
        ).json()
        await asyncio.sleep(5)
        result: dict[str, Any] = (
            await transport.send(get(f"{V1}/job/{job['id']}/result/markdown"))
        ).json()
        return result

    result = in_process(Emulator(), scenario)
    assert result["job_metadata"] == {
        "job_pages": pages,
        "job_is_cache_hit": False,
        "credits_used": credits,
    }
    sections = result["markdown"].split("\n---\n")
    assert len(sections) == pages
    assert sections[0].startswith("# r.pdf, page 1\n")
    assert f"page {pages} of {pages}" in sections[-1]


def test_upload_limit_is_15_per_10_seconds() -> None:
    async def scenario(transport: InProcessTransport) -> list[HttpResponse]:
        answers = [await transport.send(upload_request()) for _ in range(16)]
        await asyncio.sleep(10.0)
        answers.append(await transport.send(upload_request()))
        return answers

    answers = in_process(Emulator(), scenario)
    assert [a.status for a in answers] == [200] * 15 + [429, 200]
    assert answers[15].json() == {
        "detail": "Rate limit exceeded: at most 15 uploads per 10 seconds. Please retry later."
    }
    assert "Retry-After" not in answers[15].headers


def test_upload_429_can_carry_retry_after() -> None:
    plan = FaultPlan(
        llamaparse=LlamaParsePlan(upload_limit=2, upload_window_s=30.0, upload_retry_after=True)
    )

    async def scenario(transport: InProcessTransport) -> HttpResponse:
        await transport.send(upload_request())
        await asyncio.sleep(4.5)
        await transport.send(upload_request())
        return await transport.send(upload_request(prefix=LEGACY))

    refused = in_process(Emulator(faults=plan), scenario)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "26"  # the first upload leaves the window at 30 s


def test_the_content_cache_bills_repeat_parses_nothing() -> None:
    async def scenario(transport: InProcessTransport) -> list[tuple[bool, int]]:
        outcomes = []
        for fields in (
            [("language", "fr")],
            [("language[]", "fr")],  # the same option, as Stainless SDKs send it
            [("language", "de")],  # different options: a different cache entry
            [("language", "fr"), ("invalidate_cache", "true")],
            [("language", "it"), ("do_not_cache", "true")],
            [("language", "it")],
        ):
            job = (await transport.send(upload_request(fields))).json()
            await asyncio.sleep(2.0)
            result = (await transport.send(get(f"{V1}/job/{job['id']}/result/text"))).json()
            metadata = result["job_metadata"]
            outcomes.append((metadata["job_is_cache_hit"], metadata["credits_used"]))
        return outcomes

    assert in_process(Emulator(), scenario) == [
        (False, 3),
        (True, 0),
        (False, 3),
        (False, 3),
        (False, 3),
        (False, 3),
    ]


def test_bad_uploads_get_fastapi_errors() -> None:
    async def scenario(transport: InProcessTransport) -> list[HttpResponse]:
        not_a_form = HttpRequest(
            "POST",
            f"https://llama.test{V1}/upload",
            {**AUTH, "Content-Type": "application/json"},
            b"{}",
        )
        return [
            await transport.send(not_a_form),
            await transport.send(upload_request([("language", "en")], file=None)),
            await transport.send(upload_request([("max_pages", "many")])),
            await transport.send(upload_request([("webhook_url", "ftp://example.com/x")])),
        ]

    garbled, no_file, bad_pages, bad_hook = in_process(Emulator(), scenario)
    assert (garbled.status, garbled.json()) == (
        400,
        {"detail": "There was an error parsing the body"},
    )
    assert no_file.status == 400
    assert "file is required" in no_file.json()["detail"]
    assert bad_pages.status == 422
    assert bad_pages.json()["detail"][0]["loc"] == ["body", "max_pages"]
    assert (bad_hook.status, bad_hook.json()) == (
        400,
        {"detail": "Invalid webhook_url: ftp://example.com/x"},
    )


@dataclass
class Inbox:
    """A `Transport` standing in for a webhook receiver: records deliveries, answers 200."""

    deliveries: list[tuple[float, HttpRequest]] = field(default_factory=list)

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.deliveries.append((asyncio.get_running_loop().time(), request))
        return HttpResponse.build(204)


def webhook_run(
    webhook: WebhookPlan, jobs: int, seed: int = 0, standard: str | None = None
) -> tuple[Inbox, dict[str, int]]:
    inbox = Inbox()
    plan = FaultPlan(
        llamaparse=LlamaParsePlan(parse_time_s=(60.0, 60.0), upload_limit=1000, webhook=webhook)
    )
    emulator = Emulator(
        seed=seed,
        faults=plan,
        webhook_secret=SECRET,
        webhook_transport=inbox,
        standard_webhook_secret=standard,
    )

    async def scenario(transport: InProcessTransport) -> dict[str, int]:
        for _ in range(jobs):
            await transport.send(upload_request([("webhook_url", "https://hooks.test/in")]))
        await asyncio.sleep(600.0)
        return emulator.stats().webhooks

    return inbox, in_process(emulator, scenario)


def test_in_process_webhook_arrives_at_success_plus_delay() -> None:
    inbox, stats = webhook_run(WebhookPlan(delay_s=(2.5, 2.5)), jobs=1)
    ((at, request),) = inbox.deliveries
    assert at == pytest.approx(62.5)
    assert request.url == "https://hooks.test/in"
    assert valid(SECRET, dict(request.headers), request.body)
    assert stats["delivered"] == 1


@pytest.mark.parametrize(
    ("webhook", "deliveries", "counts"),
    [
        (WebhookPlan(drop_rate=1.0), 0, {"dropped": 1, "delivered": 0, "attempts": 0}),
        (WebhookPlan(duplicate_rate=1.0), 2, {"duplicated": 1, "delivered": 1, "attempts": 2}),
        (WebhookPlan(bad_signature_rate=1.0), 1, {"bad_signature": 1, "delivered": 1}),
    ],
    ids=["drop", "duplicate", "bad signature"],
)
def test_webhook_faults_follow_the_plan(
    webhook: WebhookPlan, deliveries: int, counts: dict[str, int]
) -> None:
    inbox, stats = webhook_run(webhook, jobs=1)
    assert len(inbox.deliveries) == deliveries
    assert {name: stats[name] for name in counts} == counts
    for _, request in inbox.deliveries:
        assert valid(SECRET, dict(request.headers), request.body) == (
            webhook.bad_signature_rate == 0
        )


def test_webhook_fault_rates_are_seeded() -> None:
    webhook = WebhookPlan(drop_rate=0.3, duplicate_rate=0.3, bad_signature_rate=0.3)
    inbox, stats = webhook_run(webhook, jobs=40, seed=9)
    assert 4 <= stats["dropped"] <= 20
    assert 4 <= stats["duplicated"] <= 20
    assert stats["scheduled"] == 40
    assert len(inbox.deliveries) == 40 - stats["dropped"] + stats["duplicated"]
    again, same = webhook_run(webhook, jobs=40, seed=9)
    assert same == stats
    assert [r.body for _, r in again.deliveries] == [r.body for _, r in inbox.deliveries]
    assert webhook_run(webhook, jobs=40, seed=10)[1] != stats


STANDARD_SECRET = "whsec_" + base64.b64encode(b"a standard webhooks test key!").decode()


@pytest.mark.parametrize("forged", [False, True], ids=["signed", "bad signature"])
def test_standard_webhooks_headers_sign_each_attempt_beside_lc_signature(forged: bool) -> None:
    """The receiver's own `verify_standard_webhook` takes what the emulator signs, at the
    wall time of the attempt; one id for the delivery and its duplicate; a bad signature
    is bad in both schemes."""
    webhook = WebhookPlan(duplicate_rate=1.0, bad_signature_rate=1.0 if forged else 0.0)
    inbox, _ = webhook_run(webhook, jobs=1, standard=STANDARD_SECRET)
    assert len(inbox.deliveries) == 2
    ids = set()
    for at, request in inbox.deliveries:
        headers = dict(request.headers)
        ids.add(headers["webhook-id"])
        assert int(headers["webhook-timestamp"]) == int(DEFAULT_WALL_EPOCH + at)
        fresh = verify_standard_webhook(
            STANDARD_SECRET, headers, request.body, now=DEFAULT_WALL_EPOCH + at
        )
        assert fresh is not forged
        assert valid(SECRET, headers, request.body) is not forged
        stale = DEFAULT_WALL_EPOCH + at + STANDARD_TOLERANCE_S + 1
        assert not verify_standard_webhook(STANDARD_SECRET, headers, request.body, now=stale)
    assert len(ids) == 1


def test_no_standard_secret_means_lc_signature_alone() -> None:
    inbox, _ = webhook_run(WebhookPlan(), jobs=1)
    ((_, request),) = inbox.deliveries
    assert not any(name.startswith("webhook-") for name in request.headers)
