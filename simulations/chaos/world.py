"""`World`: the whole pipeline on one virtual-time loop, driven step by step from outside.

A world owns a `VirtualTimeLoop`, the emulated providers (in process, no
sockets), one SQLite store in a temporary file, and one or two worker
processes. A "process" is what `breakwater serve` runs: its own pipeline
(clients, guards, breakers, buckets), its own webhook inbox and API
application, and a `Worker`. Processes share the store and, through it, the
budget ledger, as real processes share the database file. Webhooks reach
process 0's application; the other process's jobs get 404 and it polls, as
the README documents.

Every call into the world (`submit`, `advance`, a fault) is synchronous: it
runs the loop until the step is done, so Hypothesis rules stay plain
functions and background tasks (workers, heartbeats, webhook deliveries)
carry on between rules on the same loop.

A crash cancels every task the process started (found by a context
variable each task inherits from the one that created it) and drops the
process's memory; its leases lapse in the store, and a restarted process
(a new number, new breakers, new inbox) takes the jobs over. Processes reach
the providers through a `ProviderLink`, whose tripwires crash a process at
the two windows of a remote parse a random crash rarely hits: after
LlamaParse accepted an upload, and after it reported a job COMPLETED.

What the world watches, without changing our code:

* `Witness`: one per provider (per breaker), wrapping every real function
  its guard admits: each capability's (LlamaParse has two, the waiting parse
  and the upload) and the remote-parse poller's own guarded calls. It records
  a call that starts while its breaker is open, and the most probes in
  flight while half-open.
* breaker transitions (`Breaker.subscribe`), and whether aiobreaker's state
  agrees with the machine's after each step.
* the webhook deliveries and their answers (`AppTransport`).
* LlamaParse's own record of the jobs it made (`Emulator.llamaparse_jobs`),
  and the wall clock's jumps, so uploads and spend are judged by what the
  provider did at what time.
* the evidence that the drawn production features ran (`features`): bucket
  waits, slow answers, Standard-signed webhook deliveries.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from providers import LLAMAPARSE, OPENAI
from providers.llamaparse.webhooks import WebhookInbox, parse_webhook_body
from providers.transport import HttpRequest, HttpResponse, Transport
from resilience import ServiceMode
from resilience.breaker import HALF_OPEN, OPEN, Breaker, Transition
from resilience.budget import Budget
from resilience.clock import wall_time
from resilience.testing import VirtualTimeLoop
from simulations.chaos.app_transport import AppTransport
from simulations.chaos.features import Features, FeatureWatch
from simulations.chaos.ground_truth import row_name
from simulations.chaos.link import PROCESS, ProviderLink
from simulations.chaos.oracle import CheckedStore
from simulations.chaos.windows import Window, open_windows
from simulations.emulators import DEFAULT_WEBHOOK_SECRET, Emulator
from state.app.metrics import Metrics
from state.app.serve import known_job_of
from state.app.server import create_app
from state.pipeline.chunking import ChunkingPolicy
from state.pipeline.wiring import EMBED, PARSE, PROVIDER_OF, Pipeline
from state.pipeline.worker import Worker

T = TypeVar("T")

WEBHOOK_URL: Final = "http://breakwater.sim/webhooks/llamaparse"
LEASE_S: Final = 60.0
IDLE_SLEEP_S: Final = 15.0
"""How long an idle worker sleeps between polls. Coarser than the CLI's default, since
each poll of every idle hour costs real time while only adding latency here."""
POISON_MIME: Final = "application/x-msdownload"
"""A media type no parser takes: a job that must end `failed` (a permanent fault)."""
JOB_TIMEOUT_S: Final = 240.0
"""How long a remote parse may run before we count it expired (LLAMA_CLOUD_JOB_TIMEOUT_S):
shorter than the longest parse a latency spike draws, so some expire."""
CHUNK_TOKENS: Final = 64
OVERLAP_TOKENS: Final = 8
"""The processes' chunking policy: small chunks, so a document of a few hundred words
makes several and the overlap between them is exercised."""
POLLED: Final = ("find", "statuses", "result")
"""The LlamaParse client's calls the remote-parse poller and step make through the guard
themselves, beside the capabilities' routed ones."""

