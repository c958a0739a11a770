"""The v2 client against a scripted LlamaCloud v2 server, on the virtual loop.

`ScriptedV2` plays the server's side of the wire (uploads get job ids,
GETs answer from a script whose last reply repeats), so poll schedules and
webhook timings are measured exactly. The emulator runs in
`test_loopback_llamaparse_v2`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from providers.llamaparse.client import Document, LlamaParse, LlamaParseConfig, ParsedDocument
from providers.llamaparse.webhooks import WebhookInbox, parse_webhook_body
from providers.transport import HttpRequest, HttpResponse
from resilience import BreakerPolicy, Guard, ProviderError
from resilience.testing import run_virtual

DOC = Document("a.md", b"# A\n", "text/markdown")


def answer(status: str, **fields: Any) -> HttpResponse:
    job = {"id": "pjb-1", "project_id": "p", "status": status, **fields}
    body: dict[str, Any] = {"job": job}
    if status == "COMPLETED":
        job["usage"] = {"credits": 6.0}
        body["markdown"] = {
            "pages": [
                {"page_number": 1, "markdown": "# A", "success": True},
                {"page_number": 2, "success": False, "error": "The page could not be parsed"},
            ]
        }
    return HttpResponse.build(200, None, orjson.dumps(body))


class ScriptedV2:
    def __init__(self, *gets: HttpResponse) -> None:
        self.gets = list(gets)
        self.log: list[tuple[float, str]] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.log.append((asyncio.get_running_loop().time(), request.method))
        if request.method == "POST":
            assert request.url.endswith("/api/v2/parse/upload")
            return HttpResponse.build(200, None, b'{"id":"pjb-1","project_id":"p"}')
        return self.gets.pop(0) if len(self.gets) > 1 else self.gets[0]

    def polls(self) -> list[float]:
        return [at for at, method in self.log if method == "GET"]


def config(**overrides: Any) -> LlamaParseConfig:
    return LlamaParseConfig(api_key="llx-test", base_url="http://llamacloud.test", **overrides)


def test_polls_keep_the_v1_schedule_and_the_completed_answer_is_the_result() -> None:
    server = ScriptedV2(*[answer("PENDING")] * 2, *[answer("RUNNING")] * 2, answer("COMPLETED"))

    async def main() -> tuple[ParsedDocument, Guard]:
        guard = Guard("llamaparse", BreakerPolicy(failure_threshold=1))
        return await guard.call(LlamaParse(config(), server).parse, DOC), guard

    parsed, guard = run_virtual(main())
    assert server.polls() == [1.0, 3.0, 6.0, 10.0, 15.0]
    assert (parsed.markdown, parsed.pages, parsed.failed_pages) == ("# A", 2, [2])
    assert parsed.cost_usd == pytest.approx(6.0 * 0.00125)  # usage.credits, not the estimate
    assert guard.breaker.state == "closed"


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (answer("FAILED", error_message="2 of 2 pages failed to parse"), "parse_error"),
        (answer("CANCELLED"), "cancelled"),
    ],
)
def test_failed_and_cancelled_are_422_document_errors(reply: HttpResponse, code: str) -> None:
    async def main() -> ProviderError:
        with pytest.raises(ProviderError) as raised:
            await LlamaParse(config(), ScriptedV2(answer("RUNNING"), reply)).parse(DOC)
        return raised.value

    error = run_virtual(main())
    assert (error.status, error.code) == (422, code)


def webhook_run(server: ScriptedV2, event: dict[str, Any]) -> tuple[object, float]:
    async def main() -> tuple[object, float]:
        inbox = WebhookInbox()
        delivered = parse_webhook_body(orjson.dumps(event))
        asyncio.get_running_loop().call_later(2.0, inbox.accept, delivered)
        client = LlamaParse(config(webhook_url="https://hooks.example.com/lp"), server, inbox=inbox)
        try:
            outcome: object = await client.parse(DOC)
        except ProviderError as exc:
            outcome = exc
        return outcome, asyncio.get_running_loop().time()

    return run_virtual(main())


def test_a_v2_success_webhook_fetches_the_result_at_once() -> None:
    server = ScriptedV2(answer("COMPLETED"))
    job = {"id": "pjb-1", "project_id": "p", "status": "COMPLETED"}
    event = {"event_type": "parse.success", "job_id": "pjb-1", "status": "COMPLETED"}
    outcome, done_at = webhook_run(server, {**event, "data": {"job": job}})
    assert isinstance(outcome, ParsedDocument)
    assert (server.polls(), done_at) == ([2.0], 2.0)


def test_a_v2_error_webhook_fails_with_its_message_without_a_get() -> None:
    server = ScriptedV2(answer("RUNNING"))
    job = {"id": "pjb-1", "project_id": "p", "status": "FAILED", "error_message": "bad font"}
    event = {"event_type": "parse.error", "job_id": "pjb-1", "status": "FAILED"}
    outcome, failed_at = webhook_run(server, {**event, "data": {"job": job}})
    assert isinstance(outcome, ProviderError)
    assert (outcome.status, outcome.code, failed_at) == (422, "parse_error", 2.0)
    assert "bad font" in outcome.message
    assert server.polls() == []
