"""Summarize a Breakwater event log: breaker timelines, time in state, trips, MTTR, fallbacks.

This is what `breakwater logs FILE` prints. It reads the JSON lines that
`resilience.events` writes, but a log is also what gets truncated, interleaved
with other output and edited by hand, so a line it cannot use is counted and
reported, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from resilience.breaker import CLOSED, OPEN, STATES

_SHOWN_SKIPPED_LINES: Final = 10
"""How many skipped line numbers the rendered report lists before summarizing."""

_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "breaker.transition": ("provider", "from", "to"),
    "fallback.served": ("provider",),
}
"""String fields an event needs to be counted; without them its line is skipped."""


class TimelineEntry(NamedTuple):
    """One breaker transition as logged; `ts` is the line's own timestamp text."""

    ts: str
    source: str
    dest: str
    trigger: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """What the log says about one provider's breaker and fallbacks."""

    provider: str
    timeline: list[TimelineEntry]
    time_in_state_s: dict[str, float]
    """Seconds per state, "closed", "open", "half_open" first, then any other logged state."""
    trips: int
    """Transitions from closed into open."""
    recoveries_s: list[float]
    """Seconds from each trip to the next transition into closed, for trips that recovered."""
    fallbacks_by_reason: dict[str, int]
    """fallback.served count per reason, most frequent first."""

    @property
    def mttr_s(self) -> float | None:
        """Mean time to recover, or None when no trip recovered."""
        if not self.recoveries_s:
            return None
        return sum(self.recoveries_s) / len(self.recoveries_s)

    @property
    def fallbacks(self) -> int:
        return sum(self.fallbacks_by_reason.values())


@dataclass(frozen=True, slots=True)
class LogReport:
    """The whole log: one `ProviderReport` per provider, sorted by name."""

    providers: dict[str, ProviderReport]
    events: int
    """Lines used."""
    skipped_lines: list[int]
    """1-based numbers of non-blank lines that were not JSON objects with the needed fields."""
    start: str | None
    """Timestamp text of the earliest event, None for a log with no usable event."""
    end: str | None
    span_s: float
    """Seconds from `start` to `end`."""

    @property
    def skipped(self) -> int:
        return len(self.skipped_lines)


@dataclass(slots=True)
class _Seen:
    """What analysis collects for one provider before it can total anything."""

    first: datetime
    transitions: list[tuple[datetime, TimelineEntry]] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # events.py always writes UTC; a hand-written zone-less time is read the same way.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _record(line: str) -> tuple[dict[str, Any], datetime] | None:
    """The line's object and time, or None when it is not a usable event."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    moment = _timestamp(record.get("ts"))
    return None if moment is None else (record, moment)


def _text(value: object) -> str:
    """A field as one table cell: missing becomes empty, whitespace runs one space."""
    return " ".join(str(value).split()) if value is not None else ""


def analyze(lines: Iterable[str]) -> LogReport:
    """Read JSON-lines events and total them per provider.

    Blank lines are ignored. A line is skipped (and counted) when it is not a
    JSON object with a string "event" and an ISO-8601 "ts", or when it is a
    breaker.transition without string "provider", "from" and "to", or a
    fallback.served without a string "provider". Events are ordered by
    timestamp, not file position, so interleaved writers still add up.
    """
    seen: dict[str, _Seen] = {}
    skipped: list[int] = []
    used = 0
    first: tuple[datetime, str] | None = None
    last: tuple[datetime, str] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _record(line)
        if parsed is None:
            skipped.append(number)
            continue
        record, moment = parsed
        event, provider = record["event"], record.get("provider")
        if not all(isinstance(record.get(key), str) for key in _REQUIRED.get(event, ())):
            skipped.append(number)
            continue
        used += 1
        stamp = (moment, record["ts"])
        first = stamp if first is None or moment < first[0] else first
        last = stamp if last is None or moment >= last[0] else last
        if not isinstance(provider, str):
            continue
        data = seen.setdefault(provider, _Seen(moment))
        data.first = min(data.first, moment)
        if event == "breaker.transition":
            entry = TimelineEntry(
                record["ts"],
                record["from"],
                record["to"],
                _text(record.get("trigger")),
                _text(record.get("reason")),
            )
            data.transitions.append((moment, entry))
        elif event == "fallback.served":
            data.fallbacks[_text(record.get("reason")) or "unknown"] += 1
    if first is None or last is None:
        return LogReport({}, used, skipped, None, None, 0.0)
    end = last[0]
    providers = {name: _summarize(name, seen[name], end) for name in sorted(seen)}
    span_s = (end - first[0]).total_seconds()
    return LogReport(providers, used, skipped, first[1], last[1], span_s)


def _summarize(provider: str, data: _Seen, end: datetime) -> ProviderReport:
    """Walk one provider's transitions in time order.

    Before its first transition the breaker was in that transition's "from"
    state (closed, unless the log starts mid-outage), from the provider's first
    event on. Each state then lasts until the next transition, and the last one
    until the log's last event.
    """
    transitions = sorted(data.transitions, key=lambda item: item[0])  # stable: file order on ties
    state = transitions[0][1].source if transitions else CLOSED
    since = data.first
    spent: dict[str, timedelta] = {name: timedelta() for name in STATES}
    trips = 0
    tripped_at: datetime | None = None
    recoveries: list[float] = []
    for moment, entry in transitions:
        spent[state] = spent.get(state, timedelta()) + (moment - since)
        if entry.source == CLOSED and entry.dest == OPEN:
            trips += 1
            tripped_at = moment
        elif entry.dest == CLOSED and tripped_at is not None:
            recoveries.append((moment - tripped_at).total_seconds())
            tripped_at = None
        state, since = entry.dest, moment
    spent[state] = spent.get(state, timedelta()) + (end - since)
    order = [*STATES, *sorted(set(spent) - set(STATES))]
    return ProviderReport(
        provider=provider,
        timeline=[entry for _, entry in transitions],
        time_in_state_s={name: spent[name].total_seconds() for name in order},
        trips=trips,
        recoveries_s=recoveries,
        fallbacks_by_reason=dict(sorted(data.fallbacks.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _counted(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _seconds(seconds: float) -> str:
    """Millisecond precision (what the log has), with hours and minutes when they help."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    if hours:
        return f"{hours}h {minutes:02d}m {ms / 1000:06.3f}s"
    if minutes:
        return f"{minutes}m {ms / 1000:06.3f}s"
    return f"{ms / 1000:.3f}s"