_WORDS: Final = (
    "breaker",
    "budget",
    "token",
    "bucket",
    "retry",
    "provider",
    "outage",
    "latency",
    "parse",
    "chunk",
    "embed",
    "vector",
    "ledger",
    "lease",
    "worker",
    "webhook",
    "probe",
    "cooldown",
    "quota",
    "limit",
    "job",
    "state",
)

_WITNESSED: contextvars.ContextVar[bool] = contextvars.ContextVar("witnessed", default=False)
"""Set inside a witnessed call: a call it makes itself (the client's `submit` looking for
an unanswered upload with `find`) is part of it, not another call the guard admitted."""


def environment(daily_budget_usd: dict[str, float]) -> dict[str, str]:
    """The environment every simulated process reads: HYBRID, keys, webhooks, budgets."""
    return {
        "SERVICE_MODE": "hybrid",
        "OPENAI_API_KEY": "sk-sim",
        "OPENAI_BASE_URL": "http://openai.sim/v1",
        "LLAMA_CLOUD_API_KEY": "llx-sim",
        "LLAMA_CLOUD_BASE_URL": "http://llamaparse.sim",
        "LLAMA_CLOUD_WEBHOOK_URL": WEBHOOK_URL,
        "LLAMA_CLOUD_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET,
        "BREAKWATER_OPENAI_DAILY_BUDGET_USD": f"{daily_budget_usd[OPENAI]:.6f}",
        "BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD": f"{daily_budget_usd[LLAMAPARSE]:.6f}",
        "BREAKWATER_OPENAI_MAX_ATTEMPTS": "2",
        "BREAKWATER_LLAMAPARSE_MAX_ATTEMPTS": "2",
        "LLAMA_CLOUD_JOB_TIMEOUT_S": f"{JOB_TIMEOUT_S:g}",
    }


def _forget(tasks: dict[asyncio.Task[Any], None], task: asyncio.Task[Any]) -> None:
    tasks.pop(task, None)


