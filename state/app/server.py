"""The API server (aiohttp): uploads, job status, LlamaParse webhooks, health, metrics, costs.

`create_app(...)` builds the application; nothing here reads the environment.

* `POST /documents`: multipart, field `file`. 201 `{"job_id", "created": true}`,
  or 200 with `"created": false` when identical content already has a job.
  An `X-Correlation-ID` (1 to 128 visible ASCII characters, else 400) is kept
  on the job and carried by its provider requests, log lines and audit rows.
* `GET /jobs/{id}`: `{"job": {...}, "history": [...]}`; the job carries
  `state` and `degraded`.
* `POST /webhooks/llamaparse`: 200 `{"status": "accepted" | "duplicate", ...}`.
* `GET /health`: `{"store": "ok" | "unreachable", "providers": {name:
  {"breaker": state}}}`; 503 when the store is unreachable.
* `GET /metrics`: Prometheus text (`state.app.metrics`).
* `GET /costs`: the budget usage summary (`UsageLog.summary()`).

Every error, including aiohttp's own (404 no route, 405, 413), is JSON of
one shape: `{"error": {"code": "...", "message": "..."}}`. A 500 says only
"internal error": the exception's class is logged (`server.error`), never
its message, which might quote a secret.

Uploads: the `file` part is streamed and counted, so a body over
`max_upload_bytes` is refused with 413 before it is all read, whatever its
Content-Length claims; the job is only created once the whole file is in.

Webhooks: `check_delivery` decides 413, 401 and 400 (signature before
parsing). A valid event for a job nobody knows is 404; "known" is the
`known_job` callable, given the LlamaParse job id. The store cannot answer
that: it records the LlamaParse job id only with the parse result, after
the webhook the parse waits for. So the caller supplies the lookup (the
component that uploaded to LlamaParse knows the ids it waits for:
`LlamaParse.awaiting`). `check_delivery` only verifies and decodes; the
handler records an accepted, known event with `inbox.accept` (which wakes
the waiting parse), so a rejected delivery changes neither the inbox nor
the store. A redelivery of an event already taken is 200 "duplicate" even
once its job has finished. The handler never writes to the store at all:
the parse step moves the job.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from providers.llamaparse.webhooks import (
    WebhookEvent,
    WebhookInbox,
    check_delivery,
    sign_standard_webhook,
)
from resilience import Guard, correlation
from resilience.clock import Clock, wall_time
from resilience.events import emit
from resilience.usage import UsageLog
from state.app.metrics import CONTENT_TYPE, Metrics, merge_summaries
from state.machine import Job, JobState
from state.store.protocol import JobEvent, JobStore

MIB: Final = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES: Final = 20 * MIB
DEFAULT_MAX_WEBHOOK_BYTES: Final = 1 * MIB
FILE_FIELD: Final = "file"
_MULTIPART_SLACK: Final = 64 * 1024
"""Room for part headers and boundaries on top of the file itself."""
_READ_CHUNK: Final = 64 * 1024

KnownJob = Callable[[str], Awaitable[bool]]
"""Given a LlamaParse job id from a webhook, is it one of ours?"""


class _Config:
    def __init__(
        self,
        *,
        store: JobStore,
        guards: Mapping[str, Guard],
        usage: UsageLog | None,
        metrics: Metrics,
        webhook_secret: str,
        standard_secret: str | None,
        inbox: WebhookInbox,
        known_job: KnownJob,
        max_upload_bytes: int,
        max_webhook_bytes: int,
        clock: Clock,
    ) -> None:
        self.store = store
        self.guards = guards
        self.usage = usage
        self.metrics = metrics
        self.webhook_secret = webhook_secret
        self.standard_secret = standard_secret
        self.inbox = inbox
        self.known_job = known_job
        self.max_upload_bytes = max_upload_bytes
        self.max_webhook_bytes = max_webhook_bytes
        self.clock = clock

    def usage_summary(self) -> dict[str, Any]:
        if self.usage is not None:
            return self.usage.summary()
        logs: dict[int, UsageLog] = {}
        for guard in self.guards.values():
            if guard.budget is not None:
                logs.setdefault(id(guard.budget.usage), guard.budget.usage)
        if not logs:
            return UsageLog(clock=self.clock).summary()
        return merge_summaries([log.summary() for log in logs.values()])


_CONFIG: Final = web.AppKey("breakwater.server", _Config)


def create_app(
    store: JobStore,
    *,
    guards: Mapping[str, Guard],
    metrics: Metrics,
    webhook_secret: str,
    known_job: KnownJob,
    inbox: WebhookInbox | None = None,
    usage: UsageLog | None = None,
    standard_secret: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_webhook_bytes: int = DEFAULT_MAX_WEBHOOK_BYTES,
    clock: Clock = wall_time,
) -> web.Application:
    """The API application. See the module docstring for the routes.

    `guards` maps provider names to their guards (breaker state, buckets,
    budgets); `metrics` is subscribed to each guard's breaker here.
    `usage` is the usage log `/costs` and the cost metric read; None merges
    the logs of the guards' budgets. `inbox` receives accepted webhooks
    (None: a private one, which still deduplicates). `known_job(llamaparse_job_id)`
    says whether a webhook's job is one of ours; unknown ones get 404.
    `clock` gives wall time for job stamps and webhook timestamps.
    """
    if max_upload_bytes < 1 or max_webhook_bytes < 1:
        raise ValueError("max_upload_bytes and max_webhook_bytes must be positive")
    if not webhook_secret and standard_secret is None:
        raise ValueError("a webhook secret is required: unsigned webhooks would be accepted")
    if standard_secret is not None:
        sign_standard_webhook(standard_secret, "probe", 0, b"")  # ConfigError if not base64
    metrics.watch(guard.breaker for guard in guards.values())
    app = web.Application(
        middlewares=[_json_errors],
        client_max_size=max(max_upload_bytes, max_webhook_bytes) + _MULTIPART_SLACK,
    )
    app[_CONFIG] = _Config(
        store=store,
        guards=dict(guards),
        usage=usage,
        metrics=metrics,
        webhook_secret=webhook_secret,
        standard_secret=standard_secret,
        inbox=inbox if inbox is not None else WebhookInbox(),
        known_job=known_job,
        max_upload_bytes=max_upload_bytes,
        max_webhook_bytes=max_webhook_bytes,
        clock=clock,
    )
    app.router.add_post("/documents", _upload)
    app.router.add_get("/jobs/{job_id}", _job)
    app.router.add_post("/webhooks/llamaparse", _webhook)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/costs", _costs)
    return app


# -- errors --------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: status, a short machine code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(error_body(code, message), status)


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


_KEPT_HEADERS: Final = ("Allow", "Retry-After", "Location")


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, _code_for(exc.status), exc.reason)
        for name in _KEPT_HEADERS:
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception as exc:
        # The class only: a message may quote request data or a secret.
        emit(
            "server.error",
            level="ERROR",
            method=request.method,
            path=request.path,
            error_class=type(exc).__name__,
        )
        return _error(500, "internal_error", "internal error")


# -- uploads -----------------------------------------------------------------


_CORRELATION_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")
"""What an `X-Correlation-ID` may be: it goes out again in every provider request's
headers and every log line, so only visible ASCII, and not too much of it."""


def _correlation_id(request: web.Request) -> str | None:
    """The upload's `X-Correlation-ID`, if it sent one; ApiError 400 if unusable."""
    sent = request.headers.get(correlation.HEADER)
    if sent is not None and _CORRELATION_ID.fullmatch(sent) is None:
        raise ApiError(
            400,
            "bad_correlation_id",
            f"{correlation.HEADER} must be 1 to 128 visible ASCII characters",
        )
    return sent


