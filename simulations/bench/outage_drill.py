"""Outage drill: a two-minute embeddings outage under steady load, three ways of calling.

A steady 50 calls a second for 10 minutes (30,000 calls) go to the OpenAI
emulator through our real `OpenAIEmbeddings` client. From minute 2 to
minute 4 the provider is down: it answers 503 for the first half of the
window and hangs for the second, then it is healthy again. The same drill
runs once per way of calling, each on its own `run_virtual` loop with a fresh
`Emulator` of the same seed, in-process (`InProcessTransport`, no sockets).

Design decisions, each printed with the results or stated here:

* **Load.** Call k starts at (k + 1/2) / rps seconds, a fixed cadence, each
  as its own task, so a slow call never delays the next arrival. The half
  interval keeps every arrival off the phase changes (120, 180 and 240 s are
  multiples of the interval), so no call races a `set_faults`. Each call
  embeds one short text ("outage drill request k", a few tokens) with the
  throughput benchmark's model and dimensions (text-embedding-3-small at 256).
* **Provider.** The emulator adds no latency (its default): a healthy answer
  is instant, so every millisecond a caller waits is what its way of calling
  added (retry sleeps, timeouts, hangs). The emulator's RPM and TPM (30,000
  and 10M) are ten times the load, over three times what the retrying ways
  send at their peak, so rate limits never bind (the report counts 429s).
  The emulator is built on the loop at t=0 with a plan whose outage window
  (503) is the 503 phase. `set_faults` restarts outage windows from the
  moment it is called, so the later phases are whole plans applied on time
  with `loop.call_at`: `hang_rate=1.0` at the hang start, the healthy plan
  at the heal. A request that hung stays hung after the heal until its
  caller's timeout ends it, as a hung connection would.
* **The ways.**
  1. *breakwater*: what the README tells users to build: a guard from
     `ProviderSettings(rpm, tpm).guard("openai", rng=Random(seed))`, the
     client sharing its buckets, a HYBRID `Router` with `MockEmbedder` as the
     fallback, and `client.embed([text], router)` per call. Breaker and retry
     policies are the library's defaults, and RPM/TPM are the account's
     limits (as configured by a user). It runs twice: with the drill
     setting below, whose targets decide the exit status, and with every
     default (call timeout `OpenAIConfig.read_timeout_s` = 60 s), whose
     verdicts are printed as context.
  2. *backoff only*: what a user of plain openai-python gets, no breaker.
     openai-python's defaults are `DEFAULT_MAX_RETRIES = 2` and
     `DEFAULT_TIMEOUT = 600 s` (/work/shared/reference/provider-protocols.md,
     section 1.6; the installed SDK agrees, which the drill's test checks), so
     the client call is wrapped in `backoff.on_exception(backoff.expo,
     ProviderError, max_tries=3)` with a 600 s per-attempt deadline (the
     client's `read_timeout_s`). backoff's default jitter is full jitter
     drawn from the global `random`; the same full jitter is drawn here from
     a seeded `random.Random`, so runs repeat. (The SDK's own schedule,
     0.5 s x 2^n scaled by 0.75-1, waits 0.4-0.5 s and 0.75-1 s; backoff.expo
     with full jitter waits 0-1 s and 0-2 s: the same order.)
  3. *aiobreaker + backoff*: `aiobreaker.CircuitBreaker(fail_max=5,
     timeout_duration=30 s)`, our defaults' threshold and cooldown, around
     the retried call of way 2, so one breaker failure is a call whose three
     tries failed. No fallback: a `CircuitBreakerError` is an error for the
     caller. aiobreaker times its cooldown with `datetime.utcnow()`: on a
     virtual loop its 30 s would be wall-clock seconds, so it would never
     half-open in a drill that takes seconds of wall time (and would on a
     slow enough machine: not reproducible). It is given virtual time
     through its own storage API instead: `_LoopClockStorage` notes the loop
     time when the breaker opens and reports `opened_at` as utcnow() minus
     the virtual time since, so utcnow() - opened_at is virtual time to
     within the microseconds between aiobreaker's two clock reads. Nothing
     of aiobreaker or ours is patched.
* **Counting.** Calls into the outage are the emulator's fault counts (503s
  sent by the outage window, plus requests that hung): every request the
  dead provider received, retries and probes included. Caller latency is the
  loop time from a call's start to its result, for calls started during the
  outage; percentiles are nearest-rank. Recovery is the time from the heal
  to the answer of the first request sent at or after the heal that got a
  200 (the throughput benchmark's `RecordingTransport`). Each run lasts until
  every call has ended, so callers held by a 600 s timeout are measured to
  their end (virtual time is free). Events our code logs go to a temporary
  file per run, at INFO as a deployed service would log them, and are
  counted by name.
* **Targets (breakwater only).** Calls into the outage at most the failure
  threshold plus `half_open_max_calls` per half-open window that fits in the
  outage, the windows spaced by the cooldown growing by
  `cooldown_multiplier` up to `cooldown_max_s` after each failed probe
  (`probe_allowance`; with the defaults 5 + 1 x 2 = 7 for 120 s, windows 30
  and 90 s after the trip). Caller p99 during the outage at most 10 ms.
  Recovery at most the cooldown in force at the heal (`Breaker.cooldown_s`
  then) plus one probe, a probe being bounded by min(probe_timeout_s, the
  client's call timeout).
* **Drill setting.** With every default the recovery target is missed: the
  probe of the second half-open window (210 s) goes into the hang and is
  held for the 30 s probe timeout; it fails 0.09 s after the heal and doubles
  the cooldown to 120 s, so the healed provider is first probed at 360 s.
  That is the breaker doing what its policy says, not a fault in it: a probe
  that fails after a heal cannot know of it. The drill therefore sets what a
  user calling embeddings of short inputs would reasonably set, a 10 s call
  deadline (`OpenAIConfig(read_timeout_s=10)`), which also bounds probes to
  10 s.
  With a 10 s deadline a probe still straddles a heal that comes within 10 s
  of its start, and then this target is missed the same way.

Run it with `python -m simulations.bench.outage_drill [--rps N] [--duration-s S]
[--outage-start-s S] [--hang-start-s S] [--heal-s S] [--seed N] [--json PATH]`.
It exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiobreaker
import backoff
import orjson
from aiobreaker.state import CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from providers.openai.client import OpenAIConfig, OpenAIEmbeddings
from providers.openai.mock import MockEmbedder
from resilience import BreakerPolicy, ProviderError, Router, ServiceMode, Transition
from resilience.config import ProviderSettings
from resilience.events import close_logging, configure_logging, remove_default_handler
from resilience.testing import run_virtual
from simulations.bench.throughput import (
    API_KEY,
    BASE_URL,
    DIMENSIONS,
    ENDPOINT,
    MODEL,
    RecordingTransport,
    count_events,
)
from simulations.emulators import Emulator, FaultPlan, OpenAIPlan

RPM: Final = 30_000
TPM: Final = 10_000_000
"""The emulator's limits, and our guard's: ten times the load."""
SETTINGS: Final = ProviderSettings(rpm=RPM, tpm=TPM)
"""Our guard's settings: the account's limits, every other setting the library's default."""

