"""Per-call overhead of Breakwater's guarded path against aiobreaker, aiolimiter and backoff.

Every subject awaits the same no-op coroutine, so what a subject costs beyond
awaiting it bare is what its resilience costs. The subjects take turns within
each repeat (starting one later each time), so a burst of machine noise hits
them all alike, and the median over the repeats is reported. Wall time is the
thing measured here, so this is the one place that reads `time.perf_counter`.

Run it with `python -m simulations.bench.overhead [--calls N] [--repeats R] [--json PATH]`.
Missed targets are printed, not fatal: the numbers are information.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiobreaker
import aiolimiter
import backoff
import orjson

from resilience import (
    Budget,
    CircuitOpen,
    Guard,
    RetryPolicy,
    Router,
    ServiceMode,
    TokenBucket,
)
from resilience.events import close_logging, configure_logging, remove_default_handler

Runner = Callable[[int], Awaitable[None]]
"""Awaits its subject n times in a row."""

BARE: Final = "noop"
SUBJECTS: Final[dict[str, str]] = {
    BARE: "bare no-op coroutine",
    "breakwater": "Breakwater Router REAL (breaker+2 buckets+retry+budget)",
    "guard_like_for_like": "Breakwater Guard (breaker+1 bucket+retry)",
    "aiobreaker": "aiobreaker CircuitBreaker.call_async",
    "aiolimiter": "aiolimiter AsyncLimiter",
    "backoff": "backoff.on_exception(expo)",
    "composition": "backoff + aiolimiter + aiobreaker",
    "guard_open_reject": "Guard.call rejected by an open breaker",
    "router_open_mock": "Router HYBRID, breaker open, mock served",
}
"""Result keys and their table labels, in table order."""

TARGET: Final = 1.0
"""Both ratios should stay at or below this."""

_HUGE: Final = 1e12
"""A capacity, refill rate or dollar limit that never binds."""


async def noop() -> None:
    """The call every subject wraps: it does nothing, so only the wrapping is timed."""


def _runners() -> dict[str, Runner]:
    """Build each subject once (as an application would) and return its timing loop."""
    guard = Guard(
        "bench",
        requests=TokenBucket(_HUGE, _HUGE, name="requests"),
        tokens=TokenBucket(_HUGE, _HUGE, name="tokens"),
        retry=RetryPolicy(rng=random.Random(0)),
        budget=Budget(daily_usd=_HUGE, hourly_usd=_HUGE),
    )
    real = Router(ServiceMode.REAL)
    real.register("embed", real=noop, mock=noop, guard=guard)
    # The same three concerns as the naive composition, and nothing more.
    like_for_like = Guard(
        "bench-like",
        requests=TokenBucket(_HUGE, _HUGE, name="requests"),
        retry=RetryPolicy(rng=random.Random(0)),
    )

    open_guard = Guard("bench-open", retry=RetryPolicy(rng=random.Random(0)))
    open_guard.breaker.force_open("bench")
    hybrid = Router(ServiceMode.HYBRID)
    hybrid.register("embed", real=noop, mock=noop, guard=open_guard)

    breaker = aiobreaker.CircuitBreaker(fail_max=5)
    limiter = aiolimiter.AsyncLimiter(_HUGE, 1)

    @backoff.on_exception(backoff.expo, Exception, max_tries=4)
    async def backed_off() -> None:
        await noop()

    @backoff.on_exception(backoff.expo, Exception, max_tries=4)
    async def composed() -> None:
        async with limiter:
            await breaker.call_async(noop)

    async def run_bare(n: int) -> None:
        for _ in range(n):
            await noop()

    async def run_breakwater(n: int) -> None:
        for _ in range(n):
            await real.call("embed", units=1, cost=0.0001)

    async def run_like_for_like(n: int) -> None:
        for _ in range(n):
            await like_for_like.call(noop)

    async def run_aiobreaker(n: int) -> None:
        for _ in range(n):
            await breaker.call_async(noop)

    async def run_aiolimiter(n: int) -> None:
        for _ in range(n):
            async with limiter:
                await noop()

    async def run_backoff(n: int) -> None:
        for _ in range(n):
            await backed_off()

    async def run_composition(n: int) -> None:
        for _ in range(n):
            await composed()

    async def run_open_reject(n: int) -> None:
        for _ in range(n):
            try:
                await open_guard.call(noop)
            except CircuitOpen:
                pass

    async def run_open_mock(n: int) -> None:
        for _ in range(n):
            await hybrid.call("embed")

    runners: dict[str, Runner] = {
        BARE: run_bare,
        "breakwater": run_breakwater,
        "guard_like_for_like": run_like_for_like,
        "aiobreaker": run_aiobreaker,
        "aiolimiter": run_aiolimiter,
        "backoff": run_backoff,
        "composition": run_composition,
        "guard_open_reject": run_open_reject,
        "router_open_mock": run_open_mock,
    }
    return runners


async def _timed(runner: Runner, calls: int) -> float:
    """Microseconds per call of one batch.

    GC stays on (allocation is part of a path's cost, as in production), but
    each batch starts from a collected heap so earlier batches' garbage is not
    billed to it.
    """
    gc.collect()
    started = time.perf_counter()  # clock-ok: benchmark
    await runner(calls)
    elapsed = time.perf_counter() - started  # clock-ok: benchmark
    return elapsed / calls * 1e6


async def _measure(calls: int, repeats: int) -> dict[str, float]:
    runners = _runners()
    names = list(runners)
    for runner in runners.values():
        await runner(min(calls, 2_000))  # warm up caches, lazily built state, the allocator
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await _timed(runners[name], calls))
    return {name: statistics.median(samples[name]) for name in names}


def measure(calls: int, repeats: int) -> dict[str, float]:
    """Median µs per call of every subject in `SUBJECTS` (the bare no-op included).

    Runs on a fresh standard asyncio loop, with events logged at INFO to a
    temporary file throughout, as a deployed service would log them.
    """
    if calls < 1 or repeats < 1:
        raise ValueError(f"calls and repeats must be at least 1, got {calls} and {repeats}")
    with tempfile.TemporaryDirectory(prefix="breakwater-bench-") as tmp:
        remove_default_handler()  # deployed, events are JSON lines only
        configure_logging(str(Path(tmp) / "events.jsonl"), level="INFO")
        try:
            return asyncio.run(_measure(calls, repeats))
        finally:
            close_logging()


def overheads(results: dict[str, float]) -> dict[str, float]:
    """Each subject's µs per call minus the bare no-op's."""
    bare = results[BARE]
    return {name: value - bare for name, value in results.items() if name != BARE}


def ratios(results: dict[str, float]) -> dict[str, float]:
    """The two targets, as overhead ratios (each should be at most `TARGET`)."""
    extra = overheads(results)
    return {
        "breakwater/composition": _ratio(extra["breakwater"], extra["composition"]),
        "guard_open_reject/breakwater": _ratio(extra["guard_open_reject"], extra["breakwater"]),
    }


def context_ratios(results: dict[str, float]) -> dict[str, float]:
    """Ratios printed for context, with no target: the same three concerns on each side."""
    extra = overheads(results)
    return {"like_for_like/composition": _ratio(extra["guard_like_for_like"], extra["composition"])}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf


def render(results: dict[str, float], calls: int, repeats: int) -> str:
    """The table and the verdict on each target."""
    extra = overheads(results)
    width = max(len(label) for label in SUBJECTS.values())
    lines = [
        f"Per-call overhead, median of {repeats} repeat(s) x {calls} calls "
        f"(Python {sys.version.split()[0]}, asyncio)",
        f"{'subject':<{width}}  {'µs/call':>9}  {'overhead µs':>11}",
    ]
    for name, label in SUBJECTS.items():
        overhead = f"{extra[name]:11.3f}" if name in extra else f"{'-':>11}"
        lines.append(f"{label:<{width}}  {results[name]:9.3f}  {overhead}")
    lines.append("")
    for name, value in ratios(results).items():
        verdict = "met" if value <= TARGET else "MISSED"
        lines.append(f"{name:<30} {value:6.2f}  (target <= {TARGET:.1f}: {verdict})")
    for name, value in context_ratios(results).items():
        lines.append(f"{name:<30} {value:6.2f}  (context, no target)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.overhead",
        description="Per-call overhead of Breakwater next to aiobreaker, aiolimiter and backoff.",
    )
    parser.add_argument("--calls", type=int, default=20_000, help="calls per batch")
    parser.add_argument("--repeats", type=int, default=7, help="batches per subject")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    results = measure(args.calls, args.repeats)
    print(render(results, args.calls, args.repeats))
    if args.json:
        document: dict[str, Any] = {
            "calls": args.calls,
            "repeats": args.repeats,
            "python": sys.version.split()[0],
            "us_per_call": results,
            "overhead_us": overheads(results),
            "ratios": ratios(results),
            "context_ratios": context_ratios(results),
            "target": TARGET,
        }
        Path(args.json).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
