"""Scaling: worker processes on PostgreSQL and Redis, and what the Redis-backed guard costs.

Two parts, both against real servers:

* **Throughput by process count.** 1, 2 and 4 `breakwater worker` processes
  (concurrency 4 each, `Cluster`) work a fresh batch of distinct documents
  against the emulator (its own process; LlamaParse's parse time 0.2 s, no
  upload limit) with no provider limit binding. Each run reports documents
  per second from submission to the last completion, the speed-up over one
  process, and the Redis scripts the whole cluster ran per document.
* **The guard, in process.** The same trivial provider call goes through a
  guard with in-memory buckets and budget and through one whose buckets and
  budget are a `RedisGate` (limits far above the load, so nothing waits).
  Reported: microseconds per call, their ratio, the same against a bare
  redis-py PING (the floor of any round trip), and Redis round trips per
  guarded call, counted twice: by the gate, and by the server (`INFO
  commandstats`: the EVALSHA and EVAL calls it served). The call
  returns a cost different from its estimate, so every call also exercises
  a deferred settlement.

Servers: `--db` and `--redis` (or BREAKWATER_BENCH_DB and
BREAKWATER_BENCH_REDIS) name them; otherwise throwaway ones are started
from the installed binaries (`simulations.servers`). Without either,
the run says so and exits 2: it never reports a scaling it did not measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from resilience.bucket import TokenBucket
from resilience.budget import Budget, BudgetLimits
from resilience.guard import Guard
from resilience.shared.gate import RedisGate, connect
from simulations.bench.cluster import Cluster, documents
from simulations.servers import (
    PostgresServer,
    ThrowawayRedis,
    find_postgres_binaries,
    find_redis_binary,
)

PROCESSES: Final = (1, 2, 4)
CONCURRENCY: Final = 4
FAULTS: Final = {"llamaparse": {"parse_time_s": 0.2, "upload_limit": 100_000}}
ENV: Final = {"BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD": "100"}


@dataclass(frozen=True, slots=True)
class Run:
    processes: int
    documents: int
    seconds: float
    redis_scripts: int

    @property
    def per_second(self) -> float:
        return self.documents / self.seconds


async def _scripts_run(redis_url: str) -> int:
    """Scripts the server has run (EVALSHA and EVAL), by its own count.

    Every round trip the gate makes is one script; the server's total command
    count would also count the commands each script runs inside.
    """
    client = Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


def throughput(db_url: str, redis_url: str, count: int, seed: int) -> list[Run]:
    runs = []
    for n, processes in enumerate(PROCESSES):
        with Cluster(db_url, redis_url, faults=FAULTS, env=ENV) as cluster:
            cluster.start_workers(processes, concurrency=CONCURRENCY)
            before = asyncio.run(_scripts_run(redis_url))
            done_before = sum(asyncio.run(cluster.states()).values())
            asyncio.run(cluster.submit(documents(count, seed=seed + n)))
            seconds = asyncio.run(cluster.wait_until_done(done_before + count, timeout_s=600))
            commands = asyncio.run(_scripts_run(redis_url)) - before
            cluster.stop_workers()
        runs.append(Run(processes, count, seconds, commands))
    return runs


class _Billed:
    cost_usd = 0.0009
    tokens = 10


async def _provider() -> _Billed:
    return _Billed()


async def _warm_up(guard: Guard, calls: int) -> None:
    """Connections open, scripts loaded: the first call's NOSCRIPT reload is not measured."""
    for _ in range(calls // 10):
        await guard.call(_provider, units=10, cost=0.001)


async def _timed(guard: Guard, calls: int) -> float:
    """Seconds per call."""
    started = time.perf_counter()  # clock-ok: benchmark
    for _ in range(calls):
        await guard.call(_provider, units=10, cost=0.001)
    return (time.perf_counter() - started) / calls  # clock-ok: benchmark


@dataclass(frozen=True, slots=True)
class GuardCost:
    in_memory_s: float
    redis_s: float
    ping_s: float
    """A bare redis-py PING: the floor any one round trip pays."""
    gate_round_trips: float
    server_scripts: float


async def guard_cost(redis_url: str, calls: int) -> GuardCost:
    huge = 10**9
    local = Guard(
        "bench",
        requests=TokenBucket(huge, huge),
        tokens=TokenBucket(huge, huge),
        budget=Budget(daily_usd=huge),
    )
    await _warm_up(local, calls)
    in_memory = await _timed(local, calls)
    client = connect(redis_url)
    await client.flushdb()
    gate = RedisGate(
        client,
        "bench",
        rpm=huge,
        tpm=huge,
        budget_limits=BudgetLimits(huge, None, None, None),
        rng=random.Random(1),
    )
    shared = Guard("bench", shared=gate)
    await _warm_up(shared, calls)
    before, trips = await _scripts_run(redis_url), gate.round_trips
    redis = await _timed(shared, calls)
    scripts = await _scripts_run(redis_url) - before
    trips_per_call = (gate.round_trips - trips) / calls
    started = time.perf_counter()  # clock-ok: benchmark
    for _ in range(calls):
        await client.ping()
    ping = (time.perf_counter() - started) / calls  # clock-ok: benchmark
    result = GuardCost(in_memory, redis, ping, trips_per_call, scripts / calls)
    await gate.close()
    return result


@contextmanager
def _servers(db: str | None, redis_url: str | None) -> Iterator[tuple[str, str]]:
    """The named servers, or throwaway ones (`simulations.servers`)."""
    with ExitStack() as stack:
        if db is None:
            binaries = find_postgres_binaries()
            if binaries is None:
                raise _absent("PostgreSQL (initdb, pg_ctl)", "BREAKWATER_BENCH_DB")
            server = PostgresServer(binaries)
            stack.callback(server.stop)
            db = server.start()
        if redis_url is None:
            binary = find_redis_binary()
            if binary is None:
                raise _absent("redis-server", "BREAKWATER_BENCH_REDIS")
            redis_server = ThrowawayRedis(binary)
            stack.callback(redis_server.close)
            redis_server.start()
            redis_url = redis_server.url
        yield db, redis_url


def _absent(what: str, variable: str) -> SystemExit:
    print(f"scaling: {what} not found and {variable} unset: the scaling run did NOT run.")
    return SystemExit(2)


def _table(rows: list[list[str]], out: Callable[[str], None]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.scaling",
        description="Worker processes on PostgreSQL and Redis; the Redis-backed guard's cost.",
    )
    parser.add_argument("--db", default=os.environ.get("BREAKWATER_BENCH_DB"))
    parser.add_argument("--redis", default=os.environ.get("BREAKWATER_BENCH_REDIS"))
    parser.add_argument("--documents", type=int, default=120, help="per run (default 120)")
    parser.add_argument("--calls", type=int, default=5_000, help="guard calls (default 5000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with _servers(args.db, args.redis) as (db, redis_url):
        runs = throughput(db, redis_url, args.documents, args.seed)
        cost = asyncio.run(guard_cost(redis_url, args.calls))
    print(f"Scaling: {args.documents} documents per run, concurrency {CONCURRENCY} per process")
    base = runs[0].per_second
    rows = [["processes", "docs/s", "speed-up", "Redis scripts/doc"]]
    for run in runs:
        rows.append(
            [
                str(run.processes),
                f"{run.per_second:.1f}",
                f"{run.per_second / base:.2f}x",
                f"{run.redis_scripts / run.documents:.1f}",
            ]
        )
    _table(rows, print)
    print(
        f"Guard per call: in-memory {cost.in_memory_s * 1e6:.1f} us, Redis-backed "
        f"{cost.redis_s * 1e6:.1f} us ({cost.redis_s / cost.in_memory_s:.1f}x); "
        f"a bare PING {cost.ping_s * 1e6:.1f} us (the Redis-backed call is "
        f"{cost.redis_s / cost.ping_s:.1f} PINGs)"
    )
    print(
        f"Redis round trips per guarded call: {cost.gate_round_trips:.3f} (gate), "
        f"{cost.server_scripts:.3f} (scripts the server ran); target at most 1"
    )
    return 0 if cost.gate_round_trips <= 1.0 and cost.server_scripts <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
