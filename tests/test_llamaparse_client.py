"""The LlamaParse client against a scripted LlamaCloud v1 server.

`ScriptedLlamaCloud` is a Transport that plays the server's side of the
wire: it stands in for the network, not for any of our code. Everything runs
on the virtual loop, so poll schedules and deadlines are measured exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from providers.llamaparse.client import (
    DEFAULT_BASE_URL,
    Document,
    LlamaParse,
    LlamaParseConfig,
    MissingApiKey,
    ParsedDocument,
    estimate_cost_usd,
    estimate_pages,
)
from providers.llamaparse.mock import MockParser
from providers.llamaparse.webhooks import WebhookInbox, parse_webhook_body
from providers.pricing import USD_PER_CREDIT, parse_cost_usd
from providers.transport import HttpRequest, HttpResponse, TransportError
from resilience import (
    ConfigError,
    ErrorClass,
    Guard,
    ProviderError,
    Routed,
    Router,
    ServiceMode,
    TokenBucket,
    classify,
)
from resilience.testing import run_virtual
from tests.events import Events
from tests.pdfs import make_pdf

T = TypeVar("T")
KEY = "llx-test-secret-key"
BASE = "http://llamacloud.test"
HANG = object()
"""A scripted reply that never comes."""

Reply = HttpResponse | Exception | object


def reply(status: int, body: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse.build(status, headers, raw)


def job(status: str, **fields: Any) -> HttpResponse:
    return reply(200, {"id": "job-1", "status": status, **fields})


def markdown(text: str = "# Parsed\n", **metadata: Any) -> HttpResponse:
    return reply(200, {"markdown": text, "job_metadata": {"job_pages": 2, **metadata}})


class ScriptedLlamaCloud:
    """Answers uploads with new job ids, and polls and result fetches from scripts.

    Each script is consumed one reply per request; its last reply repeats.
    """

    def __init__(
        self,
        statuses: Sequence[Reply] = (),
        results: Sequence[Reply] = (),
        uploads: Sequence[Reply] = (),
        on_upload: Callable[[str], None] | None = None,
    ) -> None:
        self.statuses = list(statuses or [job("SUCCESS")])
        self.results = list(results or [markdown()])
        self.uploads = list(uploads)
        self.on_upload = on_upload
        self.log: list[tuple[float, HttpRequest]] = []

    def times(self, kind: str) -> list[float]:
        return [at for at, request in self.log if _kind(request) == kind]

    def requests(self, kind: str) -> list[HttpRequest]:
        return [request for _, request in self.log if _kind(request) == kind]

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.log.append((asyncio.get_running_loop().time(), request))
        kind = _kind(request)
        if kind == "upload":
            if self.uploads:
                return await self._play(self.uploads)
            job_id = f"job-{len(self.requests('upload'))}"
            if self.on_upload is not None:
                self.on_upload(job_id)
            return reply(200, {"id": job_id, "status": "PENDING"})
        return await self._play(self.statuses if kind == "status" else self.results)

    @staticmethod
    async def _play(script: list[Reply]) -> HttpResponse:
        next_reply = script.pop(0) if len(script) > 1 else script[0]
        if next_reply is HANG:
            await asyncio.sleep(3600)
        if isinstance(next_reply, Exception):
            raise next_reply
        assert isinstance(next_reply, HttpResponse)
        return next_reply


def _kind(request: HttpRequest) -> str:
    if request.url.endswith("/api/v1/parsing/upload"):
        return "upload"
    return "result" if "/result/" in request.url else "status"


def config(**overrides: Any) -> LlamaParseConfig:
    """Pinned to API v1: this file plays v1's wire (v2 is in test_llamaparse_v2)."""
    return LlamaParseConfig(api_key=KEY, base_url=BASE, **{"api_version": "v1", **overrides})


def text_doc(text: str = "hello world", name: str = "a.txt") -> Document:
    return Document(name, text.encode(), "text/plain")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return run_virtual(main())


