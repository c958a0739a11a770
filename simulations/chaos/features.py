"""Production features a drawn world switches on, and the world's evidence that each ran.

A feature the simulation never turns on is a feature it never tests. Each
world draws (`FEATURES`) which of these its processes run with, through the
same environment variables and settings a deployment uses:

* OpenAI RPM and TPM limits in our guard (`BREAKWATER_OPENAI_RPM`, `_TPM`):
  token buckets that empty under load, pause on the provider's 429s (the
  `rate_limit_burst` rule makes the emulator's own limits tight) and refill;
* slow-call trips of OpenAI's breaker (`BREAKWATER_OPENAI_SLOW_CALL_S`),
  met by the emulator answering slowly (the `slow_answers` rule);
* Standard Webhooks: the emulator signs every delivery that way beside
  LC-Signature, and the API server is built with the Standard Webhooks
  secret, so it takes only deliveries that verify the stronger way.

`FeatureWatch` collects the evidence, from what the world saw rather than
what our code counted where the world can see it: each bucket wait (its
start and end on the loop clock, and whether the bucket was paused), the
emulator's 429s, each slow 200 the emulator served to a process (timed at
the transport, outside our code) against the breaker transitions, and each
webhook delivery carrying Standard Webhooks headers with the server's answer.

The Redis-shared gate (`resilience.shared`, `BREAKWATER_REDIS_URL`) is not
switched on here: a real Redis cannot take part in virtual time.

* Its buckets, pauses and breaker quorum are measured on the Redis server's
  clock (`TIME` inside the Lua scripts, `resilience.shared.scripts`), by
  design the one clock all workers share. The simulation's minutes pass in
  microseconds of real time, so a shared bucket would barely refill over a
  simulated hour, and a 429's pause would last hours of simulated time.
* Its commands go over a socket. `VirtualTimeLoop` polls sockets without
  blocking and, when no descriptor is ready at that instant, jumps to the
  next timer; redis-py's 1 s socket timeout is such a timer, so commands
  would time out while Redis's reply is still on the way, and the gate would
  take Redis for unreachable and fall back to local limits.
* How many replies are ready at each poll depends on the machine's load, so
  task interleavings would differ from run to run and a failing case would
  not replay from its seed.

Faking either (a Redis stand-in with a virtual `TIME`, or a gate on the
loop's clock) would test a stand-in, not the gate. The gate is exercised in
real time instead, against real Redis servers: `tests/test_redis_gate.py`,
and `tests/test_scale_out.py` with four worker processes, PostgreSQL and the
emulator, through a Redis restart.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import orjson
from hypothesis import strategies as st

from providers import OPENAI
from providers.transport import HttpRequest, HttpResponse, Transport
from resilience.breaker import CLOSED, OPEN, Transition
from resilience.bucket import TokenBucket
from simulations.chaos.link import PROCESS
from simulations.chaos.stats import FEATURE_COVERAGE
from simulations.emulators.stats import StatsSnapshot
from state.pipeline.wiring import EMBED, Pipeline

STANDARD_SECRET: Final = "whsec_" + base64.b64encode(b"breakwater-chaos-standard-key").decode()
"""The Standard Webhooks secret a world that draws them gives the emulator and the server."""
STANDARD_HEADER: Final = "webhook-signature"
EMBEDDINGS: Final = "/v1/embeddings"

RPM_WAITED, TPM_WAITED, PAUSED_BY_429, SLOW_TRIP, STANDARD_ACCEPTED = FEATURE_COVERAGE


@dataclass(frozen=True, slots=True)
class Features:
    """What a world's processes run with beside the defaults; None or False: off."""

    rpm: int | None = None
    """OpenAI requests per minute in our guard."""
    tpm: int | None = None
    """OpenAI tokens per minute in our guard."""
    slow_call_s: float | None = None
    """OpenAI's breaker counts a success slower than this as a failure."""
    standard_webhooks: bool = False

    def environment(self) -> dict[str, str]:
        """The variables that switch these on, as a deployment sets them."""
        settings = {
            "BREAKWATER_OPENAI_RPM": self.rpm,
            "BREAKWATER_OPENAI_TPM": self.tpm,
            "BREAKWATER_OPENAI_SLOW_CALL_S": self.slow_call_s,
        }
        return {name: f"{value:g}" for name, value in settings.items() if value is not None}

    @property
    def standard_secret(self) -> str | None:
        return STANDARD_SECRET if self.standard_webhooks else None