async def _upload(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    cid = _correlation_id(request)
    limit = config.max_upload_bytes
    length = request.content_length
    if length is not None and length > limit + _MULTIPART_SLACK:
        raise ApiError(413, "too_large", f"upload exceeds {limit} bytes")
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "bad_request", "expected a multipart/form-data upload")
    try:
        content, filename, mime_type = await _read_file_part(request, limit)
    except (ValueError, AssertionError, HttpProcessingError, aiohttp.ClientPayloadError) as exc:
        # aiohttp's multipart reader reports malformed input this way.
        raise ApiError(400, "bad_request", "malformed multipart body") from exc
    job, created = await config.store.create_job(
        content,
        filename=filename,
        mime_type=mime_type,
        now=config.clock(),
        correlation_id=cid,
    )
    body = {"job_id": job.id, "created": created, "state": job.state.value}
    return _json(body, 201 if created else 200, {"Location": f"/jobs/{job.id}"})


async def _read_file_part(request: web.Request, limit: int) -> tuple[bytes, str, str]:
    """The `file` part's bytes, name and type; ApiError 400 if absent, 413 over `limit`."""
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            raise ApiError(400, "missing_file", f"the upload needs a '{FILE_FIELD}' field")
        if not isinstance(part, aiohttp.BodyPartReader) or part.name != FILE_FIELD:
            continue
        chunks: list[bytes] = []
        size = 0
        while chunk := await part.read_chunk(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"upload exceeds {limit} bytes")
            chunks.append(chunk)
        if size == 0:
            raise ApiError(400, "empty_file", "the uploaded file is empty")
        filename = part.filename or "upload"
        mime_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE, "application/octet-stream")
        # Read to the closing boundary: a body cut short must not become a job.
        while (rest := await reader.next()) is not None:
            await rest.release()
        return b"".join(chunks), filename, mime_type


