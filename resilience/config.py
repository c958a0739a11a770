"""Breakwater's settings, read from environment variables, each declared once.

Every variable is one `Setting` row in `CONFIG_SETTINGS`, `SHARED_SETTINGS`
or `PROVIDER_SETTINGS`: its name, the attribute it fills, how its text is
read, what it accepts, what unset means and what it is for. Reading,
validation, the typo check, `describe_variables`, the README's table
(`markdown_table`) and `.env.example` (`env_example`) all come from those
rows, so a new setting is one row plus its typed field, and the tests fail
when a document disagrees with the rows.

Provider names are parameters, so `resilience` stays free of any particular
provider. Every problem is reported at once, each naming its variable and
what it accepts, and a misspelt BREAKWATER_* name is an error: a limit the
user believes is set but is silently ignored is worse than a failed start.

`python -m resilience.config` prints the README's table.
"""

from __future__ import annotations

import math
import random
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from difflib import SequenceMatcher
from typing import Any, Final, Literal, get_args

from resilience.breaker import BreakerPolicy
from resilience.bucket import TokenBucket
from resilience.budget import Budget, BudgetLimits
from resilience.errors import ConfigError
from resilience.events import DEFAULT_LOG_PATH
from resilience.guard import Guard
from resilience.ledger import LedgerStore
from resilience.limits import Limits
from resilience.retry import RetryPolicy
from resilience.router import ServiceMode
from resilience.shared.policy import BudgetWhenDown, SharedPolicy

PREFIX: Final = "BREAKWATER_"
DEFAULT_MAX_ATTEMPTS: Final = 4
DEFAULT_FALLBACK_FRACTION: Final = SharedPolicy().fallback_fraction
DEFAULT_QUORUM: Final = 2
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")

_SECRET_MARKERS: Final = ("KEY", "SECRET", "TOKEN", "PASSWORD")
"""A variable whose name contains one of these never has its value put in a message."""

_DEFAULT_POLICY: Final = BreakerPolicy()

BreakerSharing = Literal["local", "quorum"]


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One provider's limits, retries and breaker overrides.

    None means no limit, or for the breaker fields, keep `BreakerPolicy`'s default.
    """

    rpm: int | None = None
    tpm: int | None = None
    daily_budget_usd: float | None = None
    hourly_budget_usd: float | None = None
    daily_requests: int | None = None
    hourly_requests: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_wait_s: float | None = None
    failure_threshold: int | None = None
    cooldown_s: float | None = None
    cooldown_max_s: float | None = None
    half_open_max_calls: int | None = None
    probe_timeout_s: float | None = None
    slow_call_s: float | None = None

    def breaker_policy(self) -> BreakerPolicy:
        """`BreakerPolicy()` with the overrides that are set.

        Raises ValueError for combinations BreakerPolicy rejects; `load_config`
        never returns settings that do.
        """
        overrides = {
            name: value for name in _BREAKER_OVERRIDES if (value := getattr(self, name)) is not None
        }
        return replace(BreakerPolicy(), **overrides)

    def budget_limits(self) -> BudgetLimits | None:
        """The budget's limits, or None when none is set."""
        limits = BudgetLimits(
            self.daily_budget_usd, self.hourly_budget_usd, self.daily_requests, self.hourly_requests
        )
        return None if limits == BudgetLimits(None, None, None, None) else limits

    def shares_limits(self) -> bool:
        """Whether a shared gate has anything to enforce: a rate limit or a budget."""
        return self.rpm is not None or self.tpm is not None or self.budget_limits() is not None

    def guard(
        self,
        name: str,
        *,
        rng: random.Random | None = None,
        ledger: LedgerStore | None = None,
        shared: Limits | None = None,
    ) -> Guard:
        """A `Guard` for provider `name` with these limits, retries and breaker.

        RPM and TPM become token buckets that hold one minute's allowance and
        refill continuously; budgets become one `Budget` scoped to the provider,
        kept in `ledger` (pass a persistent one so spend survives restarts;
        the default is in memory). `shared` replaces both with limits kept for
        many processes (see `SharedSettings.gate`).
        """
        retry = RetryPolicy(max_attempts=self.max_attempts, rng=rng)
        if shared is not None:
            policy = self.breaker_policy()
            return Guard(name, policy, retry=retry, max_wait_s=self.max_wait_s, shared=shared)
        requests = _per_minute(self.rpm, f"{name}.requests")
        tokens = _per_minute(self.tpm, f"{name}.tokens")
        limits = (
            self.daily_budget_usd,
            self.hourly_budget_usd,
            self.daily_requests,
            self.hourly_requests,
        )
        budget = (
            Budget(*limits, scope=name, ledger=ledger)
            if any(v is not None for v in limits)
            else None
        )
        return Guard(
            name,
            self.breaker_policy(),
            requests=requests,
            tokens=tokens,
            retry=retry,
            budget=budget,
            max_wait_s=self.max_wait_s,
        )