SDK_MAX_RETRIES: Final = 2
SDK_TIMEOUT_S: Final = 600.0
"""openai-python's DEFAULT_MAX_RETRIES and DEFAULT_TIMEOUT (read)."""

LIBRARY_READ_TIMEOUT_S: Final = OpenAIConfig(API_KEY).read_timeout_s
"""Our client's default call deadline (60 s)."""
DRILL_READ_TIMEOUT_S: Final = 10.0
"""The call deadline the drill sets for breakwater."""

P99_TARGET_MS: Final = 10.0

OURS: Final = "breakwater"
OURS_DEFAULTS: Final = "breakwater_defaults"
BACKOFF: Final = "backoff_only"
AIOBREAKER: Final = "aiobreaker_backoff"
LABELS: Final[dict[str, str]] = {
    OURS: f"breakwater HYBRID, {DRILL_READ_TIMEOUT_S:g} s call timeout",
    OURS_DEFAULTS: "breakwater HYBRID, library defaults",
    BACKOFF: "backoff only (openai-python defaults)",
    AIOBREAKER: "aiobreaker + backoff, no fallback",
}
"""Result keys and their table labels, in table order."""
CALL_TIMEOUTS: Final[dict[str, float]] = {
    OURS: DRILL_READ_TIMEOUT_S,
    OURS_DEFAULTS: LIBRARY_READ_TIMEOUT_S,
}
"""Breakwater's two runs and the client call timeout (`read_timeout_s`) of each."""

