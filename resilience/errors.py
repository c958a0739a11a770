"""The errors Breakwater raises and the one table that classifies them.

Provider clients raise `ProviderError`; the guard itself raises the
`Rejected` family (`CircuitOpen`, `RateLimited`, `BudgetExceeded`) before a
provider is touched. Every rejection carries `retry_after_s`, so a caller (or
a job scheduler) always knows when trying again makes sense.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    """What an outcome says about the provider, as the breaker and retry see it."""

    FAILURE = "failure"
    """The provider is unhealthy: counts against the breaker and is retried."""
    RATE_LIMITED = "rate_limited"
    """A 429: the provider is alive but busy. Retried after its Retry-After."""
    CALLER = "caller"
    """Any other 4xx: the request was wrong and the provider proved healthy."""
    CONFIGURATION = "configuration"
    """401 or 403: a key or permission is wrong. Surfaces at once."""
    QUOTA = "quota"
    """402 or `insufficient_quota`: the account is out of money. Surfaces at once."""


class ProviderError(Exception):
    """An error from a provider call, as a provider client reports it.

    `status` is the HTTP status when there was a response, None for transport
    errors. `retry_after_s` is what the provider asked us to wait, if anything.
    `code` is the provider's machine-readable error code, and `request_id`
    the provider's id for the request, for its support desk.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.code = code
        self.request_id = request_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"retry_after_s={self.retry_after_s!r}, code={self.code!r}, "
            f"request_id={self.request_id!r})"
        )


def classify(exc: BaseException) -> ErrorClass:
    """Classify what a provider call raised.

    | raised                                   | class          |
    |------------------------------------------|----------------|
    | code `insufficient_quota`, 402           | QUOTA          |
    | 401, 403                                 | CONFIGURATION  |
    | 429                                      | RATE_LIMITED   |
    | 408, 409, 5xx, no status, timeouts,      | FAILURE        |
    | connection errors, anything unexpected   |                |
    | any other 4xx                            | CALLER         |

    A `ConfigError` (a client missing its key, say) is CONFIGURATION too:
    retrying or falling back to a mock would hide it. Other unexpected
    exception types count as failures, as in Polly: a client bug that
    raises on every call should stop the traffic, not hide behind it.
    `asyncio.CancelledError` is never passed here; the breaker treats a
    cancelled call as no outcome at all.
    """
    if not isinstance(exc, ProviderError):
        return ErrorClass.CONFIGURATION if isinstance(exc, ConfigError) else ErrorClass.FAILURE
    if exc.code == "insufficient_quota" or exc.status == 402:
        return ErrorClass.QUOTA
    status = exc.status
    if status is None or status in (408, 409) or status >= 500:
        return ErrorClass.FAILURE
    if status in (401, 403):
        return ErrorClass.CONFIGURATION
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if 400 <= status < 500:
        return ErrorClass.CALLER
    return ErrorClass.FAILURE


class Rejected(Exception):
    """The guard refused a call before it reached the provider.

    Subclasses say why. `retry_after_s` is the earliest time, in seconds from
    now, at which the same call could be admitted.
    """

    reason = "rejected"

    def __init__(self, provider: str, retry_after_s: float, detail: str = "") -> None:
        super().__init__(provider, retry_after_s, detail)
        self.provider = provider
        self.retry_after_s = retry_after_s
        self.detail = detail

    def __str__(self) -> str:
        extra = f": {self.detail}" if self.detail else ""
        return f"{self.provider}: {self.reason}, retry after {self.retry_after_s:.3f}s{extra}"


class CircuitOpen(Rejected):
    """The provider's breaker is open, or half-open with every probe taken."""

    reason = "circuit_open"


class RateLimited(Rejected):
    """A token bucket could not grant the call within its `max_wait`."""

    reason = "rate_limited"


class BudgetExceeded(Rejected):
    """The call's estimated cost would cross a budget limit.

    `retry_after_s` runs to the end of the period whose limit is reached.
    """

    reason = "budget"


class ConfigError(ValueError):
    """A configuration value is missing or invalid. The message names the variable."""
