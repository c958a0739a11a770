"""Breakwater's settings, read from environment variables.

Provider names are parameters, so `resilience` stays free of any particular
provider. Every problem is reported at once, each naming its variable and
what it accepts, and a misspelt BREAKWATER_* name is an error: a limit the
user believes is set but is silently ignored is worse than a failed start.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
SERVICE_MODES: Final = tuple(mode.value for mode in ServiceMode)
DEFAULT_SERVICE_MODE: Final = "hybrid"
DEFAULT_MAX_ATTEMPTS: Final = 4
DEFAULT_FALLBACK_FRACTION: Final = SharedPolicy().fallback_fraction
DEFAULT_QUORUM: Final = 2
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")

GLOBAL_VARIABLES: Final[tuple[tuple[str, str], ...]] = (
    (
        "SERVICE_MODE",
        "How calls are served: mock (mock responses only), real (providers only) or "
        f"hybrid (providers, with mock fallback); default {DEFAULT_SERVICE_MODE}",
    ),
    (
        "BREAKWATER_LOG",
        f"Where JSON-lines events are written, a file path or - for standard error; "
        f"default {DEFAULT_LOG_PATH}",
    ),
    ("BREAKWATER_DB", "Database URL where Breakwater keeps its state; unset: none"),
    (
        "BREAKWATER_REDIS_URL",
        "Redis URL (redis://, rediss:// or unix://) whose rate limits and budgets every "
        "worker shares; unset: each process keeps its own",
    ),
    (
        "BREAKWATER_REDIS_BUDGET_WHEN_DOWN",
        "While Redis is unreachable: closed (no spend without the shared ledger) or local "
        "(spend against this process's budget at the fallback fraction of the limits); "
        "default closed",
    ),
    (
        "BREAKWATER_REDIS_FALLBACK_FRACTION",
        "While Redis is unreachable, local rate limits refill at this fraction of the shared "
        f"rate, a number in (0, 1]; default {DEFAULT_FALLBACK_FRACTION:g}",
    ),
    (
        "BREAKWATER_BREAKER_SHARING",
        "local (each process its own breakers) or quorum (breakers open everywhere once "
        "BREAKWATER_BREAKER_QUORUM workers have tripped within a minute; needs "
        "BREAKWATER_REDIS_URL); default local",
    ),
    (
        "BREAKWATER_BREAKER_QUORUM",
        f"Workers that must trip before all open, a positive integer; default {DEFAULT_QUORUM}",
    ),
)
"""The known names that belong to no provider, with their meanings.

Add new global variables here: this table is what the typo check and
`describe_variables` know about.
"""

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

    service_mode: str = DEFAULT_SERVICE_MODE
    """One of SERVICE_MODES, lower case."""
    log_path: str | None = None
    db_url: str | None = field(default=None, repr=False)
    shared: SharedSettings = field(default_factory=SharedSettings)
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    """Settings per provider, keyed by the names passed to `load_config`."""


@dataclass(frozen=True, slots=True)
class _Field:
    """One ProviderSettings field as an environment variable."""

    attr: str
    parse: Callable[[str], int | float | None]
    """The value, or None when the (stripped, non-empty) text is not acceptable."""
    expected: str
    meaning: str
    default: str
    """What leaving the variable unset means."""


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


_INTEGER: Final = "a positive integer"
_NUMBER: Final = "a positive number"
_FRACTION: Final = "a number in (0, 1]"

_NO_LIMIT: Final = "unset: no limit"

_PROVIDER_FIELDS: Final = (
    _Field("rpm", _positive_int, _INTEGER, "requests per minute (token bucket)", _NO_LIMIT),
    _Field("tpm", _positive_int, _INTEGER, "tokens per minute (token bucket)", _NO_LIMIT),
    _Field("daily_budget_usd", _positive_number, _NUMBER, "US dollars per UTC day", _NO_LIMIT),
    _Field("hourly_budget_usd", _positive_number, _NUMBER, "US dollars per hour", _NO_LIMIT),
    _Field("daily_requests", _positive_int, _INTEGER, "calls per UTC day", _NO_LIMIT),
    _Field("hourly_requests", _positive_int, _INTEGER, "calls per hour", _NO_LIMIT),
    _Field(
        "max_attempts",
        _positive_int,
        _INTEGER,
        "attempts per call, the first included",
        f"default {DEFAULT_MAX_ATTEMPTS}",
    ),
    _Field(
        "max_wait_s",
        _seconds_or_zero,
        "a number of seconds, 0 or more",
        "seconds a call may wait for a rate-limit token, 0 to fail at once",
        "unset: wait as long as it takes",
    ),
    _Field(
        "failure_threshold",
        _positive_int,
        _INTEGER,
        "consecutive failures that open the breaker",
        f"default {_DEFAULT_POLICY.failure_threshold}",
    ),
    _Field(
        "cooldown_s",
        _positive_number,
        _NUMBER,
        "seconds the breaker stays open before it lets probes through",
        f"default {_DEFAULT_POLICY.cooldown_s:g}",
    ),
    _Field(
        "cooldown_max_s",
        _positive_number,
        _NUMBER,
        "longest cooldown as failed probes multiply it (at least the cooldown)",
        f"default {_DEFAULT_POLICY.cooldown_max_s:g}",
    ),
    _Field(
        "half_open_max_calls",
        _positive_int,
        _INTEGER,
        "probe calls let through at once while half-open",
        f"default {_DEFAULT_POLICY.half_open_max_calls}",
    ),
    _Field(
        "probe_timeout_s",
        _positive_number,
        _NUMBER,
        "seconds a half-open probe may take before it counts as failed",
        f"default {_DEFAULT_POLICY.probe_timeout_s:g}",
    ),
)

_BREAKER_OVERRIDES: Final = (
    "failure_threshold",
    "cooldown_s",
    "cooldown_max_s",
    "half_open_max_calls",
    "probe_timeout_s",
)


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
        names[provider] = [variable_name(provider, f.attr) for f in _PROVIDER_FIELDS]
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


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`."""
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            edits = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                edits = min(edits, before[j - 2] + 1)
            current.append(edits)
        before, previous = previous, current
    return previous[-1]


