"""The emulated LlamaParse v1 API, under `/api/v1/parsing` and the legacy `/api/parsing`.

* `POST .../upload` (multipart: `file` plus options) creates a job and answers
  `{"id", "status": "PENDING", "error_code": null, "error_message": null}`.
* `GET .../job/{id}` answers the same shape with the current status.
* `GET .../job/{id}/result/markdown`, `.../result/text` and `.../result/json`
  answer `{"markdown" | "text" | "pages", "job_metadata": {job_pages,
  job_is_cache_hit, credits_used}}` once the job finished, and 404 "Result
  not found" before. The text is the document's own (see `documents`), its
  pages joined by `page_separator` (default `\n---\n`; `{page_number}` in
  it becomes the number of the page that follows).

A job is PENDING for a parse time drawn from the plan, then SUCCESS; or
PARTIAL_SUCCESS when some pages failed (the plan's `page_failure_rate`, or
pages pypdf cannot read), or ERROR when all did. It is worked out from the
loop clock whenever someone asks: no task runs per job, so a 300 s parse on
a virtual-time loop costs nothing. A job with a `webhook_url` schedules a
signed delivery for when it ends. The v2 API (`llamaparse_v2`) is served
beside this one, from the same limits and cache.

Errors are FastAPI's `{"detail": ...}`. Every route needs `Authorization:
Bearer <key>` (401 "Invalid API key" without one, or with the wrong one when
a key is configured). Uploads are limited to `upload_limit` per sliding
`upload_window_s` (15 per 10 s, as documented); the 429 carries Retry-After
only if the plan says so, since LlamaCloud documents none.

The content cache (`llamaparse_shared.ContentCache`) bills a repeat parse
nothing unless `invalidate_cache` or `do_not_cache`. Credits per page, by mode
[inferred from the tier prices]: fast 1, default 3, agent 10, premium 45.
The emulator needs a `file`: it fetches no `input_url` or `input_s3_path`,
and it accepts http:// webhook URLs and IP hosts, which LlamaCloud refuses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from yarl import URL

from providers.transport import HttpResponse
from simulations.emulators.chaos import draw_range
from simulations.emulators.documents import PAGE_SEPARATOR, Document, render_document
from simulations.emulators.faults import LlamaParsePlan
from simulations.emulators.ids import Ids
from simulations.emulators.llamaparse_files import FilesApi
from simulations.emulators.llamaparse_shared import (
    ContentCache,
    Rejected,
    WallClock,
    admit_upload,
    authenticate,
    draw_failed_pages,
    read_form,
    refuse_unparseable,
)
from simulations.emulators.llamaparse_v2 import ParseJob, ParseV2
from simulations.emulators.multipart import Form
from simulations.emulators.ratelimit import SlidingWindow
from simulations.emulators.routing import (
    Incoming,
    Route,
    json_response,
    malform_generic,
    status_phrase,
)
from simulations.emulators.stats import Stats
from simulations.emulators.webhook_delivery import WebhookSender

PREFIXES: Final = ("/api/v1/parsing", "/api/parsing")
RESULT_NOT_FOUND: Final = "Result not found. Check job status to see if it has completed."
_UNCACHED_OPTIONS: Final = frozenset(
    {"webhook_url", "invalidate_cache", "do_not_cache", "from_python_package"}
)
_EVENTS: Final = {
    "SUCCESS": "parse.success",
    "PARTIAL_SUCCESS": "parse.partial_success",
    "ERROR": "parse.error",
}


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    ready_at: float
    document: Document
    failed_pages: frozenset[int]
    metadata: dict[str, Any]
    separator: str

    @property
    def joined(self) -> str:
        return self.document.joined(self.failed_pages, self.separator)

    @property
    def outcome(self) -> str:
        if not self.failed_pages:
            return "SUCCESS"
        if len(self.failed_pages) < self.document.page_count:
            return "PARTIAL_SUCCESS"
        return "ERROR"

    def status(self, now: float) -> str:
        return self.outcome if now >= self.ready_at else "PENDING"

    @property
    def error_message(self) -> str | None:
        return "Every page failed to parse" if self.outcome == "ERROR" else None

    def pages(self) -> list[dict[str, Any]]:
        """`/result/json`'s pages; a failed page is empty with `status: "ERROR"` [inferred]."""
        return [
            {
                "page": page.number,
                "text": "" if page.number in self.failed_pages else page.markdown,
                "md": "" if page.number in self.failed_pages else page.markdown,
                "images": [],
                "items": [],
                "width": page.width,
                "height": page.height,
                "status": "ERROR" if page.number in self.failed_pages else "OK",
            }
            for page in self.document.pages
        ]


