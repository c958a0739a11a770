"""The LlamaParse client (LlamaCloud API v2 by default, v1 behind a setting).

Primitives, each one HTTP request (or one per page) and so one guarded
call, for a caller that records a remote job and comes back to it later:

* `submit(document, name=...)`: one upload; returns a `RemoteParse` handle
  (remote job id, API version, options sent, estimated pages and cost);
  `send` is the same without waiting for the upload throttle, for a guard
  that waits for `upload_slot` before it admits the upload;
* `status(handle)`: one GET; the remote state, and on v2 the finished
  result too (the same GET carries it, `expand=markdown`);
* `statuses(handles)`: many jobs' states at once, without their results
  (v2's job list filtered by id: one request per hundred jobs);
* `find(name, since=...)`: the job uploaded under `name`, from v2's job
  list, for a caller that crashed before it could record the upload's id;
* `result(handle)`: fetch a finished job's result.

`parse(document)` composes them for a caller that waits, and is one unit
of work for a `Router`/`Guard`: it returns a `ParsedDocument` whose
`cost_usd` settles the budget, or raises `ProviderError` for the guard to
classify. How a parse goes:

1. Dedup: a result cached for the same content (sha256) is returned at no
   cost, and concurrent parses of the same content share one job.
2. Upload (`submit`), throttled on our side to the service's upload limit
   (`LlamaParseConfig.upload_limit` per 10 s).
3. Completion: the job's webhook, if one is configured and an inbox
   receives it in time; otherwise polling (`status`), sleeping before the
   first poll and backing off linearly, as the LlamaCloud SDKs do. Polling
   rides out 429s, 5xx and network errors until the job's overall deadline.
   A job still running is an answer, not an error: it never counts against
   the breaker.
4. Result: the markdown, the pages that failed (v1's PARTIAL_SUCCESS, v2's
   COMPLETED with `success: false` pages), and the cost: the credits the
   service reports, else pages times the tier's credits times the price.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from io import BytesIO
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from pypdf import PdfReader

from providers import LLAMAPARSE
from providers.http import correlated, error_from_response, reported
from providers.llamaparse.settings import (
    DEFAULT_BASE_URL,
    UPLOAD_WINDOW_S,
    ApiVersion,
    LlamaParseConfig,
)
from providers.llamaparse.webhooks import WebhookEvent, WebhookInbox
from providers.pricing import parse_cost_usd
from providers.transport import HttpRequest, HttpResponse, Transport
from resilience import ConfigError, ErrorClass, ProviderError, TokenBucket, classify, correlation
from resilience.clock import wall_time

__all__ = [
    "DEFAULT_BASE_URL",
    "Document",
    "LlamaParse",
    "LlamaParseConfig",
    "MissingApiKey",
    "ParsedDocument",
    "RemoteParse",
    "RemoteStatus",
    "estimate_cost_usd",
    "estimate_pages",
    "upload_name",
]

UPLOAD_PATH: Final = "/api/v1/parsing/upload"
JOB_PATH: Final = "/api/v1/parsing/job/{job_id}"
RESULT_PATH: Final = JOB_PATH + "/result/markdown"
V2_UPLOAD_PATH: Final = "/api/v2/parse/upload"
V2_JOB_PATH: Final = "/api/v2/parse/{job_id}"
V2_LIST_PATH: Final = "/api/v2/parse"
LIST_PAGE_SIZE: Final = 100
"""Jobs asked for per page of v2's job list (`statuses`, `find`)."""
FIND_SLACK_S: Final = 300.0
"""`find` lists jobs created from this long before the caller's `since`: clocks differ."""

PAGE_SEPARATOR: Final = "\n---\n"
"""Joins v2's markdown pages, as v1's result joins them by default."""

CHARS_PER_PAGE: Final = 3000
"""Pages estimated for a non-PDF document: one per 3,000 bytes, rounded up."""

WEBHOOK_EVENTS: Final = ("parse.success", "parse.partial_success", "parse.error", "parse.cancelled")
"""The only events the client waits for; earlier ones would be noise."""

