"""The LlamaParse client (LlamaCloud v1): upload, wait for the job, fetch markdown.

`LlamaParse.parse` is one unit of work for a `Router`/`Guard`: it returns a
`ParsedDocument` whose `cost_usd` settles the budget, or raises
`ProviderError` for the guard to classify. How a parse goes:

1. Dedup: a result cached for the same content (sha256) is returned at no
   cost, and concurrent parses of the same content share one job.
2. Upload: a multipart POST, throttled on our side (the service allows 15
   uploads per 10 s per organization).
3. Completion: the job's webhook, if one is configured and an inbox
   receives it in time; otherwise polling, sleeping before the first poll
   and backing off linearly, as the LlamaCloud SDKs do. Polling rides out
   429s, 5xx and network errors until the job's overall deadline.
4. Result: the markdown, the pages that failed (PARTIAL_SUCCESS), and the
   cost from the job's metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from io import BytesIO
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
import orjson
from pypdf import PdfReader

from providers import LLAMAPARSE
from providers.http import correlated, error_from_response, reported
from providers.llamaparse.webhooks import WebhookInbox
from providers.pricing import USD_PER_CREDIT, parse_cost_usd
from providers.transport import HttpRequest, HttpResponse, Transport
from resilience import ConfigError, ErrorClass, ProviderError, TokenBucket, classify, correlation
from resilience.clock import wall_time

DEFAULT_BASE_URL: Final = "https://api.cloud.llamaindex.ai"
UPLOAD_PATH: Final = "/api/v1/parsing/upload"
JOB_PATH: Final = "/api/v1/parsing/job/{job_id}"
RESULT_PATH: Final = JOB_PATH + "/result/markdown"

CHARS_PER_PAGE: Final = 3000
"""Pages estimated for a non-PDF document: one per 3,000 bytes, rounded up."""

WEBHOOK_EVENTS: Final = ("parse.success", "parse.partial_success", "parse.error", "parse.cancelled")
"""The only events the client waits for; earlier ones would be noise."""

_KEEP_POLLING: Final = (ErrorClass.FAILURE, ErrorClass.RATE_LIMITED)
_STATUS_ALIASES: Final = {"CANCELED": "CANCELLED", "COMPLETED": "SUCCESS", "FAILED": "ERROR"}
"""LCS spells it CANCELED; v2 says COMPLETED and FAILED. One vocabulary inside."""


class MissingApiKey(ConfigError, ProviderError):
    """LLAMA_CLOUD_API_KEY is unset, found when a real call is about to be made.

    It is also a `ProviderError` with status 401 so the guard classifies it
    as a configuration error: raised at once, never retried, and never hidden
    behind a mock in HYBRID mode (a plain ConfigError would count as an
    unexpected failure, be retried and trip the breaker).
    """

    def __init__(self) -> None:
        ProviderError.__init__(
            self,
            "llamaparse: LLAMA_CLOUD_API_KEY is not set",
            status=401,
            code="missing_api_key",
        )


@dataclass(frozen=True, slots=True)
class LlamaParseConfig:
    """Where and how to call LlamaParse. The key and webhook secret never show in a repr.

    `webhook_deadline_s` is how long to wait for the webhook before polling;
    `job_timeout_s` is the overall deadline from upload (the service itself
    stops jobs at 30 minutes). Polls sleep `poll_initial_s`, then `poll_step_s`
    more after each poll, up to `poll_max_s`.
    """

    api_key: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    read_timeout_s: float = 60.0
    webhook_deadline_s: float = 60.0
    job_timeout_s: float = 1800.0
    poll_initial_s: float = 1.0
    poll_step_s: float = 1.0
    poll_max_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LlamaParseConfig:
        """Read the LLAMA_CLOUD_* variables; empty values count as unset.

        A missing key is not an error here: mock mode needs none. It is
        raised (`MissingApiKey`) when a real call is made.
        """

        def get(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        base_url = get("LLAMA_CLOUD_BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLAMA_CLOUD_BASE_URL must be an http(s) URL, got {base_url!r}")
        return cls(
            api_key=get("LLAMA_CLOUD_API_KEY") or "",
            base_url=base_url.rstrip("/"),
            webhook_url=get("LLAMA_CLOUD_WEBHOOK_URL"),
            webhook_secret=get("LLAMA_CLOUD_WEBHOOK_SECRET"),
        )


@dataclass(frozen=True, slots=True)
class Document:
    """A document to parse. `mime_type` may carry parameters (`text/plain; charset=...`)."""

    name: str
    content: bytes = field(repr=False)
    mime_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def media_type(self) -> str:
        """The MIME type without parameters, lower case."""
        return self.mime_type.partition(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """A parse result. `failed_pages` are 1-based; `tokens` is 0 (the budget reads it).

    `cost_usd` is what this call cost: 0 for a result served from a cache or
    shared with a concurrent parse of the same content, so a budget is
    charged once per job.
    """

    markdown: str = field(repr=False)
    pages: int
    job_id: str
    sha256: str
    cost_usd: float = 0.0
    failed_pages: list[int] = field(default_factory=list)
    tokens: int = 0


class ParseCache(Protocol):
    """Parse results by content sha256. Async, so a database can stand behind it."""

    async def get(self, sha256: str) -> ParsedDocument | None: ...

    async def put(self, sha256: str, parsed: ParsedDocument) -> None: ...


class MemoryParseCache:
    """The default `ParseCache`: the `max_entries` most recently used results."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("MemoryParseCache max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ParsedDocument] = OrderedDict()

    async def get(self, sha256: str) -> ParsedDocument | None:
        parsed = self._entries.get(sha256)
        if parsed is not None:
            self._entries.move_to_end(sha256)
        return parsed

    async def put(self, sha256: str, parsed: ParsedDocument) -> None:
        self._entries[sha256] = parsed
        self._entries.move_to_end(sha256)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def estimate_pages(document: Document) -> int:
    """Pages a document will bill: a PDF's page count, else one per `CHARS_PER_PAGE` bytes.

    Bytes, not characters, so multi-byte text over-estimates a little, which
    is the safe side for a budget. An unreadable PDF falls back to the byte
    rule: an estimate must never fail the call it prices.
    """
    if document.media_type == "application/pdf":
        try:
            return max(1, len(PdfReader(BytesIO(document.content)).pages))
        except Exception:  # pypdf raises many types for damaged files
            pass
    return max(1, math.ceil(len(document.content) / CHARS_PER_PAGE))