def parse_once(
    server: ScriptedLlamaCloud, document: Document | None = None, **overrides: Any
) -> tuple[ParsedDocument, float]:
    async def main() -> tuple[ParsedDocument, float]:
        client = LlamaParse(config(**overrides), server)
        parsed = await client.parse(document or text_doc())
        return parsed, asyncio.get_running_loop().time()

    return run(main)


def parse_error(server: ScriptedLlamaCloud, **overrides: Any) -> tuple[ProviderError, float]:
    async def main() -> tuple[ProviderError, float]:
        with pytest.raises(ProviderError) as raised:
            await LlamaParse(config(**overrides), server).parse(text_doc())
        return raised.value, asyncio.get_running_loop().time()

    return run(main)


def multipart_fields(request: HttpRequest) -> dict[str, EmailMessage]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode() + request.body
    )
    assert isinstance(message, EmailMessage)
    parts: dict[str, EmailMessage] = {}
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        parts[name] = part
    return parts


def field_text(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


# -- configuration -----------------------------------------------------------


def test_config_from_env_reads_the_llama_cloud_variables_and_hides_secrets() -> None:
    cfg = LlamaParseConfig.from_env(
        {
            "LLAMA_CLOUD_API_KEY": KEY,
            "LLAMA_CLOUD_BASE_URL": "https://api.cloud.eu.llamaindex.ai/",
            "LLAMA_CLOUD_WEBHOOK_URL": "https://hooks.example.com/llamaparse",
            "LLAMA_CLOUD_WEBHOOK_SECRET": "hook-secret",
        }
    )
    assert cfg.base_url == "https://api.cloud.eu.llamaindex.ai"
    assert cfg.webhook_url == "https://hooks.example.com/llamaparse"
    assert (cfg.api_key, cfg.webhook_secret) == (KEY, "hook-secret")
    assert KEY not in repr(cfg)
    assert "hook-secret" not in repr(cfg)
    defaults = LlamaParseConfig.from_env({"LLAMA_CLOUD_WEBHOOK_URL": "  "})
    assert (defaults.api_key, defaults.base_url, defaults.webhook_url) == (
        "",
        DEFAULT_BASE_URL,
        None,
    )
    assert (defaults.read_timeout_s, defaults.webhook_deadline_s, defaults.job_timeout_s) == (
        60.0,
        60.0,
        1800.0,
    )


def test_a_base_url_without_a_scheme_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="LLAMA_CLOUD_BASE_URL"):
        LlamaParseConfig.from_env({"LLAMA_CLOUD_BASE_URL": "api.cloud.llamaindex.ai"})


def test_a_missing_key_fails_the_real_call_as_a_configuration_error() -> None:
    server = ScriptedLlamaCloud()

    async def main() -> MissingApiKey:
        client = LlamaParse(LlamaParseConfig(base_url=BASE, api_version="v1"), server)
        with pytest.raises(MissingApiKey) as raised:
            await client.parse(text_doc())
        return raised.value

    error = run(main)
    assert isinstance(error, ConfigError)
    assert "LLAMA_CLOUD_API_KEY" in str(error)
    assert classify(error) is ErrorClass.CONFIGURATION
    assert server.log == []


# -- upload ------------------------------------------------------------------


def test_the_upload_is_multipart_with_file_language_and_webhook_fields() -> None:
    server = ScriptedLlamaCloud()
    document = Document("report.pdf", make_pdf(["Hello"]), "application/pdf")
    parse_once(
        server,
        document,
        webhook_url="https://hooks.example.com/lp",
        webhook_secret="hook-secret",
        webhook_deadline_s=0.5,
    )
    (upload,) = server.requests("upload")
    assert upload.method == "POST"
    assert upload.url == f"{BASE}/api/v1/parsing/upload"
    assert upload.headers["Authorization"] == f"Bearer {KEY}"
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    fields = multipart_fields(upload)
    assert fields["file"].get_filename() == "report.pdf"
    assert fields["file"].get_content_type() == "application/pdf"
    assert fields["file"].get_payload(decode=True) == document.content
    assert field_text(fields["language"]) == "en"
    assert field_text(fields["webhook_url"]) == "https://hooks.example.com/lp"
    (configuration,) = orjson.loads(field_text(fields["webhook_configurations"]))
    assert configuration["webhook_url"] == "https://hooks.example.com/lp"
    assert configuration["webhook_signing_secret"] == "hook-secret"
    assert configuration["webhook_output_format"] == "json"
    assert "parse.success" in configuration["webhook_events"]


