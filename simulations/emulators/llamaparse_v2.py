"""The emulated LlamaParse v2 API, `/api/v2/parse` (results: `llamaparse_results`; files:
`llamaparse_files`).

Shapes follow the official `llama-cloud` 2.x SDK (see
shared/reference/llamaparse-v2.md, section 9):

* `POST /api/v2/parse/upload` (multipart: `file` plus a `configuration` JSON
  part) and `POST /api/v2/parse` (JSON, by `file_id`) create a job and
  answer it flat: `{id, project_id, status, created_at, updated_at,
  error_message, name, tier}`. `tier` and `version` are required.
* `GET /api/v2/parse/{id}` answers `{"job": {...}}` plus exactly the
  fields asked for by `expand` (repeated, or comma-separated): `text`,
  `markdown`, `items`, `metadata`, `markdown_full`, `text_full`,
  `job_metadata`, `usage` (fills `job.usage.credits`), and
  `<name>_content_metadata` (into `result_content_metadata`). Content
  fields appear only once the job is COMPLETED.
* `GET /api/v2/parse` lists jobs, newest first [NF: the order is
  undocumented], filtered by `status`, `job_ids`, `created_at_on_or_after`
  and `created_at_on_or_before`; `page_size` (default 50) and an opaque
  `page_token` page through them. A job's `name` is its uploaded file's name.
* `POST /api/v2/parse/{id}/cancel`, `DELETE /api/v2/parse/{id}` (terminal
  jobs only; 400 otherwise, which the SDK does not retry), and `GET
  /api/v2/parse/versions`.

A job is PENDING for the first tenth of its parse time, RUNNING for the
rest, then COMPLETED, or FAILED with `error_message` when more pages failed
than `processing_control.job_failure_conditions.allowed_page_failure_ratio`
(default 0.05) allows or every page did. COMPLETED with failed pages is the
partial success: those pages have `success: false` and an `error`.

A create may lose its answer (the plan's `lost_upload_answer_rate`): the job
is made, listed and completed, but the request hangs (`AnswerLost`).

Uploads on both create routes share one window of the plan's
`v2_upload_limit` per `upload_window_s` (50 per 10 s, as documented); the
429 carries `Retry-After` (LlamaCloud documents none, but the SDK honours
one). Credits per page by tier: fast 1, cost_effective 3, agentic 10,
agentic_plus 45 [third-party figures]; a cache hit costs 0 (`disable_cache`
turns the cache off).

Webhooks: every entry of `webhook_configurations` gets the `parse.*` events
its `webhook_events` names (all when omitted), with its `webhook_headers`,
signed `LC-Signature` with its `webhook_signing_secret` (unsigned without
one). [NF] The body is `{"event_type", "job_id", "status", "data": {"job":
{...}}}`; `webhook_output_format` `"json"` sends it as is, the default
`"string"` as a JSON string holding it. Saved configurations
(`webhook_configuration_ids`) are not modelled; `source_url` is refused
with 400 because the emulator fetches nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from providers.transport import HttpResponse
from simulations.emulators.chaos import draw_range
from simulations.emulators.documents import Document, render_document
from simulations.emulators.faults import LlamaParsePlan
from simulations.emulators.ids import Ids
from simulations.emulators.llamaparse_files import FilesApi
from simulations.emulators.llamaparse_results import expanded, read_expand
from simulations.emulators.llamaparse_shared import (
    ContentCache,
    Rejected,
    WallClock,
    admit_upload,
    authenticate,
    draw_failed_pages,
    invalid,
    project_of,
    read_form,
    refuse_unparseable,
)
from simulations.emulators.multipart import UploadedFile
from simulations.emulators.ratelimit import SlidingWindow
from simulations.emulators.routing import AnswerLost, Incoming, Route, json_response
from simulations.emulators.stats import Stats
from simulations.emulators.webhook_delivery import WebhookSender

PARSE: Final = "/api/v2/parse"
CREDITS_PER_PAGE: Final = {"fast": 1, "cost_effective": 3, "agentic": 10, "agentic_plus": 45}
VERSIONS: Final = {
    "fast": ["2026-06-15", "2025-12-11"],
    "cost_effective": ["2026-09-28", "2026-08-19", "2026-07-23"],
    "agentic": ["2026-10-16", "2026-09-28", "2026-07-24"],
    "agentic_plus": ["2026-09-28", "2026-08-19", "2026-07-08"],
}
"""Dated versions per tier, newest first, a few of those `llama-cloud` 2.19 knows
(its response model accepts only its listed dates); `latest` is the first."""
TERMINAL: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
PENDING_SHARE: Final = 0.1
"""The share of a job's parse time it spends PENDING (queued) before RUNNING [NF]."""
DEFAULT_ALLOWED_FAILURE_RATIO: Final = 0.05
DEFAULT_PAGE_SIZE: Final = 50