FEATURES: Final = st.builds(
    Features,
    # Tight enough that the coalescer's requests (many jobs each) and their tokens
    # outrun them; a chunk (64 tokens) always fits the smallest token bucket.
    rpm=st.sampled_from([None, 2, 6]),
    tpm=st.sampled_from([None, 1500, 6000]),
    slow_call_s=st.sampled_from([None, 5.0]),
    standard_webhooks=st.booleans(),
)


@dataclass(frozen=True, slots=True)
class Wait:
    """One call that waited in a bucket: its kind, the loop times it began and was
    granted, and whether the bucket was paused (a 429) when it began."""

    kind: str
    began: float
    granted: float
    paused: bool


@dataclass(slots=True)
class FeatureWatch:
    """Where the world records evidence of the drawn features (see the module doc)."""

    features: Features
    waits: list[Wait] = field(default_factory=list)
    slow_answers: set[tuple[int, float]] = field(default_factory=set)
    """(process, loop time it ended) of every embeddings 200 that took longer than
    `slow_call_s` to come back from the emulator."""
    standard: list[str] = field(default_factory=list)
    """The server's answer ("accepted", "duplicate" or a status) to each delivery that
    carried Standard Webhooks headers."""

    def watch_buckets(self, pipeline: Pipeline) -> None:
        """Record every wait in the OpenAI guard's buckets (observed, not altered)."""
        guard = pipeline.guard(EMBED)
        for kind, bucket in ((RPM_WAITED, guard.requests), (TPM_WAITED, guard.tokens)):
            if bucket is not None:
                setattr(bucket, "acquire", self._timed(kind, bucket))  # noqa: B010

    def _timed(self, kind: str, bucket: TokenBucket) -> Callable[..., Awaitable[None]]:
        acquire = bucket.acquire

        async def timed(n: float = 1, max_wait: float | None = None) -> None:
            loop = asyncio.get_running_loop()
            began = loop.time()
            paused = bucket.paused_until > began
            await acquire(n, max_wait)
            self.waits.append(Wait(kind, began, loop.time(), paused))

        return timed

    def transport(self, inner: Transport) -> Transport:
        """`inner`, timing each process's embeddings requests from outside our code."""
        return _TimedTransport(inner, self)

    def webhooks(self, inner: Transport) -> Transport:
        """`inner` (the way to the API server), noting answers to Standard-signed deliveries."""
        return _StandardTap(inner, self.standard)

    def coverage(
        self, stats: StatsSnapshot, transitions: list[tuple[str, int, Transition]]
    ) -> set[str]:
        """The features this run exercised, by the evidence above."""
        seen = {wait.kind for wait in self.waits if wait.granted > wait.began}
        served_429 = any(status == 429 for _, status, _ in stats.arrivals)
        if served_429 and any(w.paused and w.granted > w.began for w in self.waits):
            seen.add(PAUSED_BY_429)
        if any(
            provider == OPENAI
            and t.source == CLOSED
            and t.dest == OPEN
            and (number, t.at) in self.slow_answers
            for provider, number, t in transitions
        ):
            seen.add(SLOW_TRIP)
        if "accepted" in self.standard:
            seen.add(STANDARD_ACCEPTED)
        return seen


@dataclass(slots=True)
class _TimedTransport:
    inner: Transport
    watch: FeatureWatch

    async def send(self, request: HttpRequest) -> HttpResponse:
        number = PROCESS.get()
        slow = self.watch.features.slow_call_s
        if number is None or slow is None or not request.url.endswith(EMBEDDINGS):
            return await self.inner.send(request)
        loop = asyncio.get_running_loop()
        began = loop.time()
        response = await self.inner.send(request)
        ended = loop.time()
        if response.status == 200 and ended - began > slow:
            self.watch.slow_answers.add((number, ended))
        return response


@dataclass(slots=True)
class _StandardTap:
    inner: Transport
    answers: list[str]

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        if any(name.lower() == STANDARD_HEADER for name in request.headers):
            outcome = str(response.status)
            if response.status == 200:
                outcome = str(orjson.loads(response.body).get("status", outcome))
            self.answers.append(outcome)
        return response


__all__ = ["FEATURES", "STANDARD_SECRET", "FeatureWatch", "Features", "Wait"]
