"""The emulated LlamaParse v1 API, under `/api/v1/parsing` and the legacy `/api/parsing`.

* `POST .../upload` (multipart: `file` plus options) creates a job and answers
  `{"id", "status": "PENDING", "error_code": null, "error_message": null}`.
* `GET .../job/{id}` answers the same shape with the current status.
* `GET .../job/{id}/result/markdown` and `.../result/text` answer
  `{"markdown" | "text", "job_metadata": {job_pages, job_is_cache_hit,
  credits_used}}` once the job succeeded, and 404 "Result not found" before.

A job is PENDING for a parse time drawn from the plan and SUCCESS after,
worked out from the loop clock whenever someone asks: no task runs per job,
so a 300 s parse on a virtual-time loop costs nothing. A job with a
`webhook_url` schedules a signed delivery for when it succeeds.

Errors are FastAPI's `{"detail": ...}`. Every route needs `Authorization:
Bearer <key>` (401 "Invalid API key" without one, or with the wrong one when
a key is configured). Uploads are limited to `upload_limit` per sliding
`upload_window_s` (15 per 10 s, as documented); the 429 carries Retry-After
only if the plan says so, since LlamaCloud documents none.

The content cache is modelled for billing: the same file with the same
options within 48 hours is `job_is_cache_hit: true` and costs 0 credits
(unless `invalidate_cache` or `do_not_cache`), but still takes the parse
time, so simulations stay predictable. Credits per page, by mode
[inferred from the tier prices]: fast 1, default 3, agent 10, premium 45.
The emulator needs a `file`: it fetches no `input_url` or `input_s3_path`,
and it accepts http:// webhook URLs and IP hosts, which LlamaCloud refuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from yarl import URL

from providers.transport import HttpResponse
from simulations.emulators.chaos import draw_range
from simulations.emulators.documents import Document, render_document
from simulations.emulators.faults import LlamaParsePlan
from simulations.emulators.ids import Ids
from simulations.emulators.multipart import Form, MultipartError, parse_form
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
CACHE_TTL_S: Final = 48 * 3600.0
RESULT_NOT_FOUND: Final = "Result not found. Check job status to see if it has completed."
_UNCACHED_OPTIONS: Final = frozenset(
    {"webhook_url", "invalidate_cache", "do_not_cache", "from_python_package"}
)


UNPARSEABLE_SUFFIXES: Final = (".exe", ".dll", ".so")
"""Uploads the emulator refuses with 400, as LlamaParse refuses file types it cannot
parse. Only executables are modeled; the real list of accepted types is long."""


class _Rejected(Exception):
    """Ends a request early with a FastAPI-style answer."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.response = json_response(status, {"detail": detail}, headers)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    ready_at: float
    document: Document
    metadata: dict[str, Any]

    def status(self, now: float) -> str:
        return "SUCCESS" if now >= self.ready_at else "PENDING"


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
        raise _Rejected(
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
        raise _Rejected(400, f"Invalid webhook_url: {raw}")
    return raw


def _cache_key(form: Form, data: bytes) -> tuple[object, ...]:
    options = sorted(
        (name, tuple(values))
        for name, values in form.fields.items()
        if name not in _UNCACHED_OPTIONS
    )
    return hashlib.sha256(data).hexdigest(), tuple(options)


class LlamaParseApi:
    """Jobs, their results, the upload limit and the webhooks they trigger."""

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
        self._cache: dict[tuple[object, ...], float] = {}
        routes: list[Route] = []
        for prefix in PREFIXES:
            routes += [
                Route("POST", f"{prefix}/upload", self._upload),
                Route("GET", f"{prefix}/job/{{job_id}}", self._status),
                Route("GET", f"{prefix}/job/{{job_id}}/result/markdown", self._markdown),
                Route("GET", f"{prefix}/job/{{job_id}}/result/text", self._text),
            ]
        self.routes: Sequence[Route] = tuple(routes)

    def configure(self, plan: LlamaParsePlan, rng: random.Random) -> None:
        """Adopt `plan` for new jobs (parse times from `rng`); the upload window restarts."""
        self._plan = plan
        self._rng = rng
        self._uploads = SlidingWindow(plan.upload_limit, plan.upload_window_s)

    def clear(self) -> None:
        """Forget every job and cache entry."""
        self._jobs.clear()
        self._cache.clear()

    # -- endpoints ----------------------------------------------------------

    async def _upload(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        now = asyncio.get_running_loop().time()
        try:
            self._authenticate(incoming)
            self._admit_upload(now)
            job = self._create_job(incoming, now)
        except _Rejected as rejected:
            return rejected.response
        return self._job_response(job.id, "PENDING")  # even with a zero parse time, as upstream

    async def _status(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        try:
            self._authenticate(incoming)
            job = self._job(params["job_id"])
        except _Rejected as rejected:
            return rejected.response
        return self._job_response(job.id, job.status(asyncio.get_running_loop().time()))

    async def _markdown(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        return self._result(incoming, params["job_id"], "markdown")

    async def _text(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        return self._result(incoming, params["job_id"], "text")

    # -- steps --------------------------------------------------------------

    def _authenticate(self, incoming: Incoming) -> None:
        scheme, _, key = incoming.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or self._api_key not in (None, key):
            raise _Rejected(401, "Invalid API key")

    def _admit_upload(self, now: float) -> None:
        wait_s = self._uploads.try_accept(now)
        if wait_s is None:
            return
        plan = self._plan
        headers = {"Retry-After": str(max(1, math.ceil(wait_s)))} if plan.upload_retry_after else {}
        raise _Rejected(
            429,
            f"Rate limit exceeded: at most {plan.upload_limit} uploads per "
            f"{plan.upload_window_s:g} seconds. Please retry later.",
            headers,
        )

    def _create_job(self, incoming: Incoming, now: float) -> Job:
        try:
            form = parse_form(incoming.headers.get("Content-Type", ""), incoming.body)
        except MultipartError:
            raise _Rejected(400, "There was an error parsing the body") from None
        upload = form.files.get("file")
        if upload is None:
            raise _Rejected(
                400, "A file is required (the emulator does not fetch input_url or input_s3_path)"
            )
        if upload.filename.lower().endswith(UNPARSEABLE_SUFFIXES):
            raise _Rejected(400, f"Unsupported file type: {upload.filename.rsplit('.', 1)[-1]}")
        max_pages = _max_pages(form)
        webhook_url = _webhook_url(form)
        document = render_document(upload, max_pages)
        ready_at = now + draw_range(self._rng, self._plan.parse_time_s)
        key = _cache_key(form, upload.data)
        cached_at = self._cache.get(key)
        hit = (
            not _flag(form, "invalidate_cache")
            and cached_at is not None
            and cached_at <= now < cached_at + CACHE_TTL_S
        )
        if not hit and not _flag(form, "do_not_cache"):
            self._cache[key] = ready_at
        metadata = {
            "job_pages": document.pages,
            "job_is_cache_hit": hit,
            "credits_used": 0 if hit else document.pages * _credits_per_page(form),
        }
        job = Job(self._ids.job_id(), ready_at, document, metadata)
        self._jobs[job.id] = job
        self._stats.job_created()
        if webhook_url is not None:
            event = {
                "event_type": "parse.success",
                "job_id": job.id,
                "status": "SUCCESS",
                "data": {"md": document.markdown, "job_metadata": metadata},
            }
            self._webhooks.schedule(webhook_url, orjson.dumps(event), ready_at)
        return job

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise _Rejected(404, "Job not found")
        return job

    def _result(self, incoming: Incoming, job_id: str, kind: str) -> HttpResponse:
        try:
            self._authenticate(incoming)
            job = self._job(job_id)
        except _Rejected as rejected:
            return rejected.response
        if job.status(asyncio.get_running_loop().time()) != "SUCCESS":
            return json_response(404, {"detail": RESULT_NOT_FOUND})
        content = job.document.markdown if kind == "markdown" else job.document.text
        return json_response(200, {kind: content, "job_metadata": job.metadata})

    @staticmethod
    def _job_response(job_id: str, status: str) -> HttpResponse:
        return json_response(
            200, {"id": job_id, "status": status, "error_code": None, "error_message": None}
        )

    # -- faults -------------------------------------------------------------

    def fault_response(self, status: int, incoming: Incoming) -> HttpResponse:
        return json_response(status, {"detail": status_phrase(status)})

    def not_found(self, incoming: Incoming) -> HttpResponse:
        return json_response(404, {"detail": "Not Found"})

    def malform(self, response: HttpResponse, kind: str) -> HttpResponse:
        return malform_generic(response, kind)