REAL: Final = "real"
MOCK: Final = "mock"
FAILED: Final = "failed"


@dataclass(frozen=True, slots=True)
class Scenario:
    """The load and the outage, in seconds of virtual time from the start."""

    rps: float = 50.0
    duration_s: float = 600.0
    outage_start_s: float = 120.0
    hang_start_s: float = 180.0
    heal_s: float = 240.0
    seed: int = 7

    def __post_init__(self) -> None:
        if not self.rps > 0:
            raise ValueError(f"rps must be positive, got {self.rps:g}")
        times = (self.outage_start_s, self.hang_start_s, self.heal_s, self.duration_s)
        if not 0 < times[0] < times[1] < times[2] < times[3]:
            raise ValueError(
                "need 0 < outage_start_s < hang_start_s < heal_s < duration_s, got "
                + ", ".join(f"{t:g}" for t in times)
            )

    @property
    def calls(self) -> int:
        return round(self.rps * self.duration_s)

    @property
    def outage_s(self) -> float:
        return self.heal_s - self.outage_start_s

    def arrival(self, k: int) -> float:
        """When call k starts: on a fixed cadence, half an interval off the phase changes."""
        return (k + 0.5) / self.rps


def probe_allowance(policy: BreakerPolicy, outage_s: float) -> tuple[int, list[float]]:
    """The most provider calls `policy` lets into an outage, and when its half-open windows open.

    At best the breaker trips on the outage's first `failure_threshold`
    calls, at its start. Each cooldown then ends in a half-open window of
    `half_open_max_calls` probes; a failed probe reopens it with the cooldown
    times `cooldown_multiplier`, up to `cooldown_max_s`. The windows are
    given as seconds after the trip; probes that take time only push them later.
    """
    windows: list[float] = []
    cooldown = policy.cooldown_s
    at = cooldown
    while at < outage_s:
        windows.append(at)
        cooldown = min(cooldown * policy.cooldown_multiplier, policy.cooldown_max_s)
        at += cooldown
    return policy.failure_threshold + policy.half_open_max_calls * len(windows), windows


# -- one run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    start: float
    end: float
    outcome: str
    """REAL, MOCK or FAILED."""


@dataclass(slots=True)
class WayResult:
    """What one way of calling did. Times are virtual seconds unless named _ms."""

    way: str
    calls: int
    real: int
    mock: int
    failed: int
    requests: int
    """Embeddings requests the emulator received, hung ones included."""
    rate_limited: int
    """429s the emulator sent."""
    into_outage: int
    """Requests the dead provider received: its 503s and its hangs."""
    outage_p50_ms: float
    outage_p99_ms: float
    outage_max_ms: float
    recovery_s: float | None
    """From the heal to the first 200 for a request sent after it; None if none came."""
    last_call_end_s: float
    wall_s: float
    errors: dict[str, int] = field(default_factory=dict)
    """What failed calls raised, by exception name."""
    timeline: list[tuple[float, str]] = field(default_factory=list)
    """The breaker's transitions: (loop time, "<from>-><to>")."""
    events: dict[str, int] = field(default_factory=dict)
    """Events our code logged, by name."""
    at_heal: dict[str, Any] = field(default_factory=dict)
    """Breakwater's breaker at the heal: state, cooldown_s, probes in flight."""


def _plan(**faults: Any) -> FaultPlan:
    return FaultPlan(openai=OpenAIPlan(rpm=RPM, tpm=TPM, **faults))


def _text(k: int) -> str:
    return f"outage drill request {k}"