_KEEP_POLLING: Final = (ErrorClass.FAILURE, ErrorClass.RATE_LIMITED)
_STATUS_ALIASES: Final = {
    "CANCELED": "CANCELLED",
    "SUCCESS": "COMPLETED",
    "PARTIAL_SUCCESS": "COMPLETED",
    "ERROR": "FAILED",
}
"""v1 and LCS spellings in v2's vocabulary: one set of states inside."""


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
    charged once per job. `extras` holds the v2 results asked for beside
    the markdown (`LLAMA_CLOUD_EXPAND`: `text`, `items`) as the service sent them.
    """

    markdown: str = field(repr=False)
    pages: int
    job_id: str
    sha256: str
    cost_usd: float = 0.0
    failed_pages: list[int] = field(default_factory=list)
    tokens: int = 0
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RemoteParse:
    """A submitted LlamaParse job: what a caller records to find, finish and settle it later.

    `name` is the file name the job was uploaded under (v2 lists jobs by
    name and creation time, so a caller that put its own id in it can find
    the job again after a crash); `options` is what the upload asked for
    (webhook settings left out: they carry a secret).
    """

    job_id: str
    api_version: ApiVersion
    name: str
    sha256: str
    options: Mapping[str, Any]
    estimated_pages: int
    estimated_cost_usd: float


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """One look at a remote job: its state in v2's words, and its result once cheap to have.

    `state` is PENDING, RUNNING or COMPLETED (v1's SUCCESS and
    PARTIAL_SUCCESS are COMPLETED; a status the client does not know is
    kept as sent and means "not finished"). FAILED and CANCELLED jobs are
    raised by `LlamaParse.status` instead. `result` is set when the job is
    COMPLETED and the answer carried it (v2); otherwise `LlamaParse.result`
    fetches it.
    """

    state: str
    result: ParsedDocument | None = None
    error: ProviderError | None = None
    """Set by `statuses` for a FAILED or CANCELLED job: what `status` would have raised."""

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"


def upload_name(filename: str, name: str | None) -> str:
    """The file name to upload a document named `filename` under: `<name>--<filename>`,
    or its own.

    The document's name stays at the end, so its extension still tells the
    service the file type.
    """
    return filename if not name else f"{name}--{filename}"


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
    """The dollars to reserve for parsing `document` at the default tier and price.

    The default tier is cost_effective, v2's default here and the rate v1's
    default mode bills at [inferred]. A client configured for another tier
    or price estimates with `LlamaParse.estimate_cost_usd`.
    """
    return parse_cost_usd(estimate_pages(document))


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


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[ParsedDocument]
    billed: bool = False


def _state(value: Any) -> str:
    status = str(value or "").upper()
    return _STATUS_ALIASES.get(status, status)


def upload_throttle(limit: int) -> TokenBucket:
    """A bucket that grants at most `limit` uploads in any `UPLOAD_WINDOW_S`.

    Capacity 1, refilled at (limit - 1) per window: a bucket of capacity c
    and rate r grants at most c + 10 r in any 10 s, where a bucket holding
    the whole allowance could grant nearly twice it after a quiet spell. A
    limit of 1 gets one upload every 10 s (a bucket must refill).
    """
    return TokenBucket(1, max(limit - 1, 1) / UPLOAD_WINDOW_S, name="llamaparse-uploads")


class UploadThrottle(Protocol):
    """What an upload waits on: a local `TokenBucket`, or the limit shared through Redis
    (`providers.llamaparse.uploads.SharedUploads`)."""

    async def acquire(self) -> None: ...


class LlamaParse:
    """The real LlamaParse provider. See the module docstring for the flow.

    `inbox` receives the webhooks the API server verified; without it (or
    without `config.webhook_url`) jobs are polled. `upload_bucket` defaults
    to `upload_throttle(config.upload_limit)`. `clock` is wall time, used only
    to read HTTP-date Retry-After headers.
    """

    def __init__(
        self,
        config: LlamaParseConfig,
        transport: Transport,
        *,
        inbox: WebhookInbox | None = None,
        cache: ParseCache | None = None,
        upload_bucket: UploadThrottle | None = None,
        clock: Callable[[], float] = wall_time,
    ) -> None:
        self.config = config
        self._transport = transport
        self._inbox = inbox
        self._cache: ParseCache = cache if cache is not None else MemoryParseCache()
        self._uploads: UploadThrottle = (
            upload_bucket if upload_bucket is not None else upload_throttle(config.upload_limit)
        )
        self._clock = clock
        self._inflight: dict[str, _InFlight] = {}
        self._awaiting: set[str] = set()
        # Upload file name -> when an upload under it got no answer (`submit`).
        self._unanswered: dict[str, float] = {}

    def awaiting(self, job_id: str) -> bool:
        """Is `job_id` a LlamaParse job this client uploaded and is still waiting on?

        The API server's webhook endpoint asks this to tell our jobs from
        strangers' (404). True from the upload's answer until the parse
        returns or raises.
        """
        return job_id in self._awaiting

    def unanswered(self, filename: str) -> bool:
        """Did the last upload under `filename` get no answer, so LlamaParse may have it?
        Until a later `submit` under that name is answered or finds it."""
        return filename in self._unanswered

    @property
    def inbox(self) -> WebhookInbox | None:
        """Where this client expects verified webhooks (None: it polls)."""
        return self._inbox

    def __repr__(self) -> str:
        return f"LlamaParse({self.config.base_url!r}, api={self.config.api_version})"

    def estimate_cost_usd(self, document: Document) -> float:
        """The dollars to reserve for `document` at this client's tier and price."""
        return self._cost_usd(estimate_pages(document))

    def _cost_usd(self, pages: int) -> float:
        config = self.config
        return parse_cost_usd(pages, config.page_credits, usd_per_credit=config.usd_per_credit)

    # -- the three primitives -------------------------------------------------

    async def upload_slot(self) -> None:
        """Wait for the upload throttle: what `submit` waits for before `send`.

        A guarded caller has its guard wait for it instead, before the breaker
        admits the upload (`Call.ready`): waited inside the guarded call, an
        upload admitted before the breaker opened would go out while it is open.
        """
        await self._uploads.acquire()

    async def submit(self, document: Document, *, name: str | None = None) -> RemoteParse:
        """Wait for the upload throttle (`upload_slot`), then `send`."""
        await self.upload_slot()
        return await self.send(document, name=name)

    async def send(self, document: Document, *, name: str | None = None) -> RemoteParse:
        """Upload `document` once, the upload throttle waited for already; the job's handle.

        `name` goes into the uploaded file's name (`upload_name`). Raises
        `ProviderError` for a refused upload (the service's status, with its
        Retry-After on a 429, which the guard acts on).

        A named upload is never sent twice by this client for lack of an
        answer: once one got none (a timeout, a lost connection: it may have
        been accepted), the next submit under that name first looks for the
        job in the job list (`find`) and returns it if it is there.
        """
        cid = correlation.current()
        filename = upload_name(document.name, name)
        sent_at = self._unanswered.get(filename) if name else None
        if sent_at is not None:
            found = await self.find(filename, since=sent_at)
            if found is not None:
                del self._unanswered[filename]
                return self._handle(document, found, filename, self.upload_options())
        started = self._clock()
        try:
            handle = await self._submit(document, name, cid)
        except ProviderError as exc:
            if name and exc.status is None:
                self._unanswered.setdefault(filename, started)
            raise
        self._unanswered.pop(filename, None)
        return handle

    async def status(self, handle: RemoteParse) -> RemoteStatus:
        """One look at the job. Raises a 422 `ProviderError` when it FAILED or was CANCELLED.

        A job still PENDING or RUNNING is an answer like any other: it never
        counts as a failure.
        """
        return await self._status(handle, self._key(), correlation.current())

    async def result(self, handle: RemoteParse) -> ParsedDocument:
        """The finished job's result, with its settled cost.

        Raises `ProviderError` with code "not_finished" (no status: try again
        later) when the job has not finished or its result is not stored yet.
        """
        cid = correlation.current()
        parsed = await self._fetch(handle, self._key(), cid)
        if parsed is None:
            raise reported(
                LLAMAPARSE,
                ProviderError(
                    f"llamaparse: job {handle.job_id} has no result yet", code="not_finished"
                ),
                cid,
            )
        return parsed

    async def statuses(self, handles: Sequence[RemoteParse]) -> dict[str, RemoteStatus]:
        """Each job's state by remote id, without results; FAILED ones carry their `error`.

        v2 asks its job list for up to `LIST_PAGE_SIZE` ids per request, so
        a poller checking many jobs costs one request per hundred; v1 has no
        such list and asks job by job. A job the answer leaves out is left
        out here too (the caller asks again later).
        """
        key, cid = self._key(), correlation.current()
        found: dict[str, RemoteStatus] = {}
        for handle in handles:
            if handle.api_version == "v1":
                try:
                    found[handle.job_id] = await self._status(handle, key, cid)
                except ProviderError as exc:
                    if exc.status != 422:
                        raise
                    found[handle.job_id] = RemoteStatus("FAILED", error=exc)
        wanted = [handle.job_id for handle in handles if handle.api_version == "v2"]
        for start in range(0, len(wanted), LIST_PAGE_SIZE):
            ids = wanted[start : start + LIST_PAGE_SIZE]
            query = [("page_size", str(len(ids))), *(("job_ids", job_id) for job_id in ids)]
            for job in _items(await self._list_answer(query, key, cid)):
                job_id, state = job.get("id"), _state(job.get("status"))
                if not isinstance(job_id, str) or job_id not in ids:
                    continue
                try:
                    self._raise_if_failed(job_id, state, job, cid)
                except ProviderError as exc:
                    found[job_id] = RemoteStatus(state, error=exc)
                else:
                    found[job_id] = RemoteStatus(state)
        return found

    async def find(self, name: str, *, since: float) -> str | None:
        """The id of the newest job uploaded under file name `name` since `since`, if any.

        `since` is epoch seconds (`FIND_SLACK_S` earlier is asked, for clock
        skew). Pages through v2's job list, newest first; v1 cannot list
        jobs, so there it is always None.
        """
        if self.config.api_version != "v2":
            return None
        key, cid = self._key(), correlation.current()
        after = datetime.fromtimestamp(since - FIND_SLACK_S, UTC).isoformat()
        token: str | None = None
        while True:
            query = [("page_size", str(LIST_PAGE_SIZE)), ("created_at_on_or_after", after)]
            if token is not None:
                query.append(("page_token", token))
            answer = await self._list_answer(query, key, cid)
            for job in _items(answer):
                if job.get("name") == name and isinstance(job.get("id"), str):
                    return str(job["id"])
            following = answer.get("next_page_token")
            if not isinstance(following, str) or not following:
                return None
            token = following

    def outcome(self, handle: RemoteParse, event: WebhookEvent) -> ParsedDocument | None:
        """What a terminal webhook says of the job: its result when the event carries it
        (v1's do), None when a GET must fetch it (v2's never do). Raises a 422
        `ProviderError` for a FAILED or CANCELLED job, as `status` does."""
        return self._from_event(handle, event.status, event.data, correlation.current())

    async def _list_answer(
        self, query: list[tuple[str, str]], key: str, cid: str | None
    ) -> dict[str, Any]:
        url = self._url(V2_LIST_PATH) + "?" + urlencode(query)
        response = await self._send(HttpRequest("GET", url, self._headers(key)), cid)
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        answer = self._json_object(response, cid)
        if not isinstance(answer.get("items"), list):
            # Not "no jobs": `find` would report no upload, and the caller upload again.
            raise self._bad_response("a v2 job list answer has no items", cid)
        return answer

    # -- parse: the primitives composed for a caller that waits ----------------

    async def parse(self, document: Document) -> ParsedDocument:
        """Parse `document` to markdown, once per distinct content.

        Raises `ProviderError`: 422 when the service could not parse the
        document (status FAILED/ERROR, code from the job) or the job was
        cancelled (code "cancelled"); status None with code "job_timeout"
        when the job outlives `job_timeout_s`; the service's own status for
        a refused upload. A cancelled job is a 422, not a 409: 409 counts as
        a provider failure that is retried and trips the breaker, while a
        cancellation is somebody's decision about this document that
        retrying would undo.
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
        await self.upload_slot()
        handle = await self._submit(document, None, cid)
        key = self.config.api_key
        timeout_s = self.config.job_timeout_s
        self._awaiting.add(handle.job_id)
        try:
            async with asyncio.timeout(timeout_s) as scope:
                parsed = await self._complete(handle, key, cid)
        except TimeoutError:
            if not scope.expired():
                raise
            raise reported(
                LLAMAPARSE,
                ProviderError(
                    f"llamaparse: job {handle.job_id} did not finish within {timeout_s:g}s",
                    code="job_timeout",
                ),
                cid,
            ) from None
        finally:
            self._awaiting.discard(handle.job_id)
        await self._cache.put(sha256, parsed)
        return parsed

    # -- upload ----------------------------------------------------------------

    def _key(self) -> str:
        key = self.config.api_key
        if not key:
            raise MissingApiKey()
        return key

    def upload_options(self) -> dict[str, Any]:
        """What an upload asks for, webhooks aside: v2's configuration, v1's form fields."""
        config = self.config
        if config.api_version == "v1":
            return {"language": "en"}
        options: dict[str, Any] = {"tier": config.tier, "version": config.version}
        pages = {"max_pages": config.max_pages, "target_pages": config.target_pages}
        if any(value is not None for value in pages.values()):
            options["page_ranges"] = {k: v for k, v in pages.items() if v is not None}
        return options

    def _webhook_configuration(self) -> dict[str, Any] | None:
        """The webhook configuration to send, when LLAMA_CLOUD_WEBHOOK_URL is set."""
        config = self.config
        if not config.webhook_url:
            return None
        hook: dict[str, Any] = {
            "webhook_url": config.webhook_url,
            "webhook_events": list(WEBHOOK_EVENTS),
            "webhook_output_format": "json",
        }
        if config.webhook_secret:
            hook["webhook_signing_secret"] = config.webhook_secret
        return hook

    def _form(
        self, document: Document, filename: str, options: Mapping[str, Any]
    ) -> aiohttp.MultipartWriter:
        """The upload body.

        The boundary is 128 bits of the content's hash: deterministic, never
        inside the file, and within RFC 2046's 70 characters.
        """
        form = aiohttp.MultipartWriter("form-data", boundary=f"breakwater-{document.sha256[:32]}")
        part = form.append(document.content, {"Content-Type": document.mime_type})
        part.set_content_disposition("form-data", name="file", filename=filename)
        hook = self._webhook_configuration()
        fields: dict[str, str]
        if self.config.api_version == "v2":
            configuration = dict(options)
            if hook is not None:
                configuration["webhook_configurations"] = [hook]
            fields = {"configuration": orjson.dumps(configuration).decode()}
        else:
            fields = dict(options)
            if hook is not None:
                fields["webhook_url"] = hook["webhook_url"]
                if "webhook_signing_secret" in hook:
                    # Only a webhook configuration makes LlamaCloud sign deliveries
                    # (LC-Signature); the bare v1 webhook_url is unsigned.
                    fields["webhook_configurations"] = orjson.dumps([hook]).decode()
        for field_name, value in fields.items():
            form.append(value).set_content_disposition("form-data", name=field_name)
        return form

    async def _submit(self, document: Document, name: str | None, cid: str | None) -> RemoteParse:
        key = self._key()
        config = self.config
        filename = upload_name(document.name, name)
        options = self.upload_options()
        form = self._form(document, filename, options)
        headers = {**self._headers(key), "Content-Type": form.content_type}
        path = V2_UPLOAD_PATH if config.api_version == "v2" else UPLOAD_PATH
        request = HttpRequest("POST", self._url(path), headers, await form.as_bytes())
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
        return self._handle(document, job_id, filename, options)

    def _handle(
        self, document: Document, job_id: str, filename: str, options: Mapping[str, Any]
    ) -> RemoteParse:
        pages = estimate_pages(document)
        return RemoteParse(
            job_id=job_id,
            api_version=self.config.api_version,
            name=filename,
            sha256=document.sha256,
            options=options,
            estimated_pages=pages,
            estimated_cost_usd=self._cost_usd(pages),
        )

    # -- completion --------------------------------------------------------------

    async def _complete(self, handle: RemoteParse, key: str, cid: str | None) -> ParsedDocument:
        inbox = self._inbox
        at_once = False
        if inbox is not None and self.config.webhook_url:
            event = await inbox.wait(handle.job_id, self.config.webhook_deadline_s)
            if event is not None:
                parsed = self._from_event(handle, event.status, event.data, cid)
                if parsed is not None:
                    return parsed
                if handle.api_version == "v2":
                    # v2 serves the result in the GET that reports COMPLETED;
                    # v1's result store lags SUCCESS, so v1 waits a poll interval.
                    at_once = True
        return await self._poll(handle, key, cid, at_once=at_once)

    def _from_event(
        self, handle: RemoteParse, status: str, data: Mapping[str, Any], cid: str | None
    ) -> ParsedDocument | None:
        """A webhook's outcome; None when it lacks the markdown and a GET must fetch it.

        v1 event `data` carries `md`, `job_metadata`, optionally the page list
        (`json`, or `jsonOutput` in older LlamaCloud docs), and for errors
        `error_code` and `error_message`; a v2 event carries the job object
        (`data.job`, with `error_message` when it failed) and no result.
        """
        state = _state(status)
        job = data.get("job")
        self._raise_if_failed(handle.job_id, state, job if isinstance(job, dict) else data, cid)
        markdown = data.get("md")
        if state != "COMPLETED" or not isinstance(markdown, str):
            return None
        metadata = data.get("job_metadata")
        pages = data.get("json", data.get("jsonOutput"))
        return self._v1_parsed(
            handle,
            markdown,
            metadata if isinstance(metadata, dict) else {},
            pages if isinstance(pages, list) else [],
        )

    async def _poll(
        self, handle: RemoteParse, key: str, cid: str | None, *, at_once: bool = False
    ) -> ParsedDocument:
        """Poll until the job ends; the caller's deadline bounds the loop.

        Errors that say the provider is busy or unwell (429, 5xx, timeouts,
        lost connections, garbled replies) only mean "ask again later".
        Anything else (401, 403, 402, an unknown job) is raised. `at_once`
        makes the first look without sleeping (a webhook said the job is done).
        """
        config = self.config
        interval = min(config.poll_initial_s, config.poll_max_s)
        while True:
            if not at_once:
                await asyncio.sleep(interval)
                interval = min(interval + config.poll_step_s, config.poll_max_s)
            at_once = False
            try:
                checked = await self._status(handle, key, cid)
                parsed = checked.result
                if parsed is None and checked.completed:
                    parsed = await self._fetch(handle, key, cid)
            except ProviderError as exc:
                if classify(exc) not in _KEEP_POLLING:
                    raise
                continue
            if parsed is not None:
                return parsed

    async def _status(self, handle: RemoteParse, key: str, cid: str | None) -> RemoteStatus:
        answer = await self._get_job(handle, key, cid)
        if handle.api_version == "v1":
            state = _state(answer.get("status"))
            self._raise_if_failed(handle.job_id, state, answer, cid)
            return RemoteStatus(state)
        job = answer.get("job")
        if not isinstance(job, dict):
            raise self._bad_response("a v2 job answer has no job object", cid)
        state = _state(job.get("status"))
        self._raise_if_failed(handle.job_id, state, job, cid)
        if state != "COMPLETED":
            return RemoteStatus(state)
        return RemoteStatus(state, self._v2_parsed(handle, answer, cid))

    async def _get_job(self, handle: RemoteParse, key: str, cid: str | None) -> dict[str, Any]:
        """GET the job: v1's status, or v2's job with its result expanded."""
        job_id = quote(handle.job_id, safe="")
        if handle.api_version == "v1":
            url = self._url(JOB_PATH.format(job_id=job_id))
        else:
            expand = ["markdown", "usage", *self.config.expand]
            query = urlencode([("expand", name) for name in expand])
            url = self._url(V2_JOB_PATH.format(job_id=job_id)) + "?" + query
        response = await self._send(HttpRequest("GET", url, self._headers(key)), cid)
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        return self._json_object(response, cid)

    async def _fetch(self, handle: RemoteParse, key: str, cid: str | None) -> ParsedDocument | None:
        """The finished result; None when there is none yet (not finished, or v1's store lags)."""
        if handle.api_version == "v2":
            return (await self._status(handle, key, cid)).result
        url = self._url(RESULT_PATH.format(job_id=quote(handle.job_id, safe="")))
        response = await self._send(HttpRequest("GET", url, self._headers(key)), cid)
        if response.status == 404:
            return None  # the result is not stored yet: normal just after SUCCESS
        if not 200 <= response.status < 300:
            raise reported(LLAMAPARSE, self._error(response), cid)
        result = self._json_object(response, cid)
        markdown, metadata = result.get("markdown"), result.get("job_metadata")
        if not isinstance(markdown, str):
            raise self._bad_response("result has no markdown", cid)
        return self._v1_parsed(handle, markdown, metadata if isinstance(metadata, dict) else {})

    def _v1_parsed(
        self,
        handle: RemoteParse,
        markdown: str,
        metadata: Mapping[str, Any],
        page_list: list[Any] | None = None,
    ) -> ParsedDocument:
        """A v1 result. Cost: the credits reported, else nothing for a cache hit, else the rate.

        Failed pages of a PARTIAL_SUCCESS are charged too: the service does
        not say it refunds them, and over-charging a budget is the safe error.
        """
        page_list = page_list or []
        pages = _page_number(metadata.get("job_pages")) or len(page_list)
        pages = pages or handle.estimated_pages
        credits = _credits(metadata.get("credits_used", metadata.get("job_credits_usage")))
        if credits is not None:
            cost = credits * self.config.usd_per_credit
        elif metadata.get("job_is_cache_hit") is True:
            cost = 0.0
        else:
            cost = self._cost_usd(pages)
        return ParsedDocument(
            markdown=markdown,
            pages=pages,
            job_id=handle.job_id,
            sha256=handle.sha256,
            cost_usd=cost,
            failed_pages=_failed_pages(metadata, page_list),
        )

    def _v2_parsed(
        self, handle: RemoteParse, answer: Mapping[str, Any], cid: str | None
    ) -> ParsedDocument:
        """A COMPLETED v2 job: its markdown pages joined, failed ones left out.

        Cost: `job.usage.credits` (0 for a cache hit), else pages at the
        tier's rate. Failed pages are charged, as on v1.
        """
        markdown = answer.get("markdown")
        page_list = markdown.get("pages") if isinstance(markdown, dict) else None
        if not isinstance(page_list, list):
            raise self._bad_response("a COMPLETED v2 job came without its markdown pages", cid)
        texts = [
            page["markdown"]
            for page in page_list
            if isinstance(page, dict)
            and page.get("success") is not False
            and isinstance(page.get("markdown"), str)
        ]
        pages = len(page_list) or handle.estimated_pages
        job = answer.get("job")
        usage = job.get("usage") if isinstance(job, dict) else None
        credits = _credits(usage.get("credits") if isinstance(usage, dict) else None)
        cost = self._cost_usd(pages) if credits is None else credits * self.config.usd_per_credit
        return ParsedDocument(
            markdown=PAGE_SEPARATOR.join(texts),
            pages=pages,
            job_id=handle.job_id,
            sha256=handle.sha256,
            cost_usd=cost,
            failed_pages=_failed_pages({}, page_list),
            extras={name: answer[name] for name in self.config.expand if name in answer},
        )

    def _raise_if_failed(
        self, job_id: str, state: str, fields: Mapping[str, Any], cid: str | None
    ) -> None:
        if state == "FAILED":
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
        if state == "CANCELLED":
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

    def _bad_response(self, what: str, cid: str | None) -> ProviderError:
        """A 2xx answer we cannot use: status None, the outcome is unknown."""
        return reported(LLAMAPARSE, ProviderError(f"llamaparse: {what}", code="bad_response"), cid)

    def _json_object(self, response: HttpResponse, cid: str | None) -> dict[str, Any]:
        """A 2xx body as a JSON object. Garbage has status None: the outcome is unknown."""
        try:
            document = response.json()
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise self._bad_response(f"HTTP {response.status} reply is not a JSON object", cid)
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


def _items(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A v2 job list's items that are objects."""
    items = answer.get("items")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _credits(value: Any) -> float | None:
    """Credits the service reported, when it reported a usable number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
