"""Prometheus metrics for the API server, in the text exposition format (0.0.4).

No client library: `render` writes the format itself, one `# HELP` and one
`# TYPE` line per family, label values escaped (backslash, double quote,
newline) and samples sorted so the output is stable. What is exposed:

* `breakwater_breaker_state{provider,state}` gauge: 1 for the current state, 0 for the others.
* `breakwater_breaker_transitions_total{provider,from,to}` counter: fed by
  `Breaker.subscribe` (`Metrics.watch`).
* `breakwater_calls_total{provider,outcome,path}` counter: fed by
  `Router.subscribe` (`Metrics.count_calls`), one per routed call.
* `breakwater_cost_usd_total{provider}` counter: the budget usage summary.
* `breakwater_bucket_level{provider,bucket}` gauge: each guard's requests/tokens bucket.
* `breakwater_jobs{state}` gauge: `JobStore.jobs_by_state()`.
* `breakwater_store_up` gauge: 1 if the store answered this scrape, 0 if not.

The cost counter follows the usage log, which forgets hours past its
retention (30 days by default); Prometheus reads such a drop as a counter
reset, which is what it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from resilience import Breaker, Guard, Router, Transition
from resilience.breaker import STATES
from resilience.router import RoutedCall
from state.machine import JobState

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

T = TypeVar("T")

MetricType = Literal["counter", "gauge"]
Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric family: its name, type, help text and samples (labels, value)."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))


def escape_label_value(value: str) -> str:
    """A label value as the exposition format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes only backslash and newline."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The text exposition of `families`, each with HELP and TYPE, samples sorted by labels."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in sorted(family.samples, key=lambda sample: sample[0]):
            if labels:
                inner = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels)
                lines.append(f"{family.name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{family.name} {format_value(value)}")
    return "\n".join(lines) + "\n"