def _table(rows: Sequence[tuple[str, ...]], align: str) -> list[str]:
    """Indented columns two spaces apart, each aligned as `align` says ("l" or "r" per column)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    lines = []
    for row in rows:
        cells = (
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        )
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _render_provider(report: ProviderReport) -> list[str]:
    lines = [report.provider, "=" * len(report.provider)]
    if report.timeline:
        lines.append("Timeline:")
        header = ("time", "from", "to", "trigger", "reason")
        lines += _table([header, *report.timeline], "lllll")
    else:
        lines.append("Timeline: no transitions")
    lines.append("Time in state:")
    total = sum(report.time_in_state_s.values())
    rows = [
        (state, _seconds(seconds), f"{seconds / total:.1%}" if total else "-")
        for state, seconds in report.time_in_state_s.items()
    ]
    lines += _table(rows, "lrr")
    lines.append(f"Trips: {report.trips}")
    unrecovered = report.trips - len(report.recoveries_s)
    pending = f"; {_counted(unrecovered, 'trip', 'trips')} not recovered" if unrecovered else ""
    if report.mttr_s is None:
        lines.append(f"Mean time to recover: n/a{pending}")
    else:
        recoveries = _counted(len(report.recoveries_s), "recovery", "recoveries")
        lines.append(f"Mean time to recover: {_seconds(report.mttr_s)} over {recoveries}{pending}")
    lines.append(f"Fallbacks served: {report.fallbacks}")
    lines += _table([(reason, str(n)) for reason, n in report.fallbacks_by_reason.items()], "lr")
    return lines


def render(report: LogReport) -> str:
    """The report as plain text, one section per provider; same input, same text."""
    lines = ["Breakwater log report"]
    if report.start is None or report.end is None:
        lines.append("No events.")
    else:
        lines.append(f"From {report.start} to {report.end} ({_seconds(report.span_s)})")
        lines.append(f"Events: {report.events}")
    if report.skipped:
        numbers = ", ".join(map(str, report.skipped_lines[:_SHOWN_SKIPPED_LINES]))
        more = report.skipped - _SHOWN_SKIPPED_LINES
        numbers += f" and {more} more" if more > 0 else ""
        lines.append(
            f"Skipped {_counted(report.skipped, 'unusable line', 'unusable lines')}: {numbers}"
        )
    for provider in report.providers.values():
        lines += ["", *_render_provider(provider)]
    return "\n".join(lines) + "\n"


def report_file(path: str) -> str:
    """Read the log at `path` and render its report.

    A missing file raises FileNotFoundError naming `path`. Undecodable bytes
    are replaced rather than fatal: they can only spoil the lines they are in.
    """
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        return render(analyze(lines))