def estimate_cost_usd(document: Document) -> float:
    """The dollars to reserve for parsing `document` (the router's `cost=`).

    Priced at the default tier: v1 uploads send no parse mode, so the service
    parses in its default mode, billed at the cost-effective rate [inferred].
    """
    return parse_cost_usd(estimate_pages(document))


def _settled_cost_usd(pages: int, metadata: Mapping[str, Any]) -> float:
    """Credits the service reports, else nothing for a cache hit, else the page rate.

    Failed pages of a PARTIAL_SUCCESS are charged too: the service does not
    say it refunds them, and over-charging a budget is the safe error.
    """
    credits = metadata.get("credits_used", metadata.get("job_credits_usage"))
    if isinstance(credits, int | float) and not isinstance(credits, bool) and credits >= 0:
        return float(credits) * USD_PER_CREDIT
    if metadata.get("job_is_cache_hit") is True:
        return 0.0
    return parse_cost_usd(pages)


def _page_number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _failed_pages(metadata: Mapping[str, Any], page_list: list[Any]) -> list[int]:
    """Failed 1-based pages: `job_metadata.failed_pages` if given, else from the page list.

    A page in the list failed when it says `success: false` (v2) or has
    status ERROR/FAILED; its number is `page` (v1) or `page_number` (v2).
    """
    listed = metadata.get("failed_pages")
    if isinstance(listed, list):
        return sorted(n for n in map(_page_number, listed) if n is not None)
    failed: list[int] = []
    for page in page_list:
        if not isinstance(page, dict):
            continue
        status = str(page.get("status", "")).upper()
        if page.get("success") is False or status in ("ERROR", "FAILED"):
            number = _page_number(page.get("page", page.get("page_number")))
            if number is not None:
                failed.append(number)
    return sorted(failed)


@dataclass(frozen=True, slots=True)
class _Finished:
    """A successful job's output, from the result endpoint or a webhook."""

    job_id: str
    markdown: str
    metadata: Mapping[str, Any]
    page_list: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[ParsedDocument]
    billed: bool = False