def test_without_a_webhook_url_only_file_and_language_are_sent() -> None:
    server = ScriptedLlamaCloud()
    parse_once(server)
    assert set(multipart_fields(server.requests("upload")[0])) == {"file", "language"}
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for _, r in server.log)


def test_a_refused_key_names_the_variable_and_never_shows_the_key(events: Events) -> None:
    echo = reply(401, {"detail": f"Invalid API key {KEY}"}, {"x-request-id": "req-9"})
    error, _ = parse_error(ScriptedLlamaCloud(uploads=[echo]))
    assert error.status == 401
    assert "LLAMA_CLOUD_API_KEY" in error.message
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert classify(error) is ErrorClass.CONFIGURATION
    (logged,) = events.of("provider.error")
    assert logged["provider"] == "llamaparse"
    assert (logged["status"], logged["request_id"]) == (401, "req-9")
    assert KEY not in repr(logged)


def test_an_exhausted_plan_is_a_quota_error() -> None:
    plan = reply(402, {"detail": "You've exceeded the maximum number of credits for your plan"})
    error, _ = parse_error(ScriptedLlamaCloud(uploads=[plan]))
    assert classify(error) is ErrorClass.QUOTA
    assert "maximum number of credits" in error.message


def test_a_failing_upload_is_a_provider_failure_with_its_retry_after() -> None:
    busy = reply(500, {"detail": "Internal Server Error"}, {"retry-after": "7"})
    error, _ = parse_error(ScriptedLlamaCloud(uploads=[busy]))
    assert (error.status, error.retry_after_s) == (500, 7.0)
    assert classify(error) is ErrorClass.FAILURE


def test_an_upload_that_never_answers_times_out_with_no_status() -> None:
    error, failed_at = parse_error(ScriptedLlamaCloud(uploads=[HANG]), read_timeout_s=60)
    assert (error.status, error.code, failed_at) == (None, "timeout", 60.0)


def test_uploads_are_throttled_to_15_in_any_10_seconds() -> None:
    server = ScriptedLlamaCloud()

    async def main() -> None:
        client = LlamaParse(config(), server)
        docs = [text_doc(f"document {i}") for i in range(45)]
        await asyncio.gather(*(client.parse(d) for d in docs))

    run(main)
    times = server.times("upload")
    assert len(times) == 45
    busiest = max(sum(1 for t in times if start <= t < start + 10) for start in times)
    assert busiest <= 15
    # ...while keeping up nearly the full allowance: 44 more uploads at 1.4/s.
    assert times[-1] == pytest.approx(44 / 1.4)


def test_a_given_upload_bucket_replaces_the_default() -> None:
    server = ScriptedLlamaCloud()

    async def main() -> None:
        client = LlamaParse(config(), server, upload_bucket=TokenBucket(2, 0.5))
        await asyncio.gather(*(client.parse(text_doc(f"d{i}")) for i in range(4)))

    run(main)
    assert server.times("upload") == pytest.approx([0.0, 0.0, 2.0, 4.0])


# -- polling -----------------------------------------------------------------


