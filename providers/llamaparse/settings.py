"""How to call LlamaParse: the LLAMA_CLOUD_* variables the client reads, validated once.

The client reads its own variables (as the OpenAI client reads OPENAI_*),
because `resilience.config` knows no provider. Every problem is reported at
once, each naming its variable and what it accepts, as `load_config` does.

API v2 is the default; `LLAMA_CLOUD_API_VERSION=v1` keeps an account on the
old API behaving exactly as before (tier, version and page ranges are v2
options and are not sent to v1). Prices and the upload limit are documented
in shared/reference/llamaparse-v2.md, section 7.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar, get_args

from providers.pricing import CREDITS_PER_PAGE, DEFAULT_PARSE_TIER, USD_PER_CREDIT
from resilience import ConfigError

DEFAULT_BASE_URL: Final = "https://api.cloud.llamaindex.ai"

N = TypeVar("N", int, float)

ApiVersion = Literal["v2", "v1"]
API_VERSIONS: Final[tuple[ApiVersion, ...]] = get_args(ApiVersion)

UPLOAD_WINDOW_S: Final = 10.0
UPLOADS_PER_WINDOW: Final[Mapping[ApiVersion, int]] = {"v2": 50, "v1": 15}
"""Uploads per organization per 10 s: v2's documented 50; v1's 15, what this client has
always kept to (and what the emulator enforces on v1)."""
JOB_TIMEOUT_S: Final = 1800.0
"""How long after its upload a remote parse counts as expired: the service's own limit."""

EXPANDABLE: Final = ("text", "items")
"""Results a v2 parse may fetch beside its markdown (`ParsedDocument.extras`)."""

_TARGET_PAGES: Final = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class LlamaParseConfig:
    """Where and how to call LlamaParse. The key and webhook secret never show in a repr.

    `webhook_deadline_s` is how long to wait for the webhook before polling;
    `job_timeout_s` is the overall deadline from upload (the service itself
    stops jobs at 30 minutes). Polls sleep `poll_initial_s`, then `poll_step_s`
    more after each poll, up to `poll_max_s`. `credits_per_page` None means
    the tier's rate (`providers.pricing.CREDITS_PER_PAGE`); `uploads_per_window`
    None means the API version's documented limit (`UPLOADS_PER_WINDOW`).
    """

    api_key: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    read_timeout_s: float = 60.0
    webhook_deadline_s: float = 60.0
    job_timeout_s: float = JOB_TIMEOUT_S
    poll_initial_s: float = 1.0
    poll_step_s: float = 1.0
    poll_max_s: float = 5.0
    api_version: ApiVersion = "v2"
    tier: str = DEFAULT_PARSE_TIER
    version: str = "latest"
    target_pages: str | None = None
    max_pages: int | None = None
    expand: tuple[str, ...] = ()
    credits_per_page: float | None = None
    usd_per_credit: float = USD_PER_CREDIT
    uploads_per_window: int | None = None

    @property
    def page_credits(self) -> float:
        """Credits one page costs: the override, else the tier's (v1 parses at cost_effective)."""
        if self.credits_per_page is not None:
            return self.credits_per_page
        tier = self.tier if self.api_version == "v2" else DEFAULT_PARSE_TIER
        return float(CREDITS_PER_PAGE[tier])

    @property
    def upload_limit(self) -> int:
        """Uploads allowed in any `UPLOAD_WINDOW_S`."""
        if self.uploads_per_window is not None:
            return self.uploads_per_window
        return UPLOADS_PER_WINDOW[self.api_version]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LlamaParseConfig:
        """Read the LLAMA_CLOUD_* variables; empty values count as unset.

        A missing key is not an error here: mock mode needs none. It is
        raised (`MissingApiKey`) when a real call is made. Raises ConfigError
        listing every bad value.
        """

        def get(name: str) -> str | None:
            return environ.get(f"LLAMA_CLOUD_{name}", "").strip() or None

        problems: list[str] = []

        def bad(name: str, expected: str) -> None:
            raw = get(name)
            shown = "(value hidden)" if name.endswith("_URL") else f"={raw!r}"
            problems.append(f"LLAMA_CLOUD_{name}{shown} is not valid: expected {expected}")

        base_url = get("BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLAMA_CLOUD_BASE_URL must be an http(s) URL, got {base_url!r}")
        api_version: ApiVersion = "v2"
        raw_api = (get("API_VERSION") or "v2").lower()
        if raw_api == "v1":
            api_version = "v1"
        elif raw_api != "v2":
            bad("API_VERSION", "v2 or v1")
        tier = (get("PARSE_TIER") or DEFAULT_PARSE_TIER).lower()
        if tier not in CREDITS_PER_PAGE:
            bad("PARSE_TIER", f"one of {', '.join(CREDITS_PER_PAGE)}")
        version = get("PARSE_VERSION") or "latest"
        if version != "latest" and not _DATE.match(version):
            bad("PARSE_VERSION", "latest or a date, YYYY-MM-DD")
        target_pages = get("TARGET_PAGES")
        if target_pages is not None:
            target_pages = target_pages.replace(" ", "")
            if not _TARGET_PAGES.match(target_pages):
                bad("TARGET_PAGES", '1-based pages and ranges, e.g. "1,3,5-8"')
        expand = tuple(
            dict.fromkeys(part.strip().lower() for part in (get("EXPAND") or "").split(","))
        )
        expand = tuple(name for name in expand if name)
        if any(name not in EXPANDABLE for name in expand):
            bad("EXPAND", f"a comma-separated list of {', '.join(EXPANDABLE)}")

        def positive(name: str, parse: Callable[[str | None], N | None], expected: str) -> N | None:
            value = parse(get(name))
            if get(name) is not None and value is None:
                bad(name, expected)
            return value

        max_pages = positive("MAX_PAGES", _positive_int, "a positive integer")
        uploads = positive("UPLOADS_PER_10S", _positive_int, "a positive integer")
        credits = positive("CREDITS_PER_PAGE", _positive_number, "a positive number")
        usd = positive("USD_PER_CREDIT", _positive_number, "a positive number")
        timeout_s = positive("JOB_TIMEOUT_S", _positive_number, "a positive number of seconds")
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(
            api_key=get("API_KEY") or "",
            base_url=base_url.rstrip("/"),
            webhook_url=get("WEBHOOK_URL"),
            webhook_secret=get("WEBHOOK_SECRET"),
            api_version=api_version,
            tier=tier,
            version=version,
            target_pages=target_pages,
            max_pages=max_pages,
            expand=expand,
            credits_per_page=credits,
            usd_per_credit=USD_PER_CREDIT if usd is None else usd,
            uploads_per_window=uploads,
            job_timeout_s=JOB_TIMEOUT_S if timeout_s is None else timeout_s,
        )


def _positive_int(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdigit()) or int(text) < 1:
        return None
    return int(text)


def _positive_number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