def _status(value: Any) -> str:
    status = str(value or "").upper()
    return _STATUS_ALIASES.get(status, status)


class LlamaParse:
    """The real LlamaParse provider. See the module docstring for the flow.

    `inbox` receives the webhooks the API server verified; without it (or
    without `config.webhook_url`) jobs are polled. `upload_bucket` defaults
    to 1 upload at once refilled at 1.4 per second: a bucket of capacity c
    and rate r grants at most c + 10 r in any 10 s, so this never exceeds the
    service's 15 per 10 s, where a bucket of 15 at 1.5/s could send 29 in
    the first 10 s after a quiet spell. `clock` is wall time, used only to
    read HTTP-date Retry-After headers.
    """

    def __init__(
        self,
        config: LlamaParseConfig,
        transport: Transport,
        *,
        inbox: WebhookInbox | None = None,
        cache: ParseCache | None = None,
        upload_bucket: TokenBucket | None = None,
        clock: Callable[[], float] = wall_time,
    ) -> None:
        self.config = config
        self._transport = transport
        self._inbox = inbox
        self._cache: ParseCache = cache if cache is not None else MemoryParseCache()
        self._uploads = (
            upload_bucket
            if upload_bucket is not None
            else TokenBucket(1, 1.4, name="llamaparse-uploads")
        )
        self._clock = clock
        self._inflight: dict[str, _InFlight] = {}
        self._awaiting: set[str] = set()

    def awaiting(self, job_id: str) -> bool:
        """Is `job_id` a LlamaParse job this client uploaded and is still waiting on?

        The API server's webhook endpoint asks this to tell our jobs from
        strangers' (404). True from the upload's answer until the parse
        returns or raises.
        """
        return job_id in self._awaiting

    @property
    def inbox(self) -> WebhookInbox | None:
        """Where this client expects verified webhooks (None: it polls)."""
        return self._inbox

    def __repr__(self) -> str:
        return f"LlamaParse({self.config.base_url!r})"

    def estimate_cost_usd(self, document: Document) -> float:
        return estimate_cost_usd(document)

    async def parse(self, document: Document) -> ParsedDocument:
        """Parse `document` to markdown, once per distinct content.

        Raises `ProviderError`: 422 when the service could not parse the
        document (status ERROR, code from the job) or the job was cancelled
        (code "cancelled"); status None with code "job_timeout" when the job
        outlives `job_timeout_s`; the service's own status for a refused
        upload. A cancelled job is a 422, not a 409: 409 counts as a provider
        failure that is retried and trips the breaker, while a cancellation
        is somebody's decision about this document that retrying would undo.
        """
        sha256 = document.sha256
        flight = self._inflight.get(sha256)
        if flight is None:
            cached = await self._cache.get(sha256)
            if cached is not None:
                return replace(cached, cost_usd=0.0)
            flight = self._inflight.get(sha256)  # started while we read the cache?
        if flight is None:
            task = asyncio.get_running_loop().create_task(
                self._parse_and_cache(document, sha256, correlation.current())
            )
            flight = self._inflight[sha256] = _InFlight(task)
            task.add_done_callback(partial(self._landed, sha256))
        # Shielded: one caller giving up must not cancel the job the others share.
        parsed = await asyncio.shield(flight.task)
        if flight.billed:
            return replace(parsed, cost_usd=0.0)
        flight.billed = True
        return parsed

    def _landed(self, sha256: str, task: asyncio.Task[ParsedDocument]) -> None:
        flight = self._inflight.get(sha256)
        if flight is not None and flight.task is task:
            del self._inflight[sha256]
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn if every caller left

    async def _parse_and_cache(
        self, document: Document, sha256: str, cid: str | None
    ) -> ParsedDocument:
        key = self.config.api_key
        if not key:
            raise MissingApiKey()
        await self._uploads.acquire()
        job_id = await self._upload(document, key, cid)
        timeout_s = self.config.job_timeout_s
        self._awaiting.add(job_id)
        try:
            async with asyncio.timeout(timeout_s) as scope:
                finished = await self._complete(job_id, key, cid)
        except TimeoutError:
            if not scope.expired():
                raise
            raise reported(
                LLAMAPARSE,
                ProviderError(
                    f"llamaparse: job {job_id} did not finish within {timeout_s:g}s",
                    code="job_timeout",
                ),
                cid,
            ) from None
        finally:
            self._awaiting.discard(job_id)
        metadata = finished.metadata
        pages = _page_number(metadata.get("job_pages")) or len(finished.page_list)
        pages = pages or estimate_pages(document)
        parsed = ParsedDocument(
            markdown=finished.markdown,
            pages=pages,
            job_id=job_id,
            sha256=sha256,
            cost_usd=_settled_cost_usd(pages, metadata),
            failed_pages=_failed_pages(metadata, finished.page_list),
        )
        await self._cache.put(sha256, parsed)
        return parsed

    # -- upload ----------------------------------------------------------------

    def _form(self, document: Document) -> aiohttp.MultipartWriter:
        """The upload body.

        The boundary is 128 bits of the content's hash: deterministic, never
        inside the file, and within RFC 2046's 70 characters.
        """
        form = aiohttp.MultipartWriter("form-data", boundary=f"breakwater-{document.sha256[:32]}")
        part = form.append(document.content, {"Content-Type": document.mime_type})
        part.set_content_disposition("form-data", name="file", filename=document.name)
        fields = {"language": "en"}
        config = self.config
        if config.webhook_url:
            fields["webhook_url"] = config.webhook_url
            if config.webhook_secret:
                # Only a webhook configuration makes LlamaCloud sign deliveries
                # (LC-Signature); the bare v1 webhook_url is unsigned.
                fields["webhook_configurations"] = orjson.dumps(
                    [
                        {
                            "webhook_url": config.webhook_url,
                            "webhook_events": list(WEBHOOK_EVENTS),
                            "webhook_output_format": "json",
                            "webhook_signing_secret": config.webhook_secret,
                        }
                    ]
                ).decode()
        for name, value in fields.items():
            form.append(value).set_content_disposition("form-data", name=name)
        return form

    async def _upload(self, document: Document, key: str, cid: str | None) -> str:
        form = self._form(document)
        headers = {**self._headers(key), "Content-Type": form.content_type}
        request = HttpRequest("POST", self._url(UPLOAD_PATH), headers, await form.as_bytes())
        response = await self._send(request, cid)
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        job_id = self._json_object(response, cid).get("id")
        if not isinstance(job_id, str) or not job_id:
            raise reported(
                LLAMAPARSE,
                ProviderError("llamaparse: upload reply has no job id", code="bad_response"),
                cid,
            )
        return job_id

    # -- completion --------------------------------------------------------------

    async def _complete(self, job_id: str, key: str, cid: str | None) -> _Finished:
        inbox = self._inbox
        if inbox is not None and self.config.webhook_url:
            event = await inbox.wait(job_id, self.config.webhook_deadline_s)
            if event is not None:
                finished = self._from_event(job_id, event.status, event.data, cid)
                if finished is not None:
                    return finished
        return await self._poll(job_id, key, cid)

    def _from_event(
        self, job_id: str, status: str, data: Mapping[str, Any], cid: str | None
    ) -> _Finished | None:
        """A webhook's outcome; None when it lacks the markdown and polling must fetch it.

        Our event `data` carries `md`, `job_metadata`, optionally the page list
        (`json`, or `jsonOutput` in older LlamaCloud docs), and for errors
        `error_code` and `error_message`.
        """
        status = _status(status)
        self._raise_if_failed(job_id, status, data, cid)
        markdown = data.get("md")
        if status not in ("SUCCESS", "PARTIAL_SUCCESS") or not isinstance(markdown, str):
            return None
        metadata = data.get("job_metadata")
        pages = data.get("json", data.get("jsonOutput"))
        return _Finished(
            job_id,
            markdown,
            metadata if isinstance(metadata, dict) else {},
            pages if isinstance(pages, list) else [],
        )

    async def _poll(self, job_id: str, key: str, cid: str | None) -> _Finished:
        """Poll until the job ends; the caller's deadline bounds the loop.

        Errors that say the provider is busy or unwell (429, 5xx, timeouts,
        lost connections, garbled replies) only mean "ask again later".
        Anything else (401, 403, 402, an unknown job) is raised.
        """
        config = self.config
        interval = min(config.poll_initial_s, config.poll_max_s)
        while True:
            await asyncio.sleep(interval)
            interval = min(interval + config.poll_step_s, config.poll_max_s)
            try:
                finished = await self._check(job_id, key, cid)
            except ProviderError as exc:
                if classify(exc) not in _KEEP_POLLING:
                    raise
                continue
            if finished is not None:
                return finished

    async def _check(self, job_id: str, key: str, cid: str | None) -> _Finished | None:
        url = self._url(JOB_PATH.format(job_id=quote(job_id, safe="")))
        response = await self._send(HttpRequest("GET", url, self._headers(key)), cid)
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        job = self._json_object(response, cid)
        status = _status(job.get("status"))
        self._raise_if_failed(job_id, status, job, cid)
        if status not in ("SUCCESS", "PARTIAL_SUCCESS"):
            return None  # PENDING, RUNNING, or a status we do not know yet
        return await self._result(job_id, key, cid)

    async def _result(self, job_id: str, key: str, cid: str | None) -> _Finished | None:
        url = self._url(RESULT_PATH.format(job_id=quote(job_id, safe="")))
        response = await self._send(HttpRequest("GET", url, self._headers(key)), cid)
        if response.status == 404:
            return None  # the result is not stored yet: normal just after SUCCESS
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        result = self._json_object(response, cid)
        markdown, metadata = result.get("markdown"), result.get("job_metadata")
        if not isinstance(markdown, str):
            raise reported(
                LLAMAPARSE,
                ProviderError("llamaparse: result has no markdown", code="bad_response"),
                cid,
            )
        return _Finished(job_id, markdown, metadata if isinstance(metadata, dict) else {})

    def _raise_if_failed(
        self, job_id: str, status: str, fields: Mapping[str, Any], cid: str | None
    ) -> None:
        if status == "ERROR":
            code = fields.get("error_code")
            detail = fields.get("error_message") or "the service could not parse the document"
            raise reported(
                LLAMAPARSE,
                ProviderError(
                    f"llamaparse: job {job_id} failed: {detail}",
                    status=422,
                    code=code if isinstance(code, str) and code else "parse_error",
                ),
                cid,
            )
        if status == "CANCELLED":
            raise reported(
                LLAMAPARSE,
                ProviderError(f"llamaparse: job {job_id} was cancelled", 422, code="cancelled"),
                cid,
            )

    # -- HTTP --------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    @staticmethod
    def _headers(key: str) -> Mapping[str, str]:
        """Auth, and the bound correlation id (the parse's task inherits its caller's)."""
        return correlated({"Authorization": f"Bearer {key}", "Accept": "application/json"})

    @property
    def _secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.config.api_key, self.config.webhook_secret) if s)

    async def _send(self, request: HttpRequest, cid: str | None) -> HttpResponse:
        """One request under `read_timeout_s`; no answer at all raises with status None."""
        timeout_s = self.config.read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await self._transport.send(request)
        except TimeoutError:
            error = ProviderError(
                f"llamaparse: {request.method} {request.url} got no answer in {timeout_s:g}s",
                code="timeout",
            )
        except ProviderError as exc:  # TransportError: refused, reset, gone
            error = exc
        except aiohttp.ClientError as exc:  # e.g. a body cut short: still no usable answer
            error = ProviderError(
                f"llamaparse: {request.method} {request.url}: {type(exc).__name__}",
                code="transport",
            )
        raise reported(LLAMAPARSE, error, cid)

    def _json_object(self, response: HttpResponse, cid: str | None) -> dict[str, Any]:
        """A 2xx body as a JSON object. Garbage has status None: the outcome is unknown."""
        try:
            document = response.json()
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise reported(
                LLAMAPARSE,
                ProviderError(
                    f"llamaparse: HTTP {response.status} reply is not a JSON object",
                    code="bad_response",
                ),
                cid,
            )
        return document

    def _error(self, response: HttpResponse) -> ProviderError:
        error = error_from_response(LLAMAPARSE, response, self._clock(), secrets=self._secrets)
        if error.status not in (401, 403):
            return error
        return ProviderError(
            f"{error.message} (check LLAMA_CLOUD_API_KEY; keys are region-specific)",
            error.status,
            error.retry_after_s,
            error.code,
            request_id=error.request_id,
        )