def _client(recorder: RecordingTransport, read_timeout_s: float, **kwargs: Any) -> OpenAIEmbeddings:
    config = OpenAIConfig(API_KEY, base_url=BASE_URL, read_timeout_s=read_timeout_s)
    return OpenAIEmbeddings(config, recorder, model=MODEL, dimensions=DIMENSIONS, **kwargs)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _drive(
    scenario: Scenario, emulator: Emulator, call: Callable[[int], Awaitable[str]]
) -> tuple[list[_Call], Counter[str]]:
    """Start every call on its cadence, switch the provider's phases on time, await them all.

    `call(k)` returns REAL or MOCK; whatever it raises makes the call FAILED.
    """
    loop = asyncio.get_running_loop()
    loop.call_at(scenario.hang_start_s, emulator.set_faults, _plan(hang_rate=1.0))
    loop.call_at(scenario.heal_s, emulator.set_faults, _plan())
    calls: list[_Call] = []
    errors: Counter[str] = Counter()

    async def one(k: int) -> None:
        start = loop.time()
        try:
            outcome = await call(k)
        except Exception as exc:
            outcome = FAILED
            errors[type(exc).__name__] += 1
        calls.append(_Call(start, loop.time(), outcome))

    tasks = []
    for k in range(scenario.calls):
        await asyncio.sleep(scenario.arrival(k) - loop.time())
        tasks.append(asyncio.create_task(one(k)))
    await asyncio.gather(*tasks)
    return calls, errors


def _run(
    way: str,
    scenario: Scenario,
    setup: Callable[[RecordingTransport], Callable[[int], Awaitable[str]]],
) -> WayResult:
    """Run the drill for one way: `setup` builds its call on the running loop."""

    async def main() -> tuple[list[_Call], Counter[str], Emulator, RecordingTransport]:
        # Built on the loop at t=0, so the plan's outage window counts from 0.
        emulator = Emulator(
            seed=scenario.seed,
            faults=_plan(outages=((scenario.outage_start_s, scenario.hang_start_s),)),
        )
        recorder = RecordingTransport(emulator)
        calls, errors = await _drive(scenario, emulator, setup(recorder))
        await emulator.close()
        return calls, errors, emulator, recorder

    started = time.perf_counter()  # clock-ok: benchmark
    calls, errors, emulator, recorder = run_virtual(main())
    wall_s = time.perf_counter() - started  # clock-ok: benchmark
    stats = emulator.stats()
    faults = stats.faults["openai"]
    outcomes = Counter(c.outcome for c in calls)
    during = [
        (c.end - c.start) * 1000.0
        for c in calls
        if scenario.outage_start_s <= c.start < scenario.heal_s
    ]
    healed = [
        e.answered_at
        for e in recorder.exchanges
        if e.status == 200 and e.sent_at >= scenario.heal_s
    ]
    return WayResult(
        way=way,
        calls=len(calls),
        real=outcomes[REAL],
        mock=outcomes[MOCK],
        failed=outcomes[FAILED],
        requests=stats.count(ENDPOINT) + faults["hang"],
        rate_limited=stats.rate_limited,
        into_outage=faults["outage"] + faults["hang"],
        outage_p50_ms=_percentile(during, 0.50),
        outage_p99_ms=_percentile(during, 0.99),
        outage_max_ms=max(during, default=math.nan),
        recovery_s=min(healed) - scenario.heal_s if healed else None,
        last_call_end_s=max(c.end for c in calls),
        wall_s=wall_s,
        errors=dict(errors.most_common()),
    )


def run_breakwater(scenario: Scenario, *, read_timeout_s: float, way: str = OURS) -> WayResult:
    """Our client behind a guard and a HYBRID router, built as the README shows."""
    timeline: list[tuple[float, str]] = []
    at_heal: dict[str, Any] = {}

    def setup(recorder: RecordingTransport) -> Callable[[int], Awaitable[str]]:
        guard = SETTINGS.guard("openai", rng=random.Random(scenario.seed))
        client = _client(recorder, read_timeout_s, buckets=(guard.requests, guard.tokens))
        router = Router(ServiceMode.HYBRID)
        mock = MockEmbedder(MODEL, DIMENSIONS)
        router.register("embed", real=client.embed_batch, mock=mock.embed_batch, guard=guard)
        breaker = guard.breaker

        def note(change: Transition) -> None:
            timeline.append((change.at, f"{change.source}->{change.dest}"))

        def heal() -> None:
            at_heal.update(
                state=breaker.state,
                cooldown_s=breaker.cooldown_s,
                probes_in_flight=breaker.probes_in_flight,
            )

        breaker.subscribe(note)
        asyncio.get_running_loop().call_at(scenario.heal_s, heal)

        async def call(k: int) -> str:
            embeddings = await client.embed([_text(k)], router)
            return embeddings.paths[0]

        return call

    result = _run(way, scenario, setup)
    result.timeline = timeline
    result.at_heal = at_heal
    return result


