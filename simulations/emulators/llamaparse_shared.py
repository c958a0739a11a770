"""What LlamaParse's v1 and v2 APIs share: auth, the upload limit, the content cache, page failures.

Both API versions answer errors FastAPI's way (`{"detail": ...}`), need
`Authorization: Bearer <key>`, limit uploads per sliding window, and model
LlamaCloud's 48-hour content cache for billing: the same file with the same
options is a cache hit and costs 0 credits, but still takes the parse time,
so simulations stay predictable.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from simulations.emulators.multipart import Form, MultipartError, UploadedFile, parse_form
from simulations.emulators.ratelimit import SlidingWindow
from simulations.emulators.routing import Incoming, json_response

CACHE_TTL_S: Final = 48 * 3600.0
DEFAULT_PROJECT: Final = "emulated-project"
"""The `project_id` of jobs and files when the request names none."""


class Rejected(Exception):
    """Ends a request early with a FastAPI-style answer."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.response = json_response(status, {"detail": detail}, headers)


def invalid(location: str, message: str) -> Rejected:
    """A FastAPI-style 422 for one field."""
    return Rejected(422, [{"type": "value_error", "loc": ["body", location], "msg": message}])


def authenticate(incoming: Incoming, api_key: str | None) -> None:
    """401 "Invalid API key" without a Bearer key, or with the wrong one when `api_key` is set."""
    scheme, _, key = incoming.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or api_key not in (None, key):
        raise Rejected(401, "Invalid API key")


def read_form(incoming: Incoming) -> Form:
    """The multipart body, or 400 "There was an error parsing the body" as upstream."""
    try:
        return parse_form(incoming.headers.get("Content-Type", ""), incoming.body)
    except MultipartError:
        raise Rejected(400, "There was an error parsing the body") from None


def project_of(incoming: Incoming) -> str:
    """The `project_id` query parameter every LlamaCloud route takes, or the default."""
    return incoming.query.get("project_id") or DEFAULT_PROJECT


UNPARSEABLE_SUFFIXES: Final = (".exe", ".dll", ".so")
"""Uploads the emulator refuses with 400, on v1 and v2 alike, as LlamaParse refuses file
types it cannot parse. Only executables are modeled; the real list of accepted types is long."""


def refuse_unparseable(upload: UploadedFile) -> None:
    """400 for a file type LlamaParse cannot parse."""
    if upload.filename.lower().endswith(UNPARSEABLE_SUFFIXES):
        raise Rejected(400, f"Unsupported file type: {upload.filename.rsplit('.', 1)[-1]}")


def admit_upload(window: SlidingWindow, now: float, retry_after: bool) -> None:
    """429 when `window` is full; with Retry-After (whole seconds, at least 1) if asked."""
    wait_s = window.try_accept(now)
    if wait_s is None:
        return
    headers = {"Retry-After": str(max(1, math.ceil(wait_s)))} if retry_after else {}
    raise Rejected(
        429,
        f"Rate limit exceeded: at most {window.limit} uploads per "
        f"{window.window_s:g} seconds. Please retry later.",
        headers,
    )


class ContentCache:
    """Which (file, options) pairs were parsed in the last 48 hours, on the loop clock."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, str], float] = {}

    def hit(
        self, data: bytes, options: str, now: float, *, use: bool, store_at: float | None
    ) -> bool:
        """Is this a cache hit (`use`: may the cache answer)? If not, and `store_at` is
        given, the pair counts as parsed from then on (when its job completes)."""
        key = hashlib.sha256(data).hexdigest(), options
        parsed_at = self._parsed.get(key)
        hit = use and parsed_at is not None and parsed_at <= now < parsed_at + CACHE_TTL_S
        if not hit and store_at is not None:
            self._parsed[key] = store_at
        return hit

    def clear(self) -> None:
        self._parsed.clear()


def draw_failed_pages(rng: random.Random, rate: float, pages: int) -> frozenset[int]:
    """The 1-based pages that fail, each with probability `rate`; no draws at rate 0,
    so a plan without page failures replays exactly as before they existed."""
    if rate <= 0.0:
        return frozenset()
    return frozenset(number for number in range(1, pages + 1) if rng.random() < rate)


class WallClock:
    """ISO 8601 times for loop times: the first call pins loop time to the wall clock.

    v2 answers carry `created_at` and `updated_at`, and its job list filters on
    them, so they must look like real times; every later time is that anchor
    plus loop time, so a virtual-time run still shows a consistent timeline.
    """

    def __init__(self) -> None:
        self._anchor: tuple[datetime, float] | None = None

    def at(self, loop_time: float) -> datetime:
        if self._anchor is None:
            self._anchor = (datetime.now(UTC), loop_time)
        wall, loop = self._anchor
        return wall + timedelta(seconds=loop_time - loop)

    def iso(self, loop_time: float) -> str:
        return self.at(loop_time).isoformat().replace("+00:00", "Z")