def _per_minute(limit: int | None, name: str) -> TokenBucket | None:
    return None if limit is None else TokenBucket(limit, limit / 60.0, name=name)


@dataclass(frozen=True, slots=True)
class SharedSettings:
    """Where the shared limits live, and the policies around them. See README's scale-out."""

    redis_url: str | None = field(default=None, repr=False)
    budget_when_down: BudgetWhenDown = "closed"
    fallback_fraction: float = DEFAULT_FALLBACK_FRACTION
    breaker_sharing: BreakerSharing = "local"
    quorum: int = DEFAULT_QUORUM

    def policy(self) -> SharedPolicy:
        return SharedPolicy(
            fallback_fraction=self.fallback_fraction, budget_when_down=self.budget_when_down
        )


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `load_config` read. URLs are left out of the repr: they carry passwords."""

    service_mode: ServiceMode = ServiceMode.HYBRID
    log_path: str | None = None
    db_url: str | None = field(default=None, repr=False)
    shared: SharedSettings = field(default_factory=SharedSettings)
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    """Settings per provider, keyed by the names passed to `load_config`."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable, declared once; everything else is derived from these rows."""

    name: str
    """The variable; for a provider setting, the part after BREAKWATER_<PROVIDER>_."""
    attr: str
    """The field of `Config`, `SharedSettings` or `ProviderSettings` it fills."""
    parse: Callable[[str], object]
    """The value, or None when the (stripped, non-empty) text is not acceptable."""
    expected: str
    """What `parse` accepts, as the error message states it."""
    meaning: str
    default: str
    """What leaving the variable unset means: "default X" or "unset: ..."."""

    def variable(self, provider: str | None = None) -> str:
        """The variable's name; a provider setting's name needs its provider."""
        return self.name if provider is None else variable_name(provider, self.name)


def _provider_setting(
    attr: str, parse: Callable[[str], object], expected: str, meaning: str, default: str
) -> Setting:
    """A per-provider row: its variable is BREAKWATER_<PROVIDER>_<ATTR>."""
    return Setting(attr.upper(), attr, parse, expected, meaning, default)


def _text(text: str) -> str:
    return text


