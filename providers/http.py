"""What both provider clients share over HTTP: the correlation header, and reading responses.

* `correlated`: request headers plus `X-Correlation-ID`, the id bound to the
  call in hand (`resilience.correlation`), so the provider's request logs,
  and our emulators, tie each request to its job.

* `retry_after_s`: `retry-after-ms` first, then `Retry-After` as seconds or
  as an HTTP date, the order openai-python uses.
* `parse_duration`: OpenAI's Go-style reset durations (`6m0s`, `20ms`, `1h2m`).
* `rate_limits`: the x-ratelimit-* headers, with missing and -1 values as None.
* `error_from_response`: a `ProviderError` from either error shape, OpenAI's
  `{"error": {...}}` or LlamaCloud's FastAPI `{"detail": ...}`.
* `reported`: logs a provider error as one `provider.error` event.
* `redact`: removes secrets from text before it reaches a log or an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from providers.transport import HttpResponse
from resilience import ProviderError, correlation
from resilience.events import emit


def correlated(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers`, plus the bound correlation id's header when one is bound."""
    cid = correlation.current()
    return headers if cid is None else {**headers, correlation.HEADER: cid}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration such as `6m0s`, `1s` or `12ms`; None if unreadable."""
    if not text:
        return None
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNITS_S[unit] for number, unit in parts)


def retry_after_s(headers: Mapping[str, str], wall_now: float) -> float | None:
    """How long the server asked us to wait, in seconds, or None if it did not say.

    `wall_now` (epoch seconds) is needed only for the HTTP-date form. Values
    of zero or less are ignored, as openai-python ignores them.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - wall_now
        except (TypeError, ValueError, IndexError):
            return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The server's view of our limits; None where a header was missing or -1."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


def _count(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def rate_limits(headers: Mapping[str, str]) -> RateLimits:
    return RateLimits(
        remaining_requests=_count(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_count(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, type, code) from either error shape; all None if the body is neither."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        message, kind, code = error.get("message"), error.get("type"), error.get("code")
        return (
            message if isinstance(message, str) else None,
            kind if isinstance(kind, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(document, dict) and "detail" in document:
        detail = document["detail"]
        return (detail if isinstance(detail, str) else orjson.dumps(detail).decode()), None, None
    return None, None, None


def error_from_response(
    provider: str, response: HttpResponse, wall_now: float, *, secrets: Iterable[str] = ()
) -> ProviderError:
    """The `ProviderError` a non-2xx response stands for, with the server's own words.

    The error `code` is the body's `code`, or its `type` when there is no
    code (OpenAI's quota error carries both as `insufficient_quota`).
    """
    message, kind, code = _error_fields(response.body)
    if message is None:
        snippet = response.body[:200].decode("utf-8", "replace")
        message = snippet or "(empty body)"
    return ProviderError(
        redact(f"{provider}: HTTP {response.status}: {message}", secrets),
        status=response.status,
        retry_after_s=retry_after_s(response.headers, wall_now),
        code=code or kind,
        request_id=response.headers.get("x-request-id"),
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every non-empty secret replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def reported(provider: str, error: ProviderError, correlation_id: str | None) -> ProviderError:
    """Log `error` (already free of secrets) as one `provider.error` event; return it to raise.

    The provider's request id is in the line, for its support desk, and the
    correlation id ties it to the call that failed.
    """
    emit(
        "provider.error",
        level="WARNING",
        provider=provider,
        status=error.status,
        code=error.code,
        request_id=error.request_id,
        correlation_id=correlation_id,
        message=error.message,
    )
    return error
