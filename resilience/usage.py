"""What each provider was asked for, what it cost, and how it failed, hour by hour.

The budget ledger only knows totals per period, which is what admission
needs. People reading a bill want more: tokens, error classes, and a per-hour
histogram to spot the spike. `UsageLog` keeps those in hourly buckets and
forgets buckets older than its retention, so it stays small in a long-running
process. Hours are UTC and come from the injected clock.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from resilience.clock import Clock, wall_time
from resilience.errors import ConfigError

HOUR_S = 3_600
CSV_COLUMNS = ("provider", "hour", "requests", "tokens", "cost_usd", "errors")
_USD_DIGITS = 9
"""Dollars are reported rounded to a nano-dollar, hiding float noise like 0.30000000000000004."""


@dataclass(slots=True)
class _Bucket:
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


def hour_key(hour_start: float) -> str:
    """The UTC hour starting at `hour_start` (epoch seconds), as "YYYY-MM-DDTHH"."""
    return datetime.fromtimestamp(hour_start, tz=UTC).strftime("%Y-%m-%dT%H")


class UsageLog:
    """Per-provider requests, tokens, dollars and errors, in UTC hour buckets."""

    def __init__(self, retention_s: float = 30 * 86_400.0, *, clock: Clock = wall_time) -> None:
        if not retention_s > 0:
            raise ConfigError(f"retention_s must be positive, got {retention_s!r}")
        self.retention_s = retention_s
        self._clock = clock
        self._buckets: dict[str, dict[int, _Bucket]] = {}
        self._swept_hour = -1  # retention only needs checking once per hour
        # The bucket the last record went to, by its `at` and provider. The budget
        # records every call of an hour with the same `at` (the hour's start), and
        # finding the bucket costs more than counting in it.
        self._last: tuple[float, str, _Bucket] | None = None

    def record(
        self,
        provider: str,
        *,
        requests: int = 1,
        tokens: int = 0,
        cost_usd: float = 0.0,
        error_class: str | None = None,
        at: float | None = None,
    ) -> None:
        """Add one outcome to the provider's bucket for the hour of `at` (default: now).

        The budget passes the time its reservation was made, so a call is
        counted in the hour it started, like its charge in the ledger.
        """
        if requests < 0 or tokens < 0 or not cost_usd >= 0:
            raise ValueError(
                f"usage must be non-negative, got requests={requests!r}, "
                f"tokens={tokens!r}, cost_usd={cost_usd!r}"
            )
        now = self._clock() if at is None else at
        last = self._last
        if last is not None and last[0] == now and last[1] == provider:
            bucket = last[2]
        else:
            bucket = self._bucket(provider, now)
            self._last = (now, provider, bucket)
        bucket.requests += requests
        bucket.tokens += tokens
        bucket.cost_usd += cost_usd
        if error_class is not None:
            bucket.errors[str(error_class)] += 1

    def summary(self) -> dict[str, Any]:
        """Totals per provider and overall, with each provider's hourly histogram.

        Providers, hours and error classes are sorted, so the output is stable.
        """
        self._forget(self._clock())
        providers: dict[str, Any] = {}
        overall = _Bucket()
        for provider in sorted(self._buckets):
            hours = self._buckets[provider]
            total = _Bucket()
            for bucket in hours.values():
                _merge(total, bucket)
            _merge(overall, total)
            providers[provider] = {
                **_totals(total),
                "hours": [
                    {"hour": hour_key(start), **_totals(hours[start], errors_by_class=False)}
                    for start in sorted(hours)
                ],
            }
        return {"retention_s": self.retention_s, "providers": providers, "totals": _totals(overall)}

    def to_json(self) -> bytes:
        """`summary()` as JSON."""
        return orjson.dumps(self.summary())

    def to_csv(self) -> str:
        """One row per provider per hour, under a header of `CSV_COLUMNS`."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for provider, stats in self.summary()["providers"].items():
            for hour in stats["hours"]:
                writer.writerow([provider, *(hour[column] for column in CSV_COLUMNS[1:])])
        return out.getvalue()

    def _bucket(self, provider: str, now: float) -> _Bucket:
        """The provider's bucket for the hour of `now`, created if missing."""
        hour_start = int(now // HOUR_S) * HOUR_S
        if hour_start != self._swept_hour:
            self._forget(now)
            self._swept_hour = hour_start
        hours = self._buckets.get(provider)
        if hours is None:
            hours = self._buckets[provider] = {}
        bucket = hours.get(hour_start)
        if bucket is None:
            bucket = hours[hour_start] = _Bucket()
        return bucket

    def _forget(self, now: float) -> None:
        """Drop hours that ended before the retention window began, and emptied providers."""
        self._last = None  # its bucket may be one of those dropped
        oldest_kept = now - self.retention_s - HOUR_S
        for provider in list(self._buckets):
            hours = self._buckets[provider]
            for start in [s for s in hours if s <= oldest_kept]:
                del hours[start]
            if not hours:
                del self._buckets[provider]


def _merge(into: _Bucket, bucket: _Bucket) -> None:
    into.requests += bucket.requests
    into.tokens += bucket.tokens
    into.cost_usd += bucket.cost_usd
    into.errors.update(bucket.errors)


def _totals(bucket: _Bucket, *, errors_by_class: bool = True) -> dict[str, Any]:
    """A bucket as JSON: errors by class for totals, one count for an hour of the histogram."""
    errors: dict[str, int] | int = (
        dict(sorted(bucket.errors.items())) if errors_by_class else bucket.errors.total()
    )
    return {
        "requests": bucket.requests,
        "tokens": bucket.tokens,
        "cost_usd": round(bucket.cost_usd, _USD_DIGITS),
        "errors": errors,
    }