@dataclass(slots=True)
class Witness:
    """Watches one provider's real calls where its guard hands them over (any capability)."""

    breaker: Breaker
    half_open_max_calls: int
    opened_calls: list[str] = field(default_factory=list)
    probes: int = 0
    most_probes: int = 0
    calls: int = 0

    def wrap(self, real: Callable[..., Awaitable[T]]) -> Callable[..., Coroutine[Any, Any, T]]:
        async def witnessed(*args: Any, **kwargs: Any) -> T:
            if _WITNESSED.get():
                return await real(*args, **kwargs)
            inside = _WITNESSED.set(True)
            try:
                return await self._watch(real, args, kwargs)
            finally:
                _WITNESSED.reset(inside)

        return witnessed

    async def _watch(
        self, real: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        state = self.breaker.state
        self.calls += 1
        if state == OPEN:
            self.opened_calls.append(f"{self.breaker.name}: a call started while open")
        probe = state == HALF_OPEN
        if probe:
            self.probes += 1
            self.most_probes = max(self.most_probes, self.probes)
        try:
            return await real(*args, **kwargs)
        finally:
            if probe:
                self.probes -= 1


@dataclass(slots=True)
class WebhookTap:
    """Counts the API's answers to webhook deliveries; a delivery accepted once must be
    answered "duplicate" every time it comes again."""

    inner: AppTransport
    answers: Counter[str] = field(default_factory=Counter)
    accepted: set[bytes] = field(default_factory=set)
    repeat_problems: list[str] = field(default_factory=list)
    repeated: set[str] = field(default_factory=set)
    """Remote job ids whose accepted delivery came again."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        outcome = str(response.status)
        if response.status == 200:
            outcome = str(orjson.loads(response.body).get("status", "200"))
        if request.body in self.accepted:
            self.repeated.add(parse_webhook_body(request.body).job_id)
            if outcome != "duplicate":
                self.repeat_problems.append(
                    f"a repeated delivery got {outcome!r}, not 'duplicate': {request.body[:80]!r}"
                )
        elif outcome == "accepted":
            self.accepted.add(request.body)
        self.answers[outcome] += 1
        return response


@dataclass(slots=True)
class Process:
    """One simulated `breakwater serve` process."""

    number: int
    pipeline: Pipeline
    worker: Worker
    witnesses: dict[str, Witness]
    task: asyncio.Task[None]
    app_transport: AppTransport
    inbox: WebhookInbox
    store: CheckedStore


class World:
    """The pipeline, its providers and its store on one virtual-time loop (see module doc)."""

    def __init__(
        self,
        seed: int,
        directory: Path,
        *,
        processes: int = 2,
        concurrency: int = 4,
        daily_budget_usd: dict[str, float] | None = None,
        features: Features | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop()
        self.loop.set_task_factory(self._task_factory)
        self._tasks: dict[int, dict[asyncio.Task[Any], None]] = {}
        self.concurrency = concurrency
        self.budgets = dict(daily_budget_usd or {OPENAI: 0.05, LLAMAPARSE: 0.5})
        self.features = features or Features()
        self.watch = FeatureWatch(self.features)
        self.environ = environment(self.budgets) | self.features.environment()
        self.webhooks = WebhookTap(AppTransport())
        self.emulator = Emulator(
            seed=seed,
            webhook_transport=self.watch.webhooks(self.webhooks),
            standard_webhook_secret=self.features.standard_secret,
        )
        self.link = ProviderLink(self.emulator, self._tripped)
        self.transport: Transport = self.watch.transport(self.link)
        self.store = self.run(CheckedStore.open(directory / "sim.sqlite3", inline=True))
        self.run(self.store.keep_swept_ledger())
        self.store.running = lambda owner: owner in {f"p{n}" for n in self.processes}
        self.ledger = self.store.ledger()
        self.processes: dict[int, Process] = {}
        self.retired: list[Process] = []
        self.transitions: list[tuple[str, int, Transition]] = []
        self.crashes = 0
        self.deaths: dict[int, float] = {}
        """Process number -> the loop time it was killed."""
        self.leaks: list[Window] = []
        """Budget windows killed tasks were stopped in (`windows`): what they may keep."""
        self.interrupted: set[str] = set()
        """Remote parses (by name) in flight in a process when it died: its intent while
        it held the job, a live one it uploaded, or one its poller had claimed."""
        self.epochs: list[tuple[float, float]] = [(self.now, self.loop.wall_epoch)]
        """(loop time, wall epoch from then on), one per wall clock jump."""
        self._documents = 0
        self._numbers = 0
        self.mode = ServiceMode.HYBRID
        for _ in range(processes):
            self.start_process()

    # -- driving the loop ----------------------------------------------------

    def run(self, step: Awaitable[T]) -> T:
        """Run the loop until `step` is done; background tasks run alongside."""

        async def wrapped() -> T:
            return await step

        return self.loop.run_until_complete(wrapped())

    def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass with everything running."""
        self.run(asyncio.sleep(seconds))

    @property
    def now(self) -> float:
        return self.loop.time()

    def jump_clock(self, seconds: float) -> None:
        """Move the wall clock `seconds` forward; the loop clock does not move."""
        self.loop.wall_epoch += seconds
        self.epochs.append((self.now, self.loop.wall_epoch))

    def wall_at(self, loop_time: float) -> float:
        """The wall time the processes read at `loop_time` (at a jump's instant, the later)."""
        epoch = next(e for at, e in reversed(self.epochs) if at <= loop_time)
        return epoch + loop_time

    def _task_factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
        /,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task = asyncio.Task(coro, loop=loop, context=context)
        number = (context or contextvars.copy_context()).get(PROCESS)
        if number is not None:
            # A dict, not a WeakSet: a crash cancels in creation order, where a
            # set's order would follow memory addresses and the replay would drift.
            tasks = self._tasks.setdefault(number, {})
            tasks[task] = None
            task.add_done_callback(partial(_forget, tasks))
        return task

    # -- documents -----------------------------------------------------------

    def submit(self, count: int, *, poison_rate: float = 0.05) -> dict[str, bool]:
        """Upload `count` new documents drawn from the world's RNG; job id -> poison?"""
        rng = self.rng

        async def upload() -> dict[str, bool]:
            accepted: dict[str, bool] = {}
            for _ in range(count):
                number = self._documents
                self._documents += 1
                poison = rng.random() < poison_rate
                if poison:
                    content, name, mime = b"MZ%d" % number, f"doc{number}.exe", POISON_MIME
                else:
                    words = [rng.choice(_WORDS) for _ in range(rng.randint(10, 240))]
                    content = f"# Document {number}\n\n{' '.join(words)}\n".encode()
                    name, mime = f"doc{number}.md", "text/markdown"
                created = await self.store.create_job(
                    content, filename=name, mime_type=mime, now=wall_time()
                )
                accepted[created.job.id] = poison
            return accepted

        return self.run(upload())

    # -- processes -----------------------------------------------------------

    def start_process(self) -> Process:
        """Start a new worker process: fresh pipeline, guards, inbox and API application."""
        number = self._numbers
        self._numbers += 1
        inbox = WebhookInbox()
        store = self.store.sibling()
        base = Pipeline.from_env(
            self.environ,
            transport=self.transport,
            rng=random.Random(f"{self.seed}:process:{number}"),
            ledger=self.ledger,
            inbox=inbox,
        )
        witnesses: dict[str, Witness] = {}
        capabilities = {}
        for name, capability in base.capabilities.items():
            provider, breaker = PROVIDER_OF[name], capability.guard.breaker
            witness = witnesses.get(provider)
            if witness is None:
                witness = witnesses[provider] = Witness(breaker, breaker.policy.half_open_max_calls)
                breaker.subscribe(partial(self._on_transition, provider, number))
            assert witness.breaker is breaker, f"{name}: a breaker of its own beside {provider}'s"
            capabilities[name] = replace(capability, real=witness.wrap(capability.real))
        if base.parser is not None:
            for call in POLLED:
                polled = witnesses[LLAMAPARSE].wrap(getattr(base.parser, call))
                setattr(base.parser, call, polled)
        pipeline = Pipeline(
            mode=self.mode,
            capabilities=capabilities,
            embedder=base.embedder,
            chunking=ChunkingPolicy(size_tokens=CHUNK_TOKENS, overlap_tokens=OVERLAP_TOKENS),
            parser=base.parser,
        )
        self.watch.watch_buckets(pipeline)
        worker = Worker(
            store,
            pipeline,
            owner=f"p{number}",
            concurrency=self.concurrency,
            lease_s=LEASE_S,
            clock=wall_time,
        )
        app = create_app(
            store,
            guards={PROVIDER_OF[n]: c.guard for n, c in capabilities.items()},
            metrics=Metrics(),
            webhook_secret=DEFAULT_WEBHOOK_SECRET,
            standard_secret=self.features.standard_secret,
            known_job=known_job_of(pipeline, store),
            inbox=inbox,
        )
        app_transport = AppTransport(app)
        if not self.processes or min(self.processes) > number or self.webhooks.inner.app is None:
            self.webhooks.inner.app = app
        context = contextvars.copy_context()
        context.run(PROCESS.set, number)
        stop = asyncio.Event()
        task = self.loop.create_task(worker.run(stop, idle_sleep_s=IDLE_SLEEP_S), context=context)
        process = Process(number, pipeline, worker, witnesses, task, app_transport, inbox, store)
        self.processes[number] = process
        return process

    def _on_transition(self, provider: str, number: int, transition: Transition) -> None:
        self.transitions.append((provider, number, transition))

    def crash(self, number: int) -> None:
        """Kill process `number`: cancel all its tasks mid-step and forget it."""
        uploaded = [
            row_name(name) or name for name, by in self.link.uploads.items() if by == number
        ]
        owner = f"p{number}"
        self.interrupted.update(self.run(self.store.remote_in_flight(owner, uploaded)))
        tasks = self._kill(number)
        self.run(asyncio.gather(*tasks, return_exceptions=True))

    def _tripped(self, number: int, names: list[str]) -> None:
        """A tripwire killed process `number` (from inside one of its tasks) while `names`
        were in flight; the rule that armed it starts a process in its place."""
        self.interrupted.update(row_name(name) or name for name in names)
        self._kill(number)

    def _kill(self, number: int) -> list[asyncio.Task[Any]]:
        """Cancel every task of process `number` and forget it; the tasks to wait for."""
        process = self.processes.pop(number)
        process.store.alive = False
        self.deaths[number] = self.now
        tasks = list(self._tasks.pop(number, ()))
        self.leaks += open_windows(tasks)
        for task in tasks:
            task.cancel()
        self.retired.append(process)
        self.crashes += 1
        if self.webhooks.inner.app is not None and self.processes:
            self.webhooks.inner.app = self.processes[min(self.processes)].app_transport.app
        return tasks

    def in_flight(self) -> list[Window]:
        """The budget windows the running processes' tasks are stopped in."""
        return open_windows(
            task for number in self.processes for task in self._tasks.get(number, {})
        )

    def set_mode(self, mode: ServiceMode) -> None:
        self.mode = mode
        for process in self.processes.values():
            process.pipeline.mode = mode
            for router in process.pipeline.routers:
                router.mode = mode

    def set_budget(self, provider: str, daily_usd: float) -> None:
        """Change a provider's daily budget in every process, keeping the shared ledger."""
        self.budgets[provider] = daily_usd
        self.environ = environment(self.budgets) | self.features.environment()
        capability = PARSE if provider == LLAMAPARSE else EMBED
        for process in self.processes.values():
            guard = process.pipeline.guard(capability)
            old = guard.budget
            guard.limits.budget = Budget(
                daily_usd=daily_usd,
                scope=provider,
                ledger=self.ledger,
                usage=old.usage if old is not None else None,
            )

    def breakers(self) -> list[tuple[str, int, Breaker]]:
        return [
            (provider, process.number, witness.breaker)
            for process in self.processes.values()
            for provider, witness in process.witnesses.items()
        ]

    def witnesses(self) -> list[Witness]:
        return [
            witness
            for process in (*self.processes.values(), *self.retired)
            for witness in process.witnesses.values()
        ]

    def history(self) -> bytes:
        """What happened, as bytes: audit rows, breaker transitions, what the providers saw."""
        return orjson.dumps(
            {
                "audit": self.run(self.store.audit_rows()),
                "transitions": [
                    [provider, number, t.source, t.dest, t.trigger, t.reason, t.at]
                    for provider, number, t in self.transitions
                ],
                "emulator": self.emulator.stats().to_json(),
                "webhooks": dict(sorted(self.webhooks.answers.items())),
                "now": self.now,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    def close(self) -> None:
        for number in list(self.processes):
            self.crash(number)
        self.run(self.emulator.close())
        self.run(self.store.close())
        self.loop.close()


__all__ = [
    "CHUNK_TOKENS",
    "JOB_TIMEOUT_S",
    "OVERLAP_TOKENS",
    "POISON_MIME",
    "WEBHOOK_URL",
    "Process",
    "Witness",
    "World",
]