def _retrying(client: OpenAIEmbeddings, rng: random.Random) -> Callable[..., Awaitable[Any]]:
    """`client.embed_batch` retried as openai-python would: 3 tries, full-jitter expo."""
    retried: Callable[..., Awaitable[Any]] = backoff.on_exception(
        backoff.expo,
        ProviderError,
        max_tries=SDK_MAX_RETRIES + 1,
        jitter=lambda ceiling: rng.uniform(0.0, ceiling),
        logger=None,
    )(client.embed_batch)
    return retried


def run_backoff(scenario: Scenario) -> WayResult:
    """The client call retried by backoff, 600 s per attempt, no breaker, no fallback."""

    def setup(recorder: RecordingTransport) -> Callable[[int], Awaitable[str]]:
        client = _client(recorder, SDK_TIMEOUT_S)
        retried = _retrying(client, random.Random(scenario.seed))

        async def call(k: int) -> str:
            await retried(client.plan([_text(k)])[0])
            return REAL

        return call

    return _run(BACKOFF, scenario, setup)


class _LoopClockStorage(CircuitMemoryStorage):  # type: ignore[misc]
    """aiobreaker's in-memory storage, with `opened_at` following the loop's clock.

    aiobreaker stores `datetime.utcnow()` on opening and half-opens once
    `utcnow()` passes `opened_at + timeout_duration`. This storage keeps the
    loop time of the opening instead, and reports `opened_at` as utcnow()
    minus the loop time since, so the cooldown elapses in loop time.
    """

    def __init__(self) -> None:
        super().__init__(CircuitBreakerState.CLOSED)
        self._opened_loop_time: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_loop_time is None:
            return None
        elapsed = asyncio.get_running_loop().time() - self._opened_loop_time
        utc_now = datetime.now(UTC).replace(tzinfo=None)  # clock-ok: aiobreaker's naive UTC
        return utc_now - timedelta(seconds=elapsed)

    @opened_at.setter
    def opened_at(self, _wall: datetime) -> None:
        self._opened_loop_time = asyncio.get_running_loop().time()


class _TimelineListener(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
    """Notes each aiobreaker state change with its loop time."""

    def __init__(self, timeline: list[tuple[float, str]]) -> None:
        self._timeline = timeline

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        now = asyncio.get_running_loop().time()
        self._timeline.append((now, f"{old.state.name.lower()}->{new.state.name.lower()}"))


def run_aiobreaker(scenario: Scenario) -> WayResult:
    """aiobreaker, at our defaults' threshold and cooldown, around way 2's retried call."""
    policy = SETTINGS.breaker_policy()
    timeline: list[tuple[float, str]] = []

    def setup(recorder: RecordingTransport) -> Callable[[int], Awaitable[str]]:
        client = _client(recorder, SDK_TIMEOUT_S)
        retried = _retrying(client, random.Random(scenario.seed))
        breaker = aiobreaker.CircuitBreaker(
            fail_max=policy.failure_threshold,
            timeout_duration=timedelta(seconds=policy.cooldown_s),
            state_storage=_LoopClockStorage(),
            listeners=[_TimelineListener(timeline)],
        )

        async def call(k: int) -> str:
            await breaker.call_async(retried, client.plan([_text(k)])[0])
            return REAL

        return call

    result = _run(AIOBREAKER, scenario, setup)
    result.timeline = timeline
    return result


def measure(scenario: Scenario) -> dict[str, Any]:
    """Run every way over `scenario`; return the settings, results and breakwater's targets."""
    runs: dict[str, Callable[[], WayResult]] = {
        name: functools.partial(run_breakwater, scenario, read_timeout_s=timeout, way=name)
        for name, timeout in CALL_TIMEOUTS.items()
    }
    runs[BACKOFF] = functools.partial(run_backoff, scenario)
    runs[AIOBREAKER] = functools.partial(run_aiobreaker, scenario)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="breakwater-bench-") as tmp:
        for name, run in runs.items():
            log = Path(tmp) / f"{name}.jsonl"
            remove_default_handler()  # deployed, events are JSON lines only
            configure_logging(str(log), level="INFO")
            try:
                result = run()
            finally:
                close_logging()
            result.events = count_events(log)
            results[name] = asdict(result)
    policy = SETTINGS.breaker_policy()
    allowance, windows = probe_allowance(policy, scenario.outage_s)
    return {
        "scenario": asdict(scenario) | {"calls": scenario.calls},
        "policy": asdict(policy),
        "retry_max_attempts": SETTINGS.max_attempts,
        "allowance": {"calls": allowance, "half_open_windows_after_trip_s": windows},
        "results": results,
        "targets": {
            name: targets(results[name], policy, allowance, timeout)
            for name, timeout in CALL_TIMEOUTS.items()
        },
    }