# -- jobs --------------------------------------------------------------------


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "sha256": job.sha256,
        "filename": job.filename,
        "mime_type": job.mime_type,
        "state": job.state.value,
        "degraded": job.degraded,
        "terminal": job.is_terminal,
        "version": job.version,
        "step_attempts": job.step_attempts,
        "wait_reason": None if job.wait_reason is None else job.wait_reason.value,
        "resume_to": None if job.resume_to is None else job.resume_to.value,
        "not_before": job.not_before,
        "last_error": job.last_error,
        "failure_reason": job.failure_reason,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "correlation_id": job.correlation_id,
    }


def event_json(event: JobEvent) -> dict[str, Any]:
    return {
        "version": event.version,
        "from": None if event.source is None else event.source.value,
        "to": event.dest.value,
        "trigger": event.trigger,
        "reason": event.reason,
        "correlation_id": event.correlation_id,
        "at": event.at,
    }


async def _job(request: web.Request) -> web.Response:
    store = request.app[_CONFIG].store
    job_id = request.match_info["job_id"]
    job = await store.get_job(job_id)
    if job is None:
        raise ApiError(404, "job_not_found", "no job has this id")
    history = await store.history(job_id)
    return _json({"job": job_json(job), "history": [event_json(e) for e in history]})


# -- webhooks ----------------------------------------------------------------

_WEBHOOK_CODES: Final = {400: "malformed_body", 401: "bad_signature", 413: "too_large"}


async def _webhook(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    limit = config.max_webhook_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    body = await request.content.read(limit + 1)  # one byte over is enough for a 413
    verdict = check_delivery(
        config.webhook_secret,
        request.headers,
        body,
        max_bytes=limit,
        inbox=config.inbox,
        now=config.clock(),
        standard_secret=config.standard_secret,
    )
    event = verdict.event
    if verdict.status != 200 or event is None:
        detail = (verdict.error or {}).get("detail", "rejected")
        status = verdict.status if verdict.status != 200 else 400
        raise ApiError(status, _WEBHOOK_CODES.get(status, _code_for(status)), detail)
    if verdict.duplicate:
        # Already taken: acknowledge, even if the job has finished since.
        return _json(_accepted(event, duplicate=True))
    if not await config.known_job(event.job_id):
        raise ApiError(404, "job_not_found", "no job of ours has this LlamaParse job id")
    new = config.inbox.accept(event)
    return _json(_accepted(event, duplicate=not new))


def _accepted(event: WebhookEvent, *, duplicate: bool) -> dict[str, Any]:
    return {
        "status": "duplicate" if duplicate else "accepted",
        "job_id": event.job_id,
        "event": event.event,
    }


# -- health, metrics, costs -----------------------------------------------------


async def _jobs_or_none(store: JobStore) -> dict[JobState, int] | None:
    """The store's job counts, or None if it cannot answer (closed, locked, gone)."""
    try:
        return await store.jobs_by_state()
    except Exception as exc:
        emit("server.store_unreachable", level="WARNING", error_class=type(exc).__name__)
        return None


async def _health(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    reachable = await _jobs_or_none(config.store) is not None
    body = {
        "store": "ok" if reachable else "unreachable",
        "providers": {
            name: {"breaker": guard.breaker.state} for name, guard in config.guards.items()
        },
    }
    return _json(body, 200 if reachable else 503)


async def _metrics(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    text = config.metrics.render_snapshot(
        guards=config.guards,
        usage_summary=config.usage_summary(),
        jobs=await _jobs_or_none(config.store),
    )
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def _costs(request: web.Request) -> web.Response:
    return _json(request.app[_CONFIG].usage_summary())