@dataclass(frozen=True, slots=True)
class _Webhook:
    url: str
    events: frozenset[str] | None
    headers: dict[str, str] = field(repr=False)
    secret: str | None = field(repr=False)
    as_json: bool = False


@dataclass(slots=True)
class _Job:
    id: str
    project_id: str
    name: str
    tier: str
    created_at: float
    started_at: float
    ready_at: float
    document: Document
    failed_pages: frozenset[int]
    allowed_failure_ratio: float
    credits: float
    cache_hit: bool
    user_metadata: dict[str, str] | None
    webhooks: list[_Webhook]
    cancelled_at: float | None = None
    deliveries: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        failed, pages = len(self.failed_pages), self.document.page_count
        if failed == pages or failed / pages > self.allowed_failure_ratio:
            return "FAILED"
        return "COMPLETED"

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "CANCELLED"
        if now < self.started_at:
            return "PENDING"
        return "RUNNING" if now < self.ready_at else self.outcome

    def updated_at(self, now: float) -> float:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return self.cancelled_at
        return max(t for t in (self.created_at, self.started_at, self.ready_at) if t <= now)

    @property
    def error_message(self) -> str:
        return (
            f"{len(self.failed_pages)} of {self.document.page_count} pages failed to parse, "
            f"more than the allowed page failure ratio of {self.allowed_failure_ratio:g}"
        )


ParseJob = _Job
"""A v2 job as the emulator keeps it, for `ParseV2.jobs`'s readers."""