def _positive_int(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None  # int() would also take "+5", "1_000", " 5" and non-ASCII digits
    value = int(text)
    return value if value > 0 else None


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _positive_number(text: str) -> float | None:
    value = _finite(text)
    return value if value is not None and value > 0 else None


def _seconds_or_zero(text: str) -> float | None:
    value = _finite(text)
    return value if value is not None and value >= 0 else None


def _fraction(text: str) -> float | None:
    value = _finite(text)
    return value if value is not None and 0 < value <= 1 else None


def _redis_url(text: str) -> str | None:
    return text if text.startswith(REDIS_SCHEMES) else None


def _service_mode(text: str) -> ServiceMode | None:
    try:
        return ServiceMode(text.lower())
    except ValueError:
        return None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    """A parser for a choice, taken in any case, as SERVICE_MODE is."""
    return lambda text: text.lower() if text.lower() in choices else None


def _choices(choices: Sequence[str]) -> str:
    return f"one of {', '.join(choices)}"


_INTEGER: Final = "a positive integer"
_NUMBER: Final = "a positive number"
_NO_LIMIT: Final = "unset: no limit"

CONFIG_SETTINGS: Final = (
    Setting(
        "SERVICE_MODE",
        "service_mode",
        _service_mode,
        _choices(list(ServiceMode)),
        "how calls are served: mock (mock responses only), real (providers only) or "
        "hybrid (providers, with mock fallback)",
        f"default {Config().service_mode}",
    ),
    Setting(
        "BREAKWATER_LOG",
        "log_path",
        _text,
        "a file path, or - for standard error",
        "where JSON-lines events are written",
        f"default {DEFAULT_LOG_PATH}",
    ),
    Setting(
        "BREAKWATER_DB",
        "db_url",
        _text,
        "a SQLite path, sqlite:///PATH or a postgresql:// URL",
        "the database where the commands keep jobs and spend",
        "unset: breakwater.sqlite3",
    ),
)
"""The variables `Config` holds directly."""

SHARED_SETTINGS: Final = (
    Setting(
        "BREAKWATER_REDIS_URL",
        "redis_url",
        _redis_url,
        f"a URL starting with {', '.join(REDIS_SCHEMES)}",
        "the Redis server whose rate limits and budgets every worker shares (see Scale-out)",
        "unset: each process keeps its own",
    ),
    Setting(
        "BREAKWATER_REDIS_BUDGET_WHEN_DOWN",
        "budget_when_down",
        _one_of(get_args(BudgetWhenDown)),
        _choices(get_args(BudgetWhenDown)),
        "while Redis is unreachable: closed (no spend without the shared ledger) or local "
        "(spend against this process's budget at the fallback fraction of the limits)",
        f"default {SharedPolicy().budget_when_down}",
    ),
    Setting(
        "BREAKWATER_REDIS_FALLBACK_FRACTION",
        "fallback_fraction",
        _fraction,
        "a number in (0, 1]",
        "while Redis is unreachable, local rate limits refill at this fraction of the shared rate",
        f"default {DEFAULT_FALLBACK_FRACTION:g}",
    ),
    Setting(
        "BREAKWATER_BREAKER_SHARING",
        "breaker_sharing",
        _one_of(get_args(BreakerSharing)),
        _choices(get_args(BreakerSharing)),
        "local (each process its own breakers) or quorum (breakers open everywhere once "
        "BREAKWATER_BREAKER_QUORUM workers have tripped within a minute; needs "
        "BREAKWATER_REDIS_URL)",
        f"default {SharedSettings().breaker_sharing}",
    ),
    Setting(
        "BREAKWATER_BREAKER_QUORUM",
        "quorum",
        _positive_int,
        _INTEGER,
        "workers that must trip within a minute before every breaker opens",
        f"default {DEFAULT_QUORUM}",
    ),
)
"""The variables of `SharedSettings`: Redis and what happens around it."""

GLOBAL_SETTINGS: Final = CONFIG_SETTINGS + SHARED_SETTINGS
"""The variables that belong to no provider, in the order documents list them."""

PROVIDER_SETTINGS: Final = (
    _provider_setting(
        "rpm", _positive_int, _INTEGER, "requests per minute (token bucket)", _NO_LIMIT
    ),
    _provider_setting(
        "tpm", _positive_int, _INTEGER, "tokens per minute (token bucket)", _NO_LIMIT
    ),
    _provider_setting(
        "daily_budget_usd", _positive_number, _NUMBER, "US dollars per UTC day", _NO_LIMIT
    ),
    _provider_setting(
        "hourly_budget_usd", _positive_number, _NUMBER, "US dollars per hour", _NO_LIMIT
    ),
    _provider_setting("daily_requests", _positive_int, _INTEGER, "calls per UTC day", _NO_LIMIT),
    _provider_setting("hourly_requests", _positive_int, _INTEGER, "calls per hour", _NO_LIMIT),
    _provider_setting(
        "max_attempts",
        _positive_int,
        _INTEGER,
        "attempts per call, the first included",
        f"default {DEFAULT_MAX_ATTEMPTS}",
    ),
    _provider_setting(
        "max_wait_s",
        _seconds_or_zero,
        "a number of seconds, 0 or more",
        "seconds a call may wait for a rate-limit token, 0 to fail at once",
        "unset: wait as long as it takes",
    ),
    _provider_setting(
        "failure_threshold",
        _positive_int,
        _INTEGER,
        "consecutive failures that open the breaker",
        f"default {_DEFAULT_POLICY.failure_threshold}",
    ),
    _provider_setting(
        "cooldown_s",
        _positive_number,
        _NUMBER,
        "seconds the breaker stays open before it lets probes through",
        f"default {_DEFAULT_POLICY.cooldown_s:g}",
    ),
    _provider_setting(
        "cooldown_max_s",
        _positive_number,
        _NUMBER,
        "longest cooldown as failed probes multiply it (at least the cooldown)",
        f"default {_DEFAULT_POLICY.cooldown_max_s:g}",
    ),
    _provider_setting(
        "half_open_max_calls",
        _positive_int,
        _INTEGER,
        "probe calls let through at once while half-open",
        f"default {_DEFAULT_POLICY.half_open_max_calls}",
    ),
    _provider_setting(
        "probe_timeout_s",
        _positive_number,
        _NUMBER,
        "seconds a half-open probe may take before it counts as failed",
        f"default {_DEFAULT_POLICY.probe_timeout_s:g}",
    ),
    _provider_setting(
        "slow_call_s",
        _positive_number,
        _NUMBER,
        "seconds after which a call that succeeded still counts as a failure for the "
        "breaker (a slow call); its result is returned",
        "unset: only failed calls count",
    ),
)
"""Each provider's variables, BREAKWATER_<PROVIDER>_<NAME>, filling `ProviderSettings`."""

_BREAKER_OVERRIDES: Final = tuple(
    f.name for f in fields(ProviderSettings) if f.name in {p.name for p in fields(BreakerPolicy)}
)
"""The `ProviderSettings` fields that override the `BreakerPolicy` field of the same name."""


def variable_name(provider: str, setting: str) -> str:
    """BREAKWATER_<PROVIDER>_<SETTING>, non-alphanumerics in the provider becoming "_"."""
    return f"{PREFIX}{re.sub('[^A-Za-z0-9]', '_', provider).upper()}_{setting.upper()}"


def _provider_names(providers: Sequence[str]) -> dict[str, list[str]]:
    """Each provider's variable names; two providers may not share a name."""
    if isinstance(providers, str):
        raise TypeError("providers must be a sequence of names, not one string")
    names: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    for provider in dict.fromkeys(providers):
        prefix = variable_name(provider, "")
        if prefix in owners:
            raise ConfigError(
                f"providers {owners[prefix]!r} and {provider!r} would both be configured "
                f"by {prefix}* variables; rename one"
            )
        owners[prefix] = provider
        names[provider] = [row.variable(provider) for row in PROVIDER_SETTINGS]
    return names


def _shown(name: str, raw: str) -> str:
    upper = name.upper()
    # URLs carry passwords ("HOURLY" contains "URL", so only a suffix counts).
    if upper.endswith("_URL") or any(marker in upper for marker in _SECRET_MARKERS):
        return f"{name} (value hidden)"
    return f"{name}={raw!r}"


def _value(environ: Mapping[str, str], name: str) -> str | None:
    """The stripped value; empty counts as unset, as `VAR=` in a shell or .env file means."""
    text = environ.get(name, "").strip()
    return text or None


def _misspells(name: str, known: str) -> bool:
    """Whether `name` reads as `known` with a slip or two.

    difflib's similarity over the part after BREAKWATER_, which every name
    shares and would otherwise make any two look alike. A slip (a letter
    changed, dropped, added or swapped with its neighbour) costs about one
    character of similarity, so short names may differ by one slip and longer
    ones by two; the length check keeps a longer name that merely contains a
    known one (BREAKWATER_TEST_REDIS_URL) from counting.
    """
    a, b = name[len(PREFIX) :], known[len(PREFIX) :]
    slips = 1 if len(b) <= 4 else 2
    if abs(len(a) - len(b)) > slips:
        return False
    matched = sum(block.size for block in SequenceMatcher(None, a, b).get_matching_blocks())
    # ratio() >= 1 - slips / len(b), in integers so that "exactly one slip" is not lost to rounding
    return 2 * matched * len(b) >= (len(b) - slips) * (len(a) + len(b))


def _unknown_names(environ: Mapping[str, str], provider_names: dict[str, list[str]]) -> list[str]:
    """Problems for BREAKWATER_* names that are not known but look meant to be.

    A name under a configured provider's prefix is in our namespace, so any
    unknown one there is a mistake. Elsewhere only names that misspell a
    known one are: variables for providers this process does not configure,
    or for other tools, are left alone. A name that differs from a known one
    only in case is reported too: the OS would not match it.
    """
    groups = [[row.name for row in GLOBAL_SETTINGS], *provider_names.values()]
    known = {name for group in groups for name in group}
    prefixes = {variable_name(p, ""): names for p, names in provider_names.items()}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if name in known or not upper.startswith(PREFIX):
            continue
        close = sorted(
            (-SequenceMatcher(None, upper, k).ratio(), k)
            for k in known
            if k.startswith(PREFIX) and _misspells(upper, k)
        )
        owners = [prefix for prefix in prefixes if upper.startswith(prefix)]
        if close:
            hint = f"; did you mean {close[0][1]}?"
            valid = next(group for group in groups if close[0][1] in group)
        elif owners:
            hint = "."
            valid = prefixes[max(owners, key=len)]
        else:
            continue
        problems.append(f"{name} is not a known variable{hint} Valid names: {', '.join(valid)}")
    return problems


def _read(
    environ: Mapping[str, str],
    rows: Sequence[Setting],
    problems: list[str],
    provider: str | None = None,
) -> dict[str, Any]:
    """The parsed values of the `rows` that are set, by attribute; problems are appended."""
    values: dict[str, Any] = {}
    for row in rows:
        name = row.variable(provider)
        raw = _value(environ, name)
        if raw is None:
            continue
        parsed = row.parse(raw)
        if parsed is None:
            problems.append(f"{_shown(name, raw)} is not valid: expected {row.expected}")
        else:
            values[row.attr] = parsed
    return values


def _breaker_conflict(environ: Mapping[str, str], provider: str, error: ValueError) -> str:
    """Name the variables behind a combination BreakerPolicy rejected."""
    message = str(error)
    involved = []
    for attr in _BREAKER_OVERRIDES:
        if re.search(rf"\b{attr}\b", message):
            name = variable_name(provider, attr)
            raw = _value(environ, name)
            default = getattr(_DEFAULT_POLICY, attr)
            involved.append(_shown(name, raw) if raw else f"{name} (unset, default {default:g})")
    return f"{' and '.join(involved)} are not valid together: {message}"


def load_config(environ: Mapping[str, str], providers: Sequence[str]) -> Config:
    """Read every variable of the settings tables for these providers.

    `environ` is usually `os.environ`; `providers` are the names the
    application routes to. Raises ConfigError listing every problem found.
    """
    provider_names = _provider_names(providers)
    problems = _unknown_names(environ, provider_names)
    values = _read(environ, CONFIG_SETTINGS, problems)
    settings: dict[str, ProviderSettings] = {}
    for provider in provider_names:
        before = len(problems)
        settings[provider] = ProviderSettings(
            **_read(environ, PROVIDER_SETTINGS, problems, provider)
        )
        if len(problems) == before:
            try:
                settings[provider].breaker_policy()
            except ValueError as error:
                problems.append(_breaker_conflict(environ, provider, error))
    shared = SharedSettings(**_read(environ, SHARED_SETTINGS, problems))
    if shared.breaker_sharing == "quorum" and shared.redis_url is None:
        problems.append("BREAKWATER_BREAKER_SHARING=quorum needs BREAKWATER_REDIS_URL to be set")
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(**values, shared=shared, providers=settings)


def describe_variables(providers: Sequence[str]) -> list[tuple[str, str]]:
    """(name, meaning) for every variable `load_config` reads, globals first."""
    described = [(row.name, _described(row)) for row in GLOBAL_SETTINGS]
    for provider in _provider_names(providers):
        for row in PROVIDER_SETTINGS:
            described.append((row.variable(provider), f"{provider}: {_described(row)}"))
    return described


def _described(row: Setting) -> str:
    return f"{row.meaning}; {row.expected}; {row.default}"


def markdown_table() -> str:
    """The README's table of variables; provider settings are shown for a provider `<P>`."""
    lines = ["| variable | meaning | accepts | when unset |", "|---|---|---|---|"]
    named = [(row.name, row) for row in GLOBAL_SETTINGS]
    named += [(f"{PREFIX}<P>_{row.name}", row) for row in PROVIDER_SETTINGS]
    for name, row in named:
        unset = row.default.removeprefix("unset: ")
        lines.append(f"| `{name}` | {row.meaning} | {row.expected} | {unset} |")
    return "\n".join(lines) + "\n"


def env_example(
    providers: Sequence[str], values: Mapping[str, str], preambles: Mapping[str, str]
) -> str:
    """The settings part of `.env.example`: every variable under a comment saying what it is.

    A variable in `values` is set to its value; the others are commented out,
    so the file stays a valid configuration and shows what can be set.
    `preambles` holds text put at the head of a provider's section (its
    credentials, which its client reads, not this module).
    """
    sections = [[_example(row, row.name, values) for row in GLOBAL_SETTINGS]]
    for provider in _provider_names(providers):
        lines = [f"# --- {provider} ".ljust(79, "-"), preambles.get(provider, "").rstrip()]
        lines += [_example(row, row.variable(provider), values) for row in PROVIDER_SETTINGS]
        sections.append([line for line in lines if line])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _example(row: Setting, name: str, values: Mapping[str, str]) -> str:
    comment = textwrap.fill(
        f"{_described(row)}.",
        width=79,
        initial_indent="# ",
        subsequent_indent="# ",
    )
    line = f"{name}={values[name]}" if name in values else f"# {name}="
    return f"{comment}\n{line}"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
