"""Receiving LlamaCloud webhooks: verify, decode, deduplicate, hand to a waiter.

Framework-free, so the API server's aiohttp handler, the emulator and the
tests share one implementation:

* `verify_lc_signature` / `sign_lc`: LlamaCloud's `LC-Signature:
  sha256=<hex HMAC-SHA256(secret, raw body)>`. It carries no timestamp or
  message id, so it cannot stop replays; deduplication on (job id, event) is
  what makes a replayed or redelivered event harmless.
* `verify_standard_webhook` / `sign_standard_webhook`: the Standard Webhooks
  scheme (webhook-id, webhook-timestamp, `v1,<base64>` signatures), an
  optional stronger scheme with replay protection by timestamp tolerance.
* `parse_webhook_body`: our delivery body format (LlamaCloud's is
  undocumented, so we define it and the emulator follows it).
* `WebhookInbox`: dedup plus `wait(job_id)` for the client that uploaded.
* `check_delivery`: the whole accept/reject decision as an HTTP status. It
  only verifies and decodes; the caller records an accepted event with
  `WebhookInbox.accept` after its own checks (a job it does not know is 404).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from resilience import ConfigError

LC_SIGNATURE_HEADER = "LC-Signature"
STANDARD_TOLERANCE_S = 300.0
"""Five minutes either way, as openai-python and the Standard Webhooks spec use."""

TERMINAL_STATUSES = frozenset(
    {"SUCCESS", "PARTIAL_SUCCESS", "ERROR", "CANCELLED", "CANCELED", "COMPLETED", "FAILED"}
)
"""Job statuses after which nothing more will happen to a job (v1's and v2's)."""


# -- signatures --------------------------------------------------------------


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def sign_lc(secret: str, body: bytes) -> str:
    """The `LC-Signature` header value LlamaCloud sends for `body`."""
    return "sha256=" + _hmac_sha256(secret.encode(), body).hex()


def verify_lc_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Does `header` sign exactly these raw bytes with `secret`?

    The body must be the bytes as received: re-serialized JSON would not
    match. Missing or malformed headers are simply not valid, and an empty
    secret validates nothing (anyone could sign with it).
    """
    if not secret or not header:
        return False
    scheme, sep, digest = header.strip().partition("=")
    if not sep or scheme.strip().lower() != "sha256":
        return False
    expected = sign_lc(secret, body).removeprefix("sha256=")
    return hmac.compare_digest(expected.encode(), digest.strip().lower().encode())


def _standard_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        # The message must not quote the secret.
        raise ConfigError(
            "LLAMA_CLOUD_WEBHOOK_SECRET: a Standard Webhooks secret must be base64, "
            "optionally prefixed with whsec_"
        ) from None


def _standard_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(_hmac_sha256(key, signed)).decode()


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery of `body`."""
    signature = _standard_signature(_standard_key(secret), msg_id, str(timestamp), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def verify_standard_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = STANDARD_TOLERANCE_S,
) -> bool:
    """Is this a fresh, correctly signed Standard Webhooks delivery?

    `now` is wall-clock epoch seconds (`resilience.clock.wall_time()`).
    Timestamps too old *and* too far in the future are rejected: either way
    the delivery cannot be told apart from a replay. Any one of the
    space-separated `v1,` signatures may match, which is how senders rotate
    secrets.
    """
    lowered = _lower_keys(headers)
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp", "").strip()
    signatures = lowered.get("webhook-signature")
    if not msg_id or not signatures or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = _standard_signature(_standard_key(secret), msg_id, timestamp, body).encode()
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode()):
            return True
    return False


# -- the delivery body -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One delivered job event.

    Wire format (ours; the emulator sends it)::

        {"event_type": "parse.success", "job_id": "...", "status": "SUCCESS",
         "data": {"md": "...", "job_metadata": {...}}}

    `status` may be omitted: it is then the event name's suffix in upper
    case (`parse.partial_success` -> `PARTIAL_SUCCESS`). A v2 event says
    `COMPLETED` or `FAILED` and carries the job object, not the result:
    `{"data": {"job": {...}}}`.
    """

    job_id: str
    event: str
    status: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def parse_webhook_body(body: bytes) -> WebhookEvent:
    """Decode a delivery, raising `ValueError` when it is not our event shape.

    LlamaCloud's default `webhook_output_format: "string"` sends the payload
    as a JSON-encoded string, so a body that decodes to a string is decoded
    once more.
    """
    try:
        document: Any = orjson.loads(body)
        if isinstance(document, str):
            document = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"webhook body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("webhook body must be a JSON object")
    job_id, event = document.get("job_id"), document.get("event_type")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("webhook body needs a non-empty string job_id")
    if not isinstance(event, str) or not event:
        raise ValueError("webhook body needs a non-empty string event_type")
    status = document.get("status", event.rpartition(".")[2].upper())
    if not isinstance(status, str):
        raise ValueError("webhook status must be a string")
    data = document.get("data", {})
    if not isinstance(data, dict):
        raise ValueError("webhook data must be a JSON object")
    return WebhookEvent(job_id, event, status.upper(), data)


# -- dedup and waiting -------------------------------------------------------