def _flag(form: Form, name: str) -> bool:
    return (form.value(name) or "").strip().lower() == "true"


def _credits_per_page(form: Form) -> int:
    if _flag(form, "premium_mode"):
        return 45
    if _flag(form, "fast_mode") or form.value("parse_mode") == "parse_page_without_llm":
        return 1
    if form.value("parse_mode") == "parse_page_with_agent":
        return 10
    return 3


def _max_pages(form: Form) -> int | None:
    raw = form.value("max_pages")
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise Rejected(
            422,
            [
                {
                    "type": "int_parsing",
                    "loc": ["body", "max_pages"],
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": raw,
                }
            ],
        ) from None


def _webhook_url(form: Form) -> str | None:
    raw = (form.value("webhook_url") or "").strip()
    if not raw:
        return None
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.host:
        raise Rejected(400, f"Invalid webhook_url: {raw}")
    return raw


def _cache_options(form: Form) -> str:
    options = sorted(
        (name, values) for name, values in form.fields.items() if name not in _UNCACHED_OPTIONS
    )
    return orjson.dumps(options).decode()


class LlamaParseApi:
    """Both API versions: jobs, their results, the upload limits and the webhooks they trigger."""

    name: Final = "llamaparse"

    def __init__(
        self, ids: Ids, api_key: str | None, webhooks: WebhookSender, stats: Stats
    ) -> None:
        self._ids = ids
        self._api_key = api_key
        self._webhooks = webhooks
        self._stats = stats
        self._plan = LlamaParsePlan()
        self._rng = random.Random(0)
        self._uploads = SlidingWindow(self._plan.upload_limit, self._plan.upload_window_s)
        self._jobs: dict[str, Job] = {}
        self._cache = ContentCache()
        self._files = FilesApi(ids, api_key)
        self._v2 = ParseV2(ids, api_key, webhooks, stats, self._cache, self._files, WallClock())
        routes: list[Route] = []
        for prefix in PREFIXES:
            routes += [
                Route("POST", f"{prefix}/upload", self._upload),
                Route("GET", f"{prefix}/job/{{job_id}}", self._status),
                Route("GET", f"{prefix}/job/{{job_id}}/result/markdown", self._markdown),
                Route("GET", f"{prefix}/job/{{job_id}}/result/text", self._text),
                Route("GET", f"{prefix}/job/{{job_id}}/result/json", self._json),
            ]
        self.routes: Sequence[Route] = (*routes, *self._v2.routes, *self._files.routes)

    def configure(self, plan: LlamaParsePlan, rng: random.Random, lost: random.Random) -> None:
        """Adopt `plan` for new jobs (parse times from `rng`, v2's lost answers from `lost`);
        the upload windows restart."""
        self._plan = plan
        self._rng = rng
        self._uploads = SlidingWindow(plan.upload_limit, plan.upload_window_s)
        self._v2.configure(plan, rng, lost)

    def clear(self) -> None:
        """Forget every job, file and cache entry."""
        self._jobs.clear()
        self._cache.clear()
        self._v2.clear()
        self._files.clear()

    def v2_jobs(self) -> tuple[ParseJob, ...]:
        """The v2 API's jobs, oldest first (`ParseV2.jobs`)."""
        return self._v2.jobs()

    # -- endpoints ----------------------------------------------------------

    async def _upload(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        now = asyncio.get_running_loop().time()
        try:
            authenticate(incoming, self._api_key)
            admit_upload(self._uploads, now, self._plan.upload_retry_after)
            job = self._create_job(incoming, now)
        except Rejected as rejected:
            return rejected.response
        return self._job_response(job, "PENDING")  # even with a zero parse time, as upstream

    async def _status(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            job = self._job(params["job_id"])
        except Rejected as rejected:
            return rejected.response
        return self._job_response(job, job.status(asyncio.get_running_loop().time()))

    async def _markdown(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        return self._result(incoming, params["job_id"], "markdown")

    async def _text(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        return self._result(incoming, params["job_id"], "text")

    async def _json(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        return self._result(incoming, params["job_id"], "pages")

    # -- steps --------------------------------------------------------------

    def _create_job(self, incoming: Incoming, now: float) -> Job:
        form = read_form(incoming)
        upload = form.files.get("file")
        if upload is None:
            raise Rejected(
                400, "A file is required (the emulator does not fetch input_url or input_s3_path)"
            )
        refuse_unparseable(upload)
        max_pages = _max_pages(form)
        webhook_url = _webhook_url(form)
        document = render_document(upload, max_pages)
        ready_at = now + draw_range(self._rng, self._plan.parse_time_s)
        failed = document.unreadable | draw_failed_pages(
            self._rng, self._plan.page_failure_rate, document.page_count
        )
        hit = self._cache.hit(
            upload.data,
            _cache_options(form),
            now,
            use=not _flag(form, "invalidate_cache"),
            store_at=None if _flag(form, "do_not_cache") else ready_at,
        )
        metadata = {
            "job_pages": document.page_count,
            "job_is_cache_hit": hit,
            "credits_used": 0 if hit else document.page_count * _credits_per_page(form),
        }
        separator = form.value("page_separator") or PAGE_SEPARATOR
        job = Job(self._ids.job_id(), ready_at, document, failed, metadata, separator)
        self._jobs[job.id] = job
        self._stats.job_created()
        if webhook_url is not None:
            data: dict[str, Any] = {"md": job.joined, "job_metadata": metadata}
            if job.outcome == "ERROR":
                data |= {"error_code": "PARSING_ERROR", "error_message": job.error_message}
            event = {
                "event_type": _EVENTS[job.outcome],
                "job_id": job.id,
                "status": job.outcome,
                "data": data,
            }
            self._webhooks.schedule(
                webhook_url, orjson.dumps(event), ready_at, secret=self._webhooks.secret
            )
        return job

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise Rejected(404, "Job not found")
        return job

    def _result(self, incoming: Incoming, job_id: str, kind: str) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            job = self._job(job_id)
        except Rejected as rejected:
            return rejected.response
        if job.status(asyncio.get_running_loop().time()) not in ("SUCCESS", "PARTIAL_SUCCESS"):
            return json_response(404, {"detail": RESULT_NOT_FOUND})
        content = job.pages() if kind == "pages" else job.joined
        return json_response(200, {kind: content, "job_metadata": job.metadata})

    @staticmethod
    def _job_response(job: Job, status: str) -> HttpResponse:
        error = status == "ERROR"
        return json_response(
            200,
            {
                "id": job.id,
                "status": status,
                "error_code": "PARSING_ERROR" if error else None,
                "error_message": job.error_message if error else None,
            },
        )

    # -- faults -------------------------------------------------------------

    def fault_response(self, status: int, incoming: Incoming) -> HttpResponse:
        return json_response(status, {"detail": status_phrase(status)})

    def not_found(self, incoming: Incoming) -> HttpResponse:
        return json_response(404, {"detail": "Not Found"})

    def malform(self, response: HttpResponse, kind: str) -> HttpResponse:
        return malform_generic(response, kind)