class Metrics:
    """The counters the server cannot read from elsewhere, and the snapshot of the rest.

    Counters (transitions, calls) live here, fed by the breakers and routers
    they watch; gauges and costs are read from the guards, the usage summary
    and the store when `render_snapshot` runs.
    """

    def __init__(self) -> None:
        self._transitions: Counter[tuple[str, str, str]] = Counter()
        self._calls: Counter[tuple[str, str, str]] = Counter()
        self._watched: set[int] = set()

    def watch(self, breakers: Iterable[Breaker]) -> None:
        """Count every transition of these breakers; watching one twice counts it once."""
        for breaker in self._unwatched(breakers):
            breaker.subscribe(self._on_transition)

    def _on_transition(self, transition: Transition) -> None:
        self._transitions[(transition.provider, transition.source, transition.dest)] += 1

    def count_calls(self, routers: Iterable[Router]) -> None:
        """Count every call these routers route; counting one twice counts it once."""
        for router in self._unwatched(routers):
            router.subscribe(self._on_call)

    def _unwatched(self, sources: Iterable[T]) -> Iterator[T]:
        """The sources not subscribed to yet, marked as subscribed now."""
        for source in sources:
            if id(source) not in self._watched:
                self._watched.add(id(source))
                yield source

    def _on_call(self, call: RoutedCall) -> None:
        self.record_call(call.provider, call.outcome, call.path)

    def record_call(self, provider: str, outcome: str, path: str) -> None:
        """Count one call: `outcome` such as "ok" or an error class, `path` "real" or "mock"."""
        self._calls[(provider, outcome, path)] += 1

    def transitions(self) -> dict[tuple[str, str, str], int]:
        """(provider, from, to) -> count, so far."""
        return dict(self._transitions)

    def calls(self) -> dict[tuple[str, str, str], int]:
        """(provider, outcome, path) -> count, so far."""
        return dict(self._calls)

    def families(
        self,
        *,
        guards: Mapping[str, Guard],
        usage_summary: Mapping[str, Any],
        jobs: Mapping[JobState, int] | None,
    ) -> list[Family]:
        """Every family, from the counters here and the given snapshot.

        Bucket levels are read from the running loop's clock, so call this on
        the loop. `jobs` is None when the store did not answer: the job gauge
        is then left empty and `breakwater_store_up` is 0.
        """
        state = Family(
            "breakwater_breaker_state",
            "gauge",
            "1 for the breaker's current state, 0 for the others.",
        )
        levels = Family(
            "breakwater_bucket_level",
            "gauge",
            "Units available now in each token bucket of a guard.",
        )
        shared = Family(
            "breakwater_shared_limits_reachable",
            "gauge",
            "1 while a guard's shared limits (Redis) answer, 0 while it uses its fallback.",
        )
        for name, guard in guards.items():
            if guard.shared is not None:
                shared.add(1.0 if guard.shared.reachable else 0.0, provider=name)
            current = guard.breaker.state
            for candidate in STATES:
                state.add(1.0 if candidate == current else 0.0, provider=name, state=candidate)
            for bucket_name, bucket in (("requests", guard.requests), ("tokens", guard.tokens)):
                if bucket is not None:
                    levels.add(bucket.level(), provider=name, bucket=bucket_name)
        transitions = Family(
            "breakwater_breaker_transitions_total",
            "counter",
            "Breaker transitions by provider, from and to.",
        )
        for (provider, source, dest), count in self._transitions.items():
            transitions.samples.append(
                ((("provider", provider), ("from", source), ("to", dest)), float(count))
            )
        calls = Family(
            "breakwater_calls_total",
            "counter",
            "Provider calls by provider, outcome and path (real or mock).",
        )
        for (provider, outcome, path), count in self._calls.items():
            calls.add(float(count), provider=provider, outcome=outcome, path=path)
        cost = Family(
            "breakwater_cost_usd_total",
            "counter",
            "Dollars spent per provider, from the budget usage log.",
        )
        for provider, stats in _providers(usage_summary).items():
            cost.add(float(stats.get("cost_usd", 0.0)), provider=provider)
        job_family = Family("breakwater_jobs", "gauge", "Jobs in each state.")
        if jobs is not None:
            for job_state in JobState:
                job_family.add(float(jobs.get(job_state, 0)), state=job_state.value)
        store_up = Family(
            "breakwater_store_up", "gauge", "1 if the job store answered this scrape, else 0."
        )
        store_up.add(0.0 if jobs is None else 1.0)
        return [state, transitions, calls, cost, levels, shared, job_family, store_up]

    def render_snapshot(
        self,
        *,
        guards: Mapping[str, Guard],
        usage_summary: Mapping[str, Any],
        jobs: Mapping[JobState, int] | None,
    ) -> str:
        """`render(self.families(...))`."""
        return render(self.families(guards=guards, usage_summary=usage_summary, jobs=jobs))


def _providers(summary: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    providers = summary.get("providers", {})
    return providers if isinstance(providers, Mapping) else {}


def merge_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several `UsageLog.summary()` results as one: providers side by side, totals summed.

    A provider present in more than one summary has its totals summed and
    its hours concatenated. One summary is returned as it is.
    """
    if len(summaries) == 1:
        return dict(summaries[0])
    providers: dict[str, dict[str, Any]] = {}
    totals: dict[str, Any] = {"requests": 0, "tokens": 0, "cost_usd": 0.0, "errors": {}}
    retention = max((float(s.get("retention_s", 0.0)) for s in summaries), default=0.0)
    for summary in summaries:
        for provider, stats in _providers(summary).items():
            into = providers.setdefault(
                provider, {"requests": 0, "tokens": 0, "cost_usd": 0.0, "errors": {}, "hours": []}
            )
            _add_totals(into, stats)
            into["hours"] = sorted(
                [*into["hours"], *stats.get("hours", [])], key=lambda hour: str(hour["hour"])
            )
            _add_totals(totals, stats)
    return {
        "retention_s": retention,
        "providers": dict(sorted(providers.items())),
        "totals": totals,
    }


def _add_totals(into: dict[str, Any], stats: Mapping[str, Any]) -> None:
    into["requests"] += int(stats.get("requests", 0))
    into["tokens"] += int(stats.get("tokens", 0))
    into["cost_usd"] = round(into["cost_usd"] + float(stats.get("cost_usd", 0.0)), 9)
    errors: dict[str, int] = into["errors"]
    for error_class, count in dict(stats.get("errors", {})).items():
        errors[error_class] = errors.get(error_class, 0) + int(count)