def targets(
    ours: dict[str, Any], policy: BreakerPolicy, allowance: int, read_timeout_s: float
) -> dict[str, dict[str, Any]]:
    """The three targets for one breakwater run: each value, its limit, and whether it was met."""
    probe_s = min(policy.probe_timeout_s, read_timeout_s)
    recovery_limit = float(ours["at_heal"]["cooldown_s"]) + probe_s
    recovery: float | None = ours["recovery_s"]
    return {
        "calls_into_outage": {
            "value": ours["into_outage"],
            "limit": allowance,
            "met": ours["into_outage"] <= allowance,
        },
        "outage_p99_ms": {
            "value": ours["outage_p99_ms"],
            "limit": P99_TARGET_MS,
            "met": ours["outage_p99_ms"] <= P99_TARGET_MS,
        },
        "recovery_s": {
            "value": recovery,
            "limit": recovery_limit,
            "probe_s": probe_s,
            "met": recovery is not None and recovery <= recovery_limit,
        },
    }


# -- the report ------------------------------------------------------------------------


def _compact(timeline: Sequence[Sequence[Any]]) -> str:
    """Transitions in order; a run of the same one is shown once, with its count and last time."""
    parts = []
    for change, group in itertools.groupby(timeline, key=lambda entry: entry[1]):
        times = [float(entry[0]) for entry in group]
        part = f"{times[0]:.2f} {change}"
        if len(times) > 1:
            part += f" (x{len(times)}, to {times[-1]:.2f})"
        parts.append(part)
    return ", ".join(parts)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def render(results: dict[str, Any]) -> str:
    """The settings, the table, the verdicts and the breakers' timelines."""
    s, p = results["scenario"], results["policy"]
    minutes = s["duration_s"] / 60.0
    lines = [
        f"Outage drill: {s['rps']:g} calls/s for {minutes:g} virtual minutes ({s['calls']:,} "
        f"calls), {MODEL} at dimensions={DIMENSIONS}, in-process emulator, seed {s['seed']}",
        f"provider: 503s from {s['outage_start_s']:g} s, hangs from {s['hang_start_s']:g} s, "
        f"healthy from {s['heal_s']:g} s; no added latency; RPM {RPM:,} and TPM {TPM:,} "
        f"({sum(r['rate_limited'] for r in results['results'].values())} 429s in all runs)",
        f"breakwater: failure_threshold {p['failure_threshold']}, cooldown {p['cooldown_s']:g} s "
        f"(x{p['cooldown_multiplier']:g} per failed probe, max {p['cooldown_max_s']:g} s), "
        f"half-open probes {p['half_open_max_calls']} at a time ({p['success_threshold']} "
        f"success closes), probe timeout {p['probe_timeout_s']:g} s, "
        f"{results['retry_max_attempts']} attempts; call timeout (OpenAIConfig.read_timeout_s) "
        f"{LIBRARY_READ_TIMEOUT_S:g} s by default, {DRILL_READ_TIMEOUT_S:g} s as the "
        "drill sets it; mock fallback (MockEmbedder)",
        f"backoff only: backoff.on_exception(expo, ProviderError, max_tries="
        f"{SDK_MAX_RETRIES + 1}), full jitter, {SDK_TIMEOUT_S:g} s per attempt "
        f"(openai-python: max_retries={SDK_MAX_RETRIES}, timeout {SDK_TIMEOUT_S:g} s)",
        f"aiobreaker + backoff: CircuitBreaker(fail_max={p['failure_threshold']}, "
        f"timeout_duration={p['cooldown_s']:g} s) around that retried call; its cooldown "
        "reads datetime.utcnow(), made to follow virtual time through its storage API",
        "",
        f"{'way':<38} {'into outage':>11} {'p50 ms':>9} {'p99 ms':>9} {'max s':>7} "
        f"{'recovery s':>10} {'real':>7} {'mock':>7} {'failed':>7} {'wall':>6}",
    ]
    for name, label in LABELS.items():
        r = results["results"][name]
        lines.append(
            f"{label:<38} {r['into_outage']:>11,} {r['outage_p50_ms']:>9.1f} "
            f"{r['outage_p99_ms']:>9.1f} {r['outage_max_ms'] / 1000:>7.1f} "
            f"{_seconds(r['recovery_s']):>10} {r['real']:>7,} {r['mock']:>7,} "
            f"{r['failed']:>7,} {r['wall_s']:>5.1f}s"
        )
    lines.append(
        f"(into outage: requests the provider got from {s['outage_start_s']:g} to "
        f"{s['heal_s']:g} s; latencies: calls started then; recovery: from the heal to the "
        "first 200)"
    )
    allowance = results["allowance"]
    windows = ", ".join(f"+{w:g} s" for w in allowance["half_open_windows_after_trip_s"])
    for name, heading in (
        (OURS, f"targets for {LABELS[OURS]} (they decide the exit status):"),
        (OURS_DEFAULTS, f"the same targets for {LABELS[OURS_DEFAULTS]} (context):"),
    ):
        t = results["targets"][name]
        heal = results["results"][name]["at_heal"]
        calls, p99, recovery = t["calls_into_outage"], t["outage_p99_ms"], t["recovery_s"]
        lines += [
            "",
            heading,
            f"  calls into the outage <= failure_threshold + half_open_max_calls x half-open "
            f"windows in {s['heal_s'] - s['outage_start_s']:g} s ({windows} after the trip) = "
            f"{p['failure_threshold']} + {p['half_open_max_calls']} x "
            f"{len(allowance['half_open_windows_after_trip_s'])} = {calls['limit']}: "
            f"{calls['value']}  {_verdict(calls['met'])}",
            f"  caller p99 during the outage <= {p99['limit']:g} ms: {p99['value']:.1f} ms  "
            f"{_verdict(p99['met'])}",
            f"  recovery <= cooldown at the heal + one probe = {heal['cooldown_s']:g} s + "
            f"{recovery['probe_s']:g} s = {recovery['limit']:g} s: "
            f"{_seconds(recovery['value'])} s  {_verdict(recovery['met'])}"
            f"  (at the heal: {heal['state']}, {heal['probes_in_flight']} probe(s) in flight)",
        ]
    lines += ["", "breaker timelines (loop time, s):"]
    for name in (OURS, OURS_DEFAULTS, AIOBREAKER):
        lines.append(f"  {LABELS[name]}: {_compact(results['results'][name]['timeline'])}")
    lines += ["", "errors and events:"]
    for name, label in LABELS.items():
        r = results["results"][name]
        errors = ", ".join(f"{e} {n:,}" for e, n in r["errors"].items()) or "none"
        events = ", ".join(f"{e} {n:,}" for e, n in r["events"].items()) or "none"
        lines.append(f"  {label}: errors {errors}; events {events}")
    return "\n".join(lines)


def all_met(results: dict[str, Any]) -> bool:
    """Whether breakwater met every target with the drill's settings."""
    return all(t["met"] for t in results["targets"][OURS].values())


def main(argv: list[str] | None = None) -> int:
    defaults = Scenario()
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.outage_drill",
        description="A two-minute embeddings outage under steady load: Breakwater's guard "
        "beside backoff-only retries and aiobreaker + backoff, on virtual time.",
    )
    parser.add_argument("--rps", type=float, default=defaults.rps, help="calls per second")
    parser.add_argument("--duration-s", type=float, default=defaults.duration_s)
    parser.add_argument("--outage-start-s", type=float, default=defaults.outage_start_s)
    parser.add_argument("--hang-start-s", type=float, default=defaults.hang_start_s)
    parser.add_argument("--heal-s", type=float, default=defaults.heal_s)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="emulator and jitter")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    scenario = Scenario(
        rps=args.rps,
        duration_s=args.duration_s,
        outage_start_s=args.outage_start_s,
        hang_start_s=args.hang_start_s,
        heal_s=args.heal_s,
        seed=args.seed,
    )
    results = measure(scenario)
    print(render(results))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if all_met(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
