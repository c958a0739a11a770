"""Rate limits and a budget shared by every worker, in Redis.

A provider enforces its limits per organization, however many workers call
it, so each worker's own buckets would let N workers send N times the limit.
`RedisGate` keeps one request bucket, one token bucket and the budget ledger
of a provider in Redis, and admits a call with one script (`ADMIT`) that
takes from both buckets and reserves the budget, all or nothing: one round
trip per guarded call.

The success path stays at that one round trip because the ledger's later
corrections (a settlement that differs from the estimate, a refund) are
deferred: they ride on the next script this worker runs, or go on their own
after `flush_after_s` when no call comes. Each batch carries a sequence
number, so one resent after a lost reply is applied once.

Buckets are shaped so that any 60-second window admits at most the limit:
each holds `burst_fraction` of a minute's allowance and refills at the rest
(`(limit - burst) / 60` per second). A bucket holding a whole minute, as a
lone worker's may, could admit twice the limit in one window.

When Redis cannot be reached (`SharedPolicy`), the gate says so in the log
and falls back: budgets fail closed unless configured to spend against a
local budget, and the buckets are local ones refilling at
`fallback_fraction` of the shared rate, because the other workers are
presumably falling back too. Redis is tried again after `recheck_s`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from resilience.bucket import Throttle, TokenBucket
from resilience.budget import Budget, BudgetLimits, Reservation
from resilience.clock import Clock, wall_time
from resilience.errors import BudgetExceeded, RateLimited
from resilience.events import emit
from resilience.ledger import PeriodLimit, Totals
from resilience.shared.policy import SharedPolicy, shaped
from resilience.shared.scripts import ADMIT, LEDGER_FLUSH, LEDGER_TOTALS, LEDGER_TRY_ADD, PAUSE

UNREACHABLE: Final = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
"""What "Redis cannot be reached" means: no answer, as opposed to an error answer."""


def connect(url: str, *, timeout_s: float = 1.0) -> Redis:
    """A client for `url` that never retries a command on its own.

    redis-py retries on a dropped connection by default; a retried `ADMIT`
    whose first run did reach Redis would take twice. The gate decides instead.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def default_worker_id(rng: random.Random) -> str:
    """Host, pid and a random suffix: unique among live workers, and after restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{rng.getrandbits(40):010x}"


@dataclass(slots=True)
class _Batch:
    """Ledger deltas sent together, numbered in the order this worker sends them."""

    seq: int
    deltas: dict[str, list[float]]
    """Redis key -> [usd, requests]"""


class RedisGate:
    """The shared buckets and budget of provider `name`, as a guard's `Limits`.

    See the module docstring. `rpm` and `tpm` are the provider's limits (None: no such bucket);
    `budget_limits` makes the gate's `budget`, a `Budget` whose ledger is in
    Redis. `clock` is the budget's wall clock.
    """

    def __init__(
        self,
        client: Redis,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_limits: BudgetLimits | None = None,
        policy: SharedPolicy | None = None,
        clock: Clock = wall_time,
        rng: random.Random | None = None,
        worker_id: str | None = None,
        prefix: str = "breakwater",
    ) -> None:
        self.name = name
        self.policy = policy or SharedPolicy()
        self.client = client
        self.worker_id = worker_id or default_worker_id(rng or random.Random())
        self.round_trips = 0
        """Scripts sent to Redis, for the benchmark's round trips per call."""
        base = f"{prefix}:{{{name}}}"
        self._keys = (f"{base}:requests", f"{base}:tokens", f"{base}:pause")
        self._applied_key = f"{base}:applied:{self.worker_id}"
        self._ledger_prefix = f"{base}:ledger:"  # one hash slot with the buckets
        self._buckets = {
            kind: shaped(limit, self.policy.burst_fraction) if limit is not None else None
            for kind, limit in (("requests", rpm), ("tokens", tpm))
        }
        self._bucket_shapes = [
            value for shape in self._buckets.values() for value in (shape or (0.0, 0.0))
        ]
        self._fallback = {
            kind: TokenBucket(
                shape[0], shape[1] * self.policy.fallback_fraction, name=f"{name}.{kind}.local"
            )
            for kind, shape in self._buckets.items()
            if shape is not None
        }
        self.budget: Budget | None = None
        self._local_budget: Budget | None = None
        if budget_limits is not None:
            ledger = RedisLedger(self)
            self.budget = Budget(*_limits(budget_limits), scope=name, clock=clock, ledger=ledger)
            fraction = self.policy.fallback_fraction
            self._local_budget = Budget(
                *_limits(budget_limits, fraction), scope=f"{name}.local", clock=clock
            )
        self._caps: dict[str, float] = {}
        self._deltas: dict[str, list[float]] = {}
        self._batch: _Batch | None = None
        self._batch_ids = itertools.count(1)
        self._known: dict[str, Totals] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._deltas_since: float | None = None
        """Loop time the oldest delta not yet in a batch was queued."""
        self._batch_sent = 0.0
        """Loop time `_batch` was last sent (it stays until a reply confirms it)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._down_until: float | None = None
        self._queue = asyncio.Lock()
        self._admit = client.register_script(ADMIT)
        self._try_add = client.register_script(LEDGER_TRY_ADD)
        self._totals = client.register_script(LEDGER_TOTALS)
        self._flush = client.register_script(LEDGER_FLUSH)
        self._pause = client.register_script(PAUSE)

    def __repr__(self) -> str:
        return f"RedisGate({self.name!r}, worker_id={self.worker_id!r})"

    # -- what the guard calls (`resilience.limits.Limits`) --------------------

    @property
    def reachable(self) -> bool:
        """False while the gate is using its fallback (until the next recheck succeeds)."""
        return self._down_until is None

    def throttles(self) -> tuple[Throttle | None, Throttle | None]:
        """(requests, tokens) for the provider client: its server feedback reaches Redis."""
        pair = tuple(
            _Throttle(self, kind, shape[0]) if shape is not None else None
            for kind, shape in self._buckets.items()
        )
        return pair[0], pair[1]

    async def admit(
        self,
        units: float,
        cost: float,
        correlation_id: str,
        max_wait_s: float | None,
        now: float | None = None,
    ) -> Reservation | None:
        """Take a request and `units` tokens, and reserve `cost`, in one script.

        Waits for the buckets like a `TokenBucket`: raises `RateLimited` when
        the wait would pass `max_wait_s`, and `BudgetExceeded` when the budget
        refuses. Returns the reservation, or None without a budget. `now` is
        the loop time the wait is measured from (the guard's attempt began).
        """
        tokens = self._buckets["tokens"]
        if tokens is not None and units > tokens[0]:
            raise ValueError(
                f"{self.name}: {units:g} tokens can never be granted by a bucket of {tokens[0]:g}"
            )
        started = asyncio.get_running_loop().time() if now is None else now
        wait = await self._try_admit(units, cost, correlation_id, max_wait_s)
        if not isinstance(wait, float):
            return wait
        loop = asyncio.get_running_loop()
        async with self._queue:  # one poller per worker, the rest queued in order
            while True:
                waited = loop.time() - started
                if max_wait_s is not None and waited + wait > max_wait_s:
                    raise RateLimited(self.name, wait, f"shared buckets: would wait {wait:.3f}s")
                await asyncio.sleep(wait)
                left = None if max_wait_s is None else max_wait_s - (loop.time() - started)
                wait = await self._try_admit(units, cost, correlation_id, left)
                if not isinstance(wait, float):
                    return wait

    async def pause(self, retry_after_s: float) -> None:
        """A 429: grant nothing to any worker for `retry_after_s`, then ramp up from empty."""
        until = asyncio.get_running_loop().time() + retry_after_s
        for bucket in self._fallback.values():
            bucket.pause_until(until)
        if self._down():
            return
        try:
            await self._run(self._pause, [self._keys[2]], retry_after_s)
        except UNREACHABLE as exc:
            self._went_down(exc)

    def report(self, kind: str, remaining: float | None) -> None:
        """The provider says `remaining` units are left: the next script lowers the bucket to it."""
        if remaining is None or remaining < 0 or self._buckets[kind] is None:
            return
        self._caps[kind] = min(remaining, self._caps.get(kind, math.inf))
        self._fallback[kind].sync(remaining, None)

    async def flush(self) -> None:
        """Send deferred ledger corrections now (at shutdown, or when no call carries them)."""
        batch = self._take_batch()
        if batch is None or self._down():
            return
        keys = [self._applied_key, *batch.deltas]
        try:
            await self._run(self._flush, keys, _deltas(batch))
        except UNREACHABLE as exc:
            self._went_down(exc)
            return
        self._applied(batch)

    async def drain(self) -> None:
        """Stop the flush timer and send what is deferred: at shutdown, client still open."""
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for task in list(self._tasks):
            await task
        await self.flush()

    async def close(self) -> None:
        """`drain`, then close the client."""
        await self.drain()
        await self.client.aclose()

    # -- the ledger side (`RedisLedger` calls these) --------------------------

    def defer(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        """Queue a ledger delta for the next script; return the totals it will make."""
        totals = []
        for key in keys:
            delta = self._deltas.setdefault(self._ledger_key(key), [0.0, 0.0])
            delta[0] += usd
            delta[1] += requests
            usd_now, requests_now = self._known.get(key, (0.0, 0))
            totals.append((usd_now + usd, requests_now + requests))
            self._known[key] = totals[-1]
        if self._deltas_since is None:
            self._deltas_since = asyncio.get_running_loop().time()
        self._arm_flush()
        return totals

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        batch = self._take_batch()
        deltas = batch.deltas if batch is not None else {}
        keys = [self._applied_key, *(self._ledger_key(lim.key) for lim in limits), *deltas]
        fields = {"c": usd, "r": requests, "l": _limits_json(limits), **_deltas(batch)}
        reply = await self._run(self._try_add, keys, fields)
        self._applied(batch)
        if reply[0] != "ok":
            return None
        return self._remember([lim.key for lim in limits], reply[1:])

    async def totals(self, key: str) -> Totals:
        batch = self._take_batch()
        deltas = batch.deltas if batch is not None else {}
        keys = [self._applied_key, self._ledger_key(key), *deltas]
        reply = await self._run(self._totals, keys, _deltas(batch))
        self._applied(batch)
        return self._remember([key], reply)[0]

    # -- internals -------------------------------------------------------------

    async def _try_admit(
        self, units: float, cost: float, correlation_id: str, max_wait_s: float | None
    ) -> Reservation | float | None:
        """One attempt: the reservation (or None) when admitted, else seconds to wait.

        `max_wait_s` bounds only the local fallback's wait; `admit` bounds the shared one.
        """
        if self._down():
            return await self._admit_locally(units, cost, correlation_id, max_wait_s)
        budget = self.budget
        plan = budget.plan() if budget is not None else None
        limits = plan.limits if plan is not None else ()
        batch = self._take_batch()
        deltas = batch.deltas if batch is not None else {}
        caps = self._caps
        self._caps = {}
        keys = [
            *self._keys,
            self._applied_key,
            *(self._ledger_key(limit.key) for limit in limits),
            *deltas,
        ]
        fields = {
            "b": self._bucket_shapes,
            "u": units,
            "c": cost,
            "r": 1,
            "k": [caps.get("requests", -1), caps.get("tokens", -1)],
            "l": _limits_json(limits),
            **_deltas(batch),
        }
        try:
            reply = await self._run(self._admit, keys, fields)
        except UNREACHABLE as exc:
            self._went_down(exc)
            return await self._admit_locally(units, cost, correlation_id, max_wait_s)
        self._applied(batch)
        kind = reply[0]
        if kind == "ok":
            if budget is None or plan is None:
                return None
            totals = self._remember([limit.key for limit in limits], reply[1:])
            return budget.opened(self.name, cost, 1, plan, totals, correlation_id)
        if kind == "budget" and budget is not None and plan is not None:
            used = self._remember([limit.key for limit in limits], reply[1:])
            raise budget.refused(self.name, cost, 1, plan, used, correlation_id)
        return float(reply[1])  # "rate" or "paused": how long until it could grant

    async def _admit_locally(
        self, units: float, cost: float, correlation_id: str, max_wait_s: float | None
    ) -> Reservation | None:
        """The fallback: local buckets, and the budget as `budget_when_down` says."""
        reservation = None
        if self.budget is not None:
            local = self._local_budget
            if self.policy.budget_when_down == "closed" or local is None:
                raise BudgetExceeded(
                    self.name,
                    self._recheck_in(),
                    "the shared budget ledger (Redis) is unreachable: no spend without it",
                )
            reservation = await local.reserve(self.name, cost, correlation_id=correlation_id)
        try:
            for kind, amount in (("requests", 1.0), ("tokens", units)):
                bucket = self._fallback.get(kind)
                if bucket is not None:
                    await bucket.acquire(amount, max_wait_s)
        except BaseException:
            if reservation is not None:
                await reservation.budget.release(reservation, error_class="cancelled")
            raise
        return reservation

    async def _run(self, script: Any, keys: list[str], fields: dict[str, Any] | float) -> list[str]:
        """Run `script` with `fields` as its one JSON argument (see `resilience.shared.scripts`)."""
        self.round_trips += 1
        reply: list[str] = await script(keys=keys, args=[orjson.dumps(fields)])
        if self._down_until is not None:
            self._came_back()
        return reply

    def _take_batch(self) -> _Batch | None:
        """The batch of deltas to send: one sent before without a reply, else a new one."""
        if self._batch is None and self._deltas:
            self._batch = _Batch(next(self._batch_ids), self._deltas)
            self._deltas = {}
            self._deltas_since = None
        if self._batch is not None:
            self._batch_sent = asyncio.get_running_loop().time()
        return self._batch

    def _applied(self, batch: _Batch | None) -> None:
        if batch is not None and self._batch is batch:
            self._batch = None

    def _ledger_key(self, key: str) -> str:
        return self._ledger_prefix + key

    def _remember(self, keys: list[str], flat: Sequence[str]) -> list[Totals]:
        totals = [(float(flat[2 * i]), int(float(flat[2 * i + 1]))) for i in range(len(keys))]
        self._known.update(zip(keys, totals, strict=True))
        return totals

    def _flush_later(self) -> None:
        """Flush what no call has carried for `flush_after_s`; under load, calls carry it all."""
        self._flush_timer = None
        loop = asyncio.get_running_loop()
        waiting = [] if self._deltas_since is None else [self._deltas_since]
        if self._batch is not None:
            waiting.append(self._batch_sent)
        if not waiting:
            return
        due = min(waiting) + self.policy.flush_after_s
        if loop.time() < due:  # a call carried what was pending, or soon will
            self._flush_timer = loop.call_at(due, self._flush_later)
            return
        task = loop.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._deltas or self._batch is not None:
            self._arm_flush()  # what arrived meanwhile, or what Redis was down for

    def _arm_flush(self) -> None:
        if self._flush_timer is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.policy.flush_after_s, self._flush_later)

    def _down(self) -> bool:
        """Whether to skip Redis for now (it failed less than `recheck_s` ago)."""
        down_until = self._down_until
        return down_until is not None and asyncio.get_running_loop().time() < down_until

    def _recheck_in(self) -> float:
        down_until = self._down_until
        if down_until is None:
            return 0.0
        return max(0.0, down_until - asyncio.get_running_loop().time())

    def _went_down(self, exc: BaseException) -> None:
        first = self._down_until is None
        self._down_until = asyncio.get_running_loop().time() + self.policy.recheck_s
        if first:
            emit(
                "shared.unreachable",
                level="WARNING",
                provider=self.name,
                worker=self.worker_id,
                error=type(exc).__name__,
                budget_policy=self.policy.budget_when_down,
                fallback_fraction=self.policy.fallback_fraction,
                recheck_s=self.policy.recheck_s,
            )

    def _came_back(self) -> None:
        self._down_until = None
        emit("shared.restored", provider=self.name, worker=self.worker_id)


class _Throttle:
    """One bucket's `Throttle` for the provider client: its headers reach the gate.

    A 429 is not the client's to act on: the guard sees it and pauses the
    shared buckets (`RedisGate.pause`) for every worker.
    """

    def __init__(self, gate: RedisGate, kind: str, capacity: float) -> None:
        self._gate = gate
        self._kind = kind
        self.capacity = capacity

    def sync(self, remaining: float | None, reset_after_s: float | None) -> None:
        self._gate.report(self._kind, remaining)


class RedisLedger:
    """The gate's budget ledger, as a `resilience.ledger.LedgerStore`.

    `try_add` and `totals` are one script each; `add` is deferred (see
    `RedisGate`), so settling and refunding cost no round trip of their own.
    """

    def __init__(self, gate: RedisGate) -> None:
        self._gate = gate

    async def try_add(
        self, limits: Sequence[PeriodLimit], usd: float, requests: int
    ) -> list[Totals] | None:
        return await self._gate.try_add(limits, usd, requests)

    async def add(self, keys: Sequence[str], usd: float, requests: int) -> list[Totals]:
        return self._gate.defer(keys, usd, requests)

    async def totals(self, key: str) -> Totals:
        return await self._gate.totals(key)


def _limits(
    limits: BudgetLimits, fraction: float = 1.0
) -> tuple[float | None, float | None, int | None, int | None]:
    """`Budget`'s four positional limits, scaled by `fraction` (requests rounded down)."""

    def dollars(value: float | None) -> float | None:
        return None if value is None else value * fraction

    def count(value: int | None) -> int | None:
        return None if value is None else math.floor(value * fraction)

    return (
        dollars(limits.daily_usd),
        dollars(limits.hourly_usd),
        count(limits.daily_requests),
        count(limits.hourly_requests),
    )


def _limits_json(limits: Sequence[PeriodLimit]) -> list[list[float]]:
    """Limits as the scripts read them: -1 for none, expiry in whole seconds."""
    return [
        [
            -1 if limit.usd is None else limit.usd,
            -1 if limit.requests is None else limit.requests,
            math.ceil(limit.expires_at),
        ]
        for limit in limits
    ]


def _deltas(batch: _Batch | None) -> dict[str, Any]:
    """A batch's fields for the scripts: its deltas (`d`) and its sequence number (`s`)."""
    if batch is None:
        return {"d": [], "s": 0}
    return {"d": list(batch.deltas.values()), "s": batch.seq}