def _allowance(known: str) -> int:
    """Edits that still read as a misspelling: one off a short suffix, two off a longer one."""
    return 1 if len(known) - len(PREFIX) <= 4 else 2


def _unknown_names(environ: Mapping[str, str], provider_names: dict[str, list[str]]) -> list[str]:
    """Problems for BREAKWATER_* names that are not known but look meant to be.

    A name under a configured provider's prefix is in our namespace, so any
    unknown one there is a mistake. Elsewhere only names a typo away from a
    known one are: variables for providers this process does not configure,
    or for other tools, are left alone. A name that differs from a known one
    only in case is reported too: the OS would not match it.
    """
    groups = [[name for name, _ in GLOBAL_VARIABLES], *provider_names.values()]
    known = {name for group in groups for name in group}
    prefixes = {variable_name(p, ""): names for p, names in provider_names.items()}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if name in known or not upper.startswith(PREFIX):
            continue
        close = sorted((d, k) for k in known if (d := _distance(upper, k)) <= _allowance(k))
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
    """Read SERVICE_MODE, BREAKWATER_LOG, BREAKWATER_DB and each provider's variables.

    `environ` is usually `os.environ`; `providers` are the names the
    application routes to. Raises ConfigError listing every problem found.
    """
    provider_names = _provider_names(providers)
    problems = _unknown_names(environ, provider_names)
    mode = _value(environ, "SERVICE_MODE")
    if mode is not None and mode.lower() not in SERVICE_MODES:
        choices = ", ".join(SERVICE_MODES)
        problems.append(f"{_shown('SERVICE_MODE', mode)} is not valid: expected one of {choices}")
    settings: dict[str, ProviderSettings] = {}
    for provider in provider_names:
        values: dict[str, Any] = {}
        invalid = False
        for spec in _PROVIDER_FIELDS:
            name = variable_name(provider, spec.attr)
            raw = _value(environ, name)
            if raw is None:
                continue
            parsed = spec.parse(raw)
            if parsed is None:
                problems.append(f"{_shown(name, raw)} is not valid: expected {spec.expected}")
                invalid = True
            else:
                values[spec.attr] = parsed
        settings[provider] = ProviderSettings(**values)
        if not invalid:
            try:
                settings[provider].breaker_policy()
            except ValueError as error:
                problems.append(_breaker_conflict(environ, provider, error))
    shared = _shared_settings(environ, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(
        service_mode=(mode or DEFAULT_SERVICE_MODE).lower(),
        log_path=_value(environ, "BREAKWATER_LOG"),
        db_url=_value(environ, "BREAKWATER_DB"),
        shared=shared,
        providers=settings,
    )


def _shared_settings(environ: Mapping[str, str], problems: list[str]) -> SharedSettings:
    """The BREAKWATER_REDIS_* and BREAKWATER_BREAKER_* variables; problems are appended."""
    url = _value(environ, "BREAKWATER_REDIS_URL")
    if url is not None and not url.startswith(REDIS_SCHEMES):
        problems.append(
            f"{_shown('BREAKWATER_REDIS_URL', url)} is not valid: expected a URL starting with "
            + ", ".join(REDIS_SCHEMES)
        )
    values: dict[str, Any] = {"redis_url": url}
    choices: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("BREAKWATER_REDIS_BUDGET_WHEN_DOWN", "budget_when_down", get_args(BudgetWhenDown)),
        ("BREAKWATER_BREAKER_SHARING", "breaker_sharing", get_args(BreakerSharing)),
    )
    for name, attr, allowed in choices:
        raw = _value(environ, name)
        if raw is None:
            continue
        if raw.lower() not in allowed:
            problems.append(
                f"{_shown(name, raw)} is not valid: expected one of {', '.join(allowed)}"
            )
        else:
            values[attr] = raw.lower()
    numbers: tuple[tuple[str, str, Callable[[str], int | float | None], str], ...] = (
        ("BREAKWATER_REDIS_FALLBACK_FRACTION", "fallback_fraction", _fraction, _FRACTION),
        ("BREAKWATER_BREAKER_QUORUM", "quorum", _positive_int, _INTEGER),
    )
    for name, attr, parse, expected in numbers:
        raw = _value(environ, name)
        if raw is None:
            continue
        parsed = parse(raw)
        if parsed is None:
            problems.append(f"{_shown(name, raw)} is not valid: expected {expected}")
        else:
            values[attr] = parsed
    if values.get("breaker_sharing") == "quorum" and url is None:
        problems.append("BREAKWATER_BREAKER_SHARING=quorum needs BREAKWATER_REDIS_URL to be set")
    return SharedSettings(**values)


def _fraction(text: str) -> float | None:
    value = _finite(text)
    return value if value is not None and 0 < value <= 1 else None


def describe_variables(providers: Sequence[str]) -> list[tuple[str, str]]:
    """(name, meaning) for every variable `load_config` reads, globals first."""
    described = list(GLOBAL_VARIABLES)
    for provider in _provider_names(providers):
        for spec in _PROVIDER_FIELDS:
            meaning = f"{provider}: {spec.meaning}; {spec.expected}; {spec.default}"
            described.append((variable_name(provider, spec.attr), meaning))
    return described