def test_polls_sleep_first_then_back_off_linearly_to_five_seconds() -> None:
    server = ScriptedLlamaCloud(
        statuses=[job("PENDING")] * 4 + [job("RUNNING")] * 4 + [job("SUCCESS")]
    )
    _, done_at = parse_once(server)
    polls = server.times("status")
    assert polls == [1.0, 3.0, 6.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
    gaps = [b - a for a, b in zip([0.0, *polls], polls, strict=False)]
    assert gaps == [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert done_at == 35.0


def test_a_404_result_just_after_success_means_poll_again() -> None:
    not_yet = reply(
        404, {"detail": "Result not found. Check job status to see if it has completed."}
    )
    server = ScriptedLlamaCloud(results=[not_yet, not_yet, markdown("# Done\n")])
    parsed, done_at = parse_once(server)
    assert parsed.markdown == "# Done\n"
    assert server.times("result") == [1.0, 3.0, 6.0]
    assert done_at == 6.0


def test_polling_rides_out_429_5xx_lost_connections_timeouts_and_garbage() -> None:
    server = ScriptedLlamaCloud(
        statuses=[
            reply(429, {"detail": "Too Many Requests"}),
            reply(503, b"<html>Service Unavailable</html>"),
            TransportError("connection reset"),
            aiohttp.ClientPayloadError("response body cut short"),
            HANG,
            reply(200, b"not json"),
            job("PENDING"),
            job("SUCCESS"),
        ]
    )
    parsed, _ = parse_once(server, read_timeout_s=30)
    assert parsed.markdown == "# Parsed\n"
    assert len(server.requests("status")) == 8
    assert server.times("status")[5] == 15.0 + 30.0 + 5.0  # the hung poll cost its read timeout


def test_a_refusal_while_polling_is_raised_at_once() -> None:
    server = ScriptedLlamaCloud(statuses=[job("PENDING"), reply(403, {"detail": "Forbidden"})])
    error, failed_at = parse_error(server)
    assert (error.status, failed_at) == (403, 3.0)
    assert "LLAMA_CLOUD_API_KEY" in error.message


def test_success_settles_the_cost_from_the_pages_in_the_job_metadata() -> None:
    server = ScriptedLlamaCloud(results=[markdown("# R\n", job_pages=4)])
    parsed, _ = parse_once(server)
    assert (parsed.pages, parsed.job_id, parsed.failed_pages) == (4, "job-1", [])
    assert parsed.cost_usd == pytest.approx(parse_cost_usd(4))
    assert parsed.sha256 == text_doc().sha256
    assert parsed.tokens == 0


def test_reported_credits_win_and_a_service_cache_hit_is_free() -> None:
    credits, _ = parse_once(ScriptedLlamaCloud(results=[markdown(credits_used=30)]))
    assert credits.cost_usd == pytest.approx(30 * USD_PER_CREDIT)
    cache_hit, _ = parse_once(ScriptedLlamaCloud(results=[markdown(job_is_cache_hit=True)]))
    assert cache_hit.cost_usd == 0.0


def test_partial_success_completes_with_its_failed_pages() -> None:
    server = ScriptedLlamaCloud(
        statuses=[job("PARTIAL_SUCCESS")],
        results=[markdown("p1\n---\np3\n", job_pages=3, failed_pages=[2])],
    )
    parsed, _ = parse_once(server)
    assert (parsed.markdown, parsed.pages, parsed.failed_pages) == ("p1\n---\np3\n", 3, [2])


def test_a_job_error_is_a_422_document_error_with_the_service_code() -> None:
    failed = job("ERROR", error_code="NO_DATA_FOUND_IN_FILE", error_message="empty file")
    error, failed_at = parse_error(ScriptedLlamaCloud(statuses=[job("PENDING"), failed]))
    assert (error.status, error.code, failed_at) == (422, "NO_DATA_FOUND_IN_FILE", 3.0)
    assert "empty file" in error.message
    assert classify(error) is ErrorClass.CALLER
    unexplained, _ = parse_error(ScriptedLlamaCloud(statuses=[job("ERROR")]))
    assert unexplained.code == "parse_error"


@pytest.mark.parametrize("spelling", ["CANCELLED", "CANCELED", "cancelled"])
def test_a_cancelled_job_is_a_422_cancelled_in_every_spelling(spelling: str) -> None:
    error, _ = parse_error(ScriptedLlamaCloud(statuses=[job(spelling)]))
    assert (error.status, error.code) == (422, "cancelled")
    assert classify(error) is ErrorClass.CALLER


def test_a_job_that_never_finishes_times_out_as_a_failure() -> None:
    server = ScriptedLlamaCloud(statuses=[job("PENDING")])
    error, failed_at = parse_error(server)
    assert (error.status, error.code, failed_at) == (None, "job_timeout", 1800.0)
    assert classify(error) is ErrorClass.FAILURE
    assert max(server.times("status")) < 1800.0


# -- webhooks ----------------------------------------------------------------


def webhook_run(
    server_events: Callable[[WebhookInbox], Callable[[str], None]],
    server: ScriptedLlamaCloud,
    **overrides: Any,
) -> tuple[ParsedDocument | ProviderError, float]:
    async def main() -> tuple[ParsedDocument | ProviderError, float]:
        inbox = WebhookInbox()
        server.on_upload = server_events(inbox)
        cfg = config(webhook_url="https://hooks.example.com/lp", **overrides)
        client = LlamaParse(cfg, server, inbox=inbox)
        try:
            outcome: ParsedDocument | ProviderError = await client.parse(text_doc())
        except ProviderError as exc:
            outcome = exc
        return outcome, asyncio.get_running_loop().time()

    return run(main)


def deliver_after(delay_s: float, event: str, **data: Any) -> Callable[[WebhookInbox], Any]:
    def schedule(inbox: WebhookInbox) -> Callable[[str], None]:
        def on_upload(job_id: str) -> None:
            body = {"event_type": event, "job_id": job_id, "data": data}
            delivered = parse_webhook_body(orjson.dumps(body))
            asyncio.get_running_loop().call_later(delay_s, inbox.accept, delivered)

        return on_upload

    return schedule


def test_a_webhook_delivery_completes_the_job_without_polling() -> None:
    server = ScriptedLlamaCloud()
    event = deliver_after(3.0, "parse.success", md="# Hooked\n", job_metadata={"job_pages": 5})
    outcome, done_at = webhook_run(event, server)
    assert isinstance(outcome, ParsedDocument)
    assert (outcome.markdown, outcome.pages, done_at) == ("# Hooked\n", 5, 3.0)
    assert server.times("status") == []
    assert server.times("result") == []


def test_a_partial_success_webhook_reads_failed_pages_from_the_page_list() -> None:
    pages = [{"page": 1, "md": "a"}, {"page": 2, "status": "ERROR"}, {"page": 3, "md": "c"}]
    event = deliver_after(1.0, "parse.partial_success", md="a\nc\n", jsonOutput=pages)
    outcome, _ = webhook_run(event, ScriptedLlamaCloud())
    assert isinstance(outcome, ParsedDocument)
    assert (outcome.pages, outcome.failed_pages) == (3, [2])


def test_a_job_error_webhook_fails_without_polling() -> None:
    server = ScriptedLlamaCloud()
    event = deliver_after(2.0, "parse.error", error_code="EXPIRED")
    outcome, failed_at = webhook_run(event, server)
    assert isinstance(outcome, ProviderError)
    assert (outcome.status, outcome.code, failed_at) == (422, "EXPIRED", 2.0)
    assert [_kind(request) for _, request in server.log] == ["upload"]


def test_no_webhook_within_the_deadline_falls_back_to_polling() -> None:
    server = ScriptedLlamaCloud(statuses=[job("PENDING"), job("SUCCESS")])
    outcome, done_at = webhook_run(lambda inbox: lambda job_id: None, server)
    assert isinstance(outcome, ParsedDocument)
    assert server.times("status") == [61.0, 63.0]
    assert done_at == 63.0


def test_a_webhook_without_markdown_is_completed_by_polling() -> None:
    server = ScriptedLlamaCloud()
    outcome, done_at = webhook_run(deliver_after(2.0, "parse.success"), server)
    assert isinstance(outcome, ParsedDocument)
    assert outcome.markdown == "# Parsed\n"
    assert (server.times("status"), done_at) == ([3.0], 3.0)


# -- dedup -------------------------------------------------------------------


def test_concurrent_parses_of_the_same_content_share_one_job_and_one_charge() -> None:
    server = ScriptedLlamaCloud(statuses=[job("PENDING"), job("SUCCESS")])

    async def main() -> tuple[list[ParsedDocument], ParsedDocument]:
        client = LlamaParse(config(), server)
        same = [Document(f"copy-{i}.txt", b"identical", "text/plain") for i in range(5)]
        racing = await asyncio.gather(*(client.parse(d) for d in same))
        later = await client.parse(Document("again.txt", b"identical", "text/plain"))
        return list(racing), later

    racing, later = run(main)
    assert len(server.requests("upload")) == 1
    assert {p.markdown for p in racing} == {"# Parsed\n"}
    assert sorted(p.cost_usd for p in racing) == [0.0] * 4 + [pytest.approx(parse_cost_usd(2))]
    assert (later.job_id, later.cost_usd) == ("job-1", 0.0)


def test_a_failed_job_is_not_cached_so_the_next_parse_tries_again() -> None:
    server = ScriptedLlamaCloud(statuses=[job("ERROR"), job("SUCCESS")])

    async def main() -> ParsedDocument:
        client = LlamaParse(config(), server)
        results = await asyncio.gather(
            client.parse(text_doc()), client.parse(text_doc()), return_exceptions=True
        )
        assert all(isinstance(r, ProviderError) and r.status == 422 for r in results)
        return await client.parse(text_doc())

    assert run(main).markdown == "# Parsed\n"
    assert len(server.requests("upload")) == 2


# -- estimates -----------------------------------------------------------------


def test_estimates_count_pdf_pages_and_otherwise_3000_bytes_a_page() -> None:
    pdf = Document("d.pdf", make_pdf(["one", "two", "three"]), "application/pdf")
    assert estimate_pages(pdf) == 3
    assert estimate_cost_usd(pdf) == pytest.approx(parse_cost_usd(3))
    assert estimate_pages(text_doc("x" * 3000)) == 1
    assert estimate_pages(text_doc("x" * 3001)) == 2
    assert estimate_pages(text_doc("")) == 1
    broken = Document("bad.pdf", b"%PDF-1.4 garbage" * 400, "application/pdf")
    assert estimate_pages(broken) == 3
    assert LlamaParse(config(), ScriptedLlamaCloud()).estimate_cost_usd(pdf) == estimate_cost_usd(
        pdf
    )


# -- behind the router -----------------------------------------------------------


def test_behind_a_hybrid_router_a_missing_key_is_raised_not_hidden_by_the_mock() -> None:
    server = ScriptedLlamaCloud()

    async def main() -> Routed[Any]:
        router = Router(ServiceMode.HYBRID)
        mock = MockParser()
        unkeyed = LlamaParse(LlamaParseConfig(base_url=BASE, api_version="v1"), server)
        router.register("parse", real=unkeyed.parse, mock=mock.parse, guard=Guard("llamaparse"))
        keyed = LlamaParse(config(), server)
        router.register("keyed", real=keyed.parse, mock=mock.parse, guard=Guard("keyed"))
        with pytest.raises(MissingApiKey):
            await router.call("parse", text_doc(), cost=estimate_cost_usd(text_doc()))
        return await router.call("keyed", text_doc(), cost=estimate_cost_usd(text_doc()))

    served = run(main)
    assert (served.path, served.value.markdown) == ("real", "# Parsed\n")
    assert len(server.requests("upload")) == 1