@dataclass(slots=True)
class _JobRecord:
    events: set[str] = field(default_factory=set)
    terminal: WebhookEvent | None = None


class WebhookInbox:
    """Deduplicates deliveries by (job id, event) and wakes whoever waits for a job.

    Memory is bounded by `max_jobs`: the records of the least recently
    touched jobs are forgotten beyond it. A job's record also holds its
    terminal event, so a delivery that arrives before the uploader starts
    waiting is not lost. Forgetting is safe because senders redeliver within
    hours, long before 10,000 newer jobs have come and gone; a redelivery
    after that would be accepted once more, and the job store behind the
    endpoint ignores a result for a finished job.

    Call `accept` on the event loop that runs the waiters (it is what the
    request handler does).
    """

    def __init__(self, *, max_jobs: int = 10_000) -> None:
        if max_jobs < 1:
            raise ValueError("WebhookInbox max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, _JobRecord] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[WebhookEvent]]] = {}
        # Every terminal event, numbered from 1, the newest `max_jobs` kept (`finished`).
        self._finished: deque[tuple[int, WebhookEvent]] = deque(maxlen=max_jobs)
        self._count = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def seen(self, event: WebhookEvent) -> bool:
        """Was `event` (its job id and event name) recorded before? Records nothing."""
        record = self._jobs.get(event.job_id)
        return record is not None and event.event in record.events

    def accept(self, event: WebhookEvent) -> bool:
        """Record `event`; True if it is new, False if it was delivered before."""
        record = self._jobs.get(event.job_id)
        if record is None:
            record = self._jobs[event.job_id] = _JobRecord()
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)
        else:
            self._jobs.move_to_end(event.job_id)
        if event.event in record.events:
            return False
        record.events.add(event.event)
        if event.terminal and record.terminal is None:
            record.terminal = event
            self._count += 1
            self._finished.append((self._count, event))
            for waiter in self._waiters.get(event.job_id, ()):
                if not waiter.done():
                    waiter.set_result(event)
        return True

    def finished(self, after: int) -> tuple[int, list[WebhookEvent]]:
        """The terminal events accepted since mark `after` (0: all kept), and the new mark.

        For a reader that polls rather than waits (the durable parses'
        poller): it keeps the mark and asks again on its next round.
        """
        return self._count, [event for number, event in self._finished if number > after]

    def terminal(self, job_id: str) -> WebhookEvent | None:
        """The job's first terminal event, if one was accepted (and not forgotten)."""
        record = self._jobs.get(job_id)
        return None if record is None else record.terminal

    async def close(self) -> None:
        """Nothing to release here; a shared inbox stops listening."""

    async def known(self, job_id: str) -> bool:
        """Does a parse in another process wait for `job_id`? This inbox knows of none.

        A shared inbox (`providers.llamaparse.relay.SharedInbox`) answers from Redis.
        """
        return False

    async def wait(self, job_id: str, timeout_s: float) -> WebhookEvent | None:
        """The job's first terminal event, or None if none comes within `timeout_s`."""
        record = self._jobs.get(job_id)
        if record is not None and record.terminal is not None:
            return record.terminal
        waiter: asyncio.Future[WebhookEvent] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            return None
        finally:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[job_id]


# -- the endpoint's decision -------------------------------------------------


class WebhookVerdict(NamedTuple):
    """What the receiving endpoint answers.

    `error` is the JSON body for a rejection (FastAPI's `{"detail": ...}`
    shape, as LlamaCloud itself answers), None when accepted. `event` is the
    decoded event when the body was valid; `duplicate` says the inbox had
    recorded it before, which still answers 200 so the sender stops
    redelivering. The verdict records nothing: the caller calls
    `inbox.accept(event)` once it has decided to take the event.
    """

    status: int
    error: dict[str, str] | None
    event: WebhookEvent | None
    duplicate: bool = False


def check_delivery(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_bytes: int,
    inbox: WebhookInbox,
    now: float,
    standard_secret: str | None = None,
) -> WebhookVerdict:
    """Decide one delivery: 413 too large, 401 unsigned, 400 malformed, else 200.

    With `standard_secret` set, the Standard Webhooks headers are required
    (LC-Signature alone would allow replays); otherwise `LC-Signature` must
    match `secret`. The signature is checked before the body is parsed, so
    unauthenticated input never reaches the JSON decoder. Whether the job
    exists is not known here: the caller answers 404 for an unknown job
    after a 200 verdict. Nothing is recorded in `inbox` (it is only asked
    whether the event is a duplicate): the caller records an event it takes
    with `inbox.accept(event)`, so a rejected one leaves no trace.
    """
    if len(body) > max_bytes:
        return WebhookVerdict(413, {"detail": f"body exceeds {max_bytes} bytes"}, None)
    if standard_secret is not None:
        signed = verify_standard_webhook(standard_secret, headers, body, now=now)
    else:
        signed = verify_lc_signature(secret, body, _lower_keys(headers).get("lc-signature"))
    if not signed:
        return WebhookVerdict(401, {"detail": "missing or invalid webhook signature"}, None)
    try:
        event = parse_webhook_body(body)
    except ValueError as exc:
        return WebhookVerdict(400, {"detail": str(exc)}, None)
    return WebhookVerdict(200, None, event, duplicate=inbox.seen(event))