def _target_pages(raw: object) -> frozenset[int] | None:
    """`"1,3,5-8"` (1-based) as a set of page numbers."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise invalid("page_ranges.target_pages", "Input should be a valid string")
    pages: set[int] = set()
    try:
        for part in filter(None, (piece.strip() for piece in raw.split(","))):
            low, _, high = part.partition("-")
            pages.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise invalid("page_ranges.target_pages", f"Invalid page range: {raw}") from None
    return frozenset(pages)


def _webhooks(raw: object) -> list[_Webhook]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("webhook_configurations", "Input should be a valid list")
    configured = []
    for entry in raw:
        url = entry.get("webhook_url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise invalid("webhook_configurations.webhook_url", "Invalid webhook_url")
        events = entry.get("webhook_events")
        if events is not None and not (
            isinstance(events, list) and all(isinstance(e, str) for e in events)
        ):
            raise invalid("webhook_configurations.webhook_events", "Input should be a list")
        configured.append(
            _Webhook(
                url,
                None if events is None else frozenset(events),
                dict(entry.get("webhook_headers") or {}),
                entry.get("webhook_signing_secret"),
                entry.get("webhook_output_format") == "json",
            )
        )
    return configured


def _section(config: Mapping[str, Any], *path: str) -> Any:
    value: Any = config
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class ParseV2:
    """Jobs under `/api/v2/parse`, sharing the v1 API's cache and webhook sender."""

    def __init__(
        self,
        ids: Ids,
        api_key: str | None,
        webhooks: WebhookSender,
        stats: Stats,
        cache: ContentCache,
        files: FilesApi,
        clock: WallClock,
    ) -> None:
        self._ids = ids
        self._api_key = api_key
        self._webhooks = webhooks
        self._stats = stats
        self._cache = cache
        self._files = files
        self._clock = clock
        self._plan = LlamaParsePlan()
        self._rng = random.Random(0)
        self._lost = random.Random(0)
        self._uploads = SlidingWindow(self._plan.v2_upload_limit, self._plan.upload_window_s)
        self._jobs: dict[str, _Job] = {}
        self.routes: Sequence[Route] = (
            Route("POST", f"{PARSE}/upload", self._upload),
            Route("GET", f"{PARSE}/versions", self._versions),
            Route("POST", PARSE, self._create),
            Route("GET", PARSE, self._list),
            Route("GET", f"{PARSE}/{{job_id}}", self._get),
            Route("POST", f"{PARSE}/{{job_id}}/cancel", self._cancel),
            Route("DELETE", f"{PARSE}/{{job_id}}", self._delete),
        )

    def configure(self, plan: LlamaParsePlan, rng: random.Random, lost: random.Random) -> None:
        self._plan = plan
        self._rng = rng
        self._lost = lost
        self._uploads = SlidingWindow(plan.v2_upload_limit, plan.upload_window_s)

    def clear(self) -> None:
        self._jobs.clear()

    # -- endpoints ----------------------------------------------------------

    async def _upload(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            form = read_form(incoming)
            upload = form.files.get("file")
            if upload is None:
                raise invalid("file", "Field required")
            try:
                config = orjson.loads(form.value("configuration") or "")
            except orjson.JSONDecodeError:
                raise invalid("configuration", "Value is not valid JSON") from None
            job = self._submit(incoming, config, upload)
        except Rejected as rejected:
            return rejected.response
        return json_response(200, self._describe(job, incoming.received_at))

    async def _create(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            try:
                config = orjson.loads(incoming.body)
            except orjson.JSONDecodeError:
                raise Rejected(400, "There was an error parsing the body") from None
            if not isinstance(config, dict):
                raise invalid("body", "Input should be a valid object")
            if config.get("source_url") is not None:
                raise Rejected(400, "source_url is not supported by the emulator: upload a file")
            file_id = config.get("file_id")
            if not isinstance(file_id, str):
                raise invalid("file_id", "Either file_id or source_url is required")
            job = self._submit(incoming, config, self._files.find(file_id))
        except Rejected as rejected:
            return rejected.response
        return json_response(200, self._describe(job, incoming.received_at))

    async def _versions(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
        except Rejected as rejected:
            return rejected.response
        latest = {tier: dates[0] for tier, dates in VERSIONS.items()}
        return json_response(200, {**VERSIONS, "latest": latest})

    async def _list(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        query, now = incoming.query, incoming.received_at
        try:
            authenticate(incoming, self._api_key)
            after = self._moment(query.get("created_at_on_or_after"), "created_at_on_or_after")
            before = self._moment(query.get("created_at_on_or_before"), "created_at_on_or_before")
            size = int(query.get("page_size") or DEFAULT_PAGE_SIZE)
            start = int(query.get("page_token") or 0)
        except ValueError:
            return Rejected(422, "page_size and page_token must be integers").response
        except Rejected as rejected:
            return rejected.response
        wanted_ids, wanted_status = set(query.getall("job_ids", [])), query.get("status")
        matching = []
        for job in sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True):
            created = self._clock.at(job.created_at)
            if (
                (not wanted_ids or job.id in wanted_ids)
                and (wanted_status is None or job.status(now) == wanted_status)
                and (after is None or created >= after)
                and (before is None or created <= before)
            ):
                matching.append(job)
        page = matching[start : start + max(1, size)]
        following = start + len(page)
        return json_response(
            200,
            {
                "items": [self._describe(job, now) for job in page],
                "next_page_token": str(following) if following < len(matching) else None,
            },
        )

    async def _get(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        now = incoming.received_at
        try:
            authenticate(incoming, self._api_key)
            job = self._job(params["job_id"])
            expand = read_expand(incoming.query.getall("expand", []))
        except Rejected as rejected:
            return rejected.response
        described = self._describe(job, now)
        answer: dict[str, Any] = {"job": described}
        completed = job.status(now) == "COMPLETED"
        if "usage" in expand:
            described["usage"] = {"credits": job.credits if job.status(now) in TERMINAL else None}
        if completed:
            metadata = {
                "job_pages": job.document.page_count,
                "job_is_cache_hit": job.cache_hit,
                "credits_used": job.credits,
            }
            answer |= expanded(job.document, job.failed_pages, expand, metadata)
        return json_response(200, answer)

    async def _cancel(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        now = incoming.received_at
        try:
            authenticate(incoming, self._api_key)
            job = self._job(params["job_id"])
            if job.status(now) in TERMINAL:
                raise Rejected(400, f"Job {job.id} is already {job.status(now)}")
        except Rejected as rejected:
            return rejected.response
        for delivery in job.deliveries:
            delivery.cancel()
        job.cancelled_at = now
        self._notify(job, "parse.cancelled", now)
        return json_response(200, self._describe(job, now))

    async def _delete(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            job = self._job(params["job_id"])
            if job.status(incoming.received_at) not in TERMINAL:
                raise Rejected(400, f"Job {job.id} is not finished; cancel it first")
        except Rejected as rejected:
            return rejected.response
        del self._jobs[job.id]
        return json_response(200, {"id": job.id, "project_id": job.project_id})

    # -- steps --------------------------------------------------------------

    def _submit(self, incoming: Incoming, config: Any, upload: UploadedFile) -> _Job:
        """Validate `config`, charge the upload limit, make the job and schedule its webhooks.

        Raises `AnswerLost` once all that is done when the plan's
        `lost_upload_answer_rate` strikes (drawn from a generator of its own, so
        the rate leaves every other draw as it was).
        """
        if not isinstance(config, dict):
            raise invalid("configuration", "Input should be a valid object")
        tier, version = config.get("tier"), config.get("version")
        if tier not in CREDITS_PER_PAGE:
            raise invalid("tier", f"Input should be one of {', '.join(CREDITS_PER_PAGE)}")
        if version != "latest" and version not in VERSIONS[tier]:
            raise invalid("version", f"Unknown version {version!r} for tier {tier}")
        max_pages = _section(config, "page_ranges", "max_pages")
        if max_pages is not None and not isinstance(max_pages, int):
            raise invalid("page_ranges.max_pages", "Input should be a valid integer")
        targets = _target_pages(_section(config, "page_ranges", "target_pages"))
        ratio = _section(
            config, "processing_control", "job_failure_conditions", "allowed_page_failure_ratio"
        )
        if ratio is not None and (not isinstance(ratio, int | float) or not 0 <= ratio <= 1):
            raise invalid("allowed_page_failure_ratio", "Input should be a number from 0 to 1")
        webhooks = _webhooks(config.get("webhook_configurations"))
        refuse_unparseable(upload)
        now = incoming.received_at
        admit_upload(self._uploads, now, retry_after=True)
        document = render_document(upload, max_pages, targets)
        parse_s = draw_range(self._rng, self._plan.parse_time_s)
        failed = document.unreadable | draw_failed_pages(
            self._rng, self._plan.page_failure_rate, document.page_count
        )
        no_cache = config.get("disable_cache") is True
        options = {k: v for k, v in config.items() if k != "webhook_configurations"}
        hit = self._cache.hit(
            upload.data,
            orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode(),
            now,
            use=not no_cache,
            store_at=None if no_cache else now + parse_s,
        )
        metadata = config.get("user_metadata")
        job = _Job(
            id=f"pjb-{self._ids.job_id()}",
            project_id=project_of(incoming),
            name=upload.filename,
            tier=tier,
            created_at=now,
            started_at=now + parse_s * PENDING_SHARE,
            ready_at=now + parse_s,
            document=document,
            failed_pages=failed,
            allowed_failure_ratio=(
                DEFAULT_ALLOWED_FAILURE_RATIO if ratio is None else float(ratio)
            ),
            credits=0.0 if hit else float(document.page_count * CREDITS_PER_PAGE[tier]),
            cache_hit=hit,
            user_metadata=metadata if isinstance(metadata, dict) else None,
            webhooks=webhooks,
        )
        self._jobs[job.id] = job
        self._stats.job_created()
        ending = "parse.error" if job.outcome == "FAILED" else "parse.success"
        if job.outcome == "COMPLETED" and failed:
            ending = "parse.partial_success"
        for event, at in (
            ("parse.pending", job.created_at),
            ("parse.running", job.started_at),
            (ending, job.ready_at),
        ):
            self._notify(job, event, at)
        if self._lost.random() < self._plan.lost_upload_answer_rate:
            raise AnswerLost
        return job

    def _notify(self, job: _Job, event: str, at: float) -> None:
        for hook in job.webhooks:
            if hook.events is not None and event not in hook.events:
                continue
            payload = {
                "event_type": event,
                "job_id": job.id,
                "status": job.status(at),
                "data": {"job": self._describe(job, at)},
            }
            body = orjson.dumps(payload if hook.as_json else orjson.dumps(payload).decode())
            delivery = self._webhooks.schedule(
                hook.url, body, at, secret=hook.secret, headers=hook.headers
            )
            job.deliveries.append(delivery)

    def jobs(self) -> tuple[ParseJob, ...]:
        """Every job made and not deleted, oldest first: what was uploaded and billed, for a
        simulation to judge its client's records by. Read them; never change them."""
        return tuple(self._jobs.values())

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise Rejected(404, f"Job {job_id} not found")
        return job

    def _moment(self, raw: str | None, name: str) -> datetime | None:
        if raw is None:
            return None
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            raise Rejected(422, f"{name} must be an ISO 8601 datetime") from None

    def _describe(self, job: _Job, now: float) -> dict[str, Any]:
        """The job object at loop time `now`, as create, cancel and list answer it."""
        status = job.status(now)
        return {
            "id": job.id,
            "project_id": job.project_id,
            "status": status,
            "created_at": self._clock.iso(job.created_at),
            "updated_at": self._clock.iso(job.updated_at(now)),
            "error_message": job.error_message if status == "FAILED" else None,
            "name": job.name,
            "tier": job.tier,
            "user_metadata": job.user_metadata,
        }
