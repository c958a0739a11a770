"""`PipelineChaos`: a Hypothesis state machine that breaks the pipeline and checks it holds.

Hypothesis draws the structure of a run: which faults start and stop, and
when documents arrive, time passes, workers crash (at random, or in a remote
parse's windows: between LlamaParse accepting an upload and our recording
it, between its job completing and our fetching it), LlamaParse's jobs fail
or outrun our deadline, webhooks misbehave and the mode changes. One drawn
seed drives everything bulky (document text and sizes, the emulator's fault
draws, retry jitter), so a test case stays within Hypothesis's choice buffer
and replays from its printed steps.

Each rule is synchronous and drives the world's virtual-time loop (see
`world`). After every step the invariants run against the store, the
witnesses and the breakers, and against LlamaParse's own record of the jobs
it made (`ground_truth`): no document is uploaded again while an earlier
upload of it is live or COMPLETED, and the budget ledger holds exactly what
those jobs bill (our estimate for the ones we gave up on, and for those
still in flight, a killed process's included). Judged by what the emulators
served and billed (`provenance`, `money`): each complete job's parse and
vectors are exactly a provider's or exactly a mock's, labelled and
`degraded` accordingly; the ledger holds at least what OpenAI billed; and no
wall-clock day's bills exceed its largest budget. The emulator's arrival
journal judges breakers, leases and pacing (`truth`): no call while a breaker
was open, half-open probes within the policy, open periods as long as the
policy's cooldown schedule, every call for a job inside a lease its process
held, never two processes at once, and no more requests than a process's
RPM bucket grants, none inside a 429's wait. Teardown heals every fault,
lets the world settle within a bounded horizon, and checks liveness: every
job terminal, every job without a permanent fault complete, every remote
parse resolved and its reservation with it, `degraded` only where a mock
served, chunks as the documented rules cut them (`chunk_oracle`), the ledger
equal to the usage logs on every day (before and after the backfill), after
a backfill nothing degraded and no mock output left, and a healthy job
failed only after the tries its audit rows show were failed by the providers
(`dead_letters`).

Each world also draws which production features its processes run with
(`features`: RPM and TPM buckets, slow-call trips, Standard Webhooks), and
coverage counts each only where the world saw it work.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from providers import LLAMAPARSE, OPENAI
from providers.llamaparse.settings import LlamaParseConfig
from providers.llamaparse.webhooks import parse_webhook_body
from providers.transport import HttpRequest
from resilience import ServiceMode
from resilience.breaker import CLOSED, HALF_OPEN, OPEN
from resilience.clock import iso_utc
from simulations.chaos.chunk_oracle import chunk_problem
from simulations.chaos.features import FEATURES, Features
from simulations.chaos.ground_truth import (
    early_uploads,
    expected_usd,
    gave_up,
)
from simulations.chaos.link import Tripwire
from simulations.chaos.money import (
    Calendar,
    billed_spend_problem,
    daily_budget_problems,
    ledger_usage_problems,
)
from simulations.chaos.oracle import edge_problem
from simulations.chaos.provenance import Provenance, world_problems
from simulations.chaos.stats import RUN
from simulations.chaos.truth import dead_letter_problems, timing_problems
from simulations.chaos.windows import sums
from simulations.chaos.world import (
    CHUNK_TOKENS,
    JOB_TIMEOUT_S,
    OVERLAP_TOKENS,
    WEBHOOK_URL,
    World,
)
from simulations.emulators import DEFAULT_WEBHOOK_SECRET, FaultPlan, LlamaParsePlan, OpenAIPlan
from simulations.emulators.faults import WebhookPlan
from simulations.emulators.webhook_delivery import SIGNATURE_HEADER, sign
from state.machine import Job, JobState
from state.pipeline.backfill import backfill
from state.store.remote import RemoteJob, RemoteState

HORIZON_S: Final = 26 * 3600.0
"""How long teardown waits, healed, for every job to reach a terminal state: the longest
legitimate wait is a daily budget's reset (up to 24 hours), then the steps themselves."""

DAY_S: Final = 86_400.0
USD_TOLERANCE: Final = 1e-7
"""Usage logs round each hour's dollars to 9 places; the cheapest call costs about 1e-6."""
HEALTHY: Final = {"rpm": 100_000, "tpm": 100_000_000}
TRIPWIRE_WAIT_S: Final = 900.0
"""How long a tripwire waits, in `TRIPWIRE_STEP_S` steps, for its window before it is
disarmed (nothing reaches LlamaParse in MOCK mode or with the budget spent)."""
TRIPWIRE_STEP_S: Final = 5.0


class PipelineChaos(RuleBasedStateMachine):
    """Faults and actions as rules; the issue's invariants after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="breakwater-chaos-"))
        self.accepted: dict[str, bool] = {}  # job id -> poison (a permanent fault)
        self.openai: dict[str, Any] = dict(HEALTHY)
        self.llamaparse: dict[str, Any] = {}
        self.webhook: dict[str, Any] = {}
        self.orphans: set[str] = set()  # jobs a crashed process held
        self.last_seq = 0
        self.states: dict[str, str | None] = {}
        self.started = time.perf_counter()
        self.most_budget: dict[str, float] = {}
        self.calendar: Calendar | None = None
        self.provenance: Provenance | None = None

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    # -- setup ----------------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        processes=st.integers(1, 2),
        documents=st.integers(0, 60),
        duplicates=st.sampled_from([0.0, 0.1, 0.5]),
        parse_budget=st.sampled_from([0.05, 0.5]),
        features=FEATURES,
    )
    def boot(
        self,
        seed: int,
        processes: int,
        documents: int,
        duplicates: float,
        parse_budget: float,
        features: Features,
    ) -> None:
        """A world with `documents` uploaded, so every fault meets some load, webhooks
        that LlamaParse sends twice at `duplicates` rate (at-least-once delivery), a
        daily parse budget of `parse_budget` dollars (about 13 or 130 documents), and
        the production `features` drawn for it."""
        note(f"world seed {seed}, {processes} process(es), {documents} documents, {features}")
        budgets = {OPENAI: 0.05, LLAMAPARSE: parse_budget}
        self.world = World(
            seed,
            self.directory,
            processes=processes,
            daily_budget_usd=budgets,
            features=features,
        )
        self.most_budget = dict(self.w.budgets)
        self.calendar = Calendar(self.w)
        for provider, usd in budgets.items():
            self.calendar.budget(self.w, provider, usd)
        embedder = self.w.processes[min(self.w.processes)].pipeline.embedder
        self.provenance = Provenance(embedder.model, embedder.vector_dimensions)
        self.webhook = {"duplicate_rate": duplicates}
        self._apply_faults()
        self.accepted.update(self.w.submit(documents))

    def _apply_faults(self) -> None:
        plan = FaultPlan(
            seed=self.w.seed,
            openai=OpenAIPlan(**self.openai),
            llamaparse=LlamaParsePlan(**self.llamaparse, webhook=WebhookPlan(**self.webhook)),
        )
        self.w.emulator.set_faults(plan)

    def _fault(self, kind: str) -> None:
        RUN.faults[kind] += 1
        event(f"fault: {kind}")

    # -- actions --------------------------------------------------------------

    @rule(count=st.integers(1, 40))
    def submit(self, count: int) -> None:
        self.accepted.update(self.w.submit(count))

    @rule(
        seconds=st.sampled_from([1.0, 7.0, 30.0, 90.0, 300.0, 900.0]),
        per_minute=st.sampled_from([0, 0, 2, 8]),
    )
    def advance(self, seconds: float, per_minute: int) -> None:
        """Let time pass, with `per_minute` new documents arriving each minute meanwhile."""
        left = seconds
        while left > 0:
            step = min(60.0, left)
            self.w.advance(step)
            left -= step
            if per_minute:
                self.accepted.update(self.w.submit(per_minute))

    @rule(mode=st.sampled_from([ServiceMode.HYBRID, ServiceMode.REAL, ServiceMode.MOCK]))
    def change_mode(self, mode: ServiceMode) -> None:
        self._fault("mode change")
        self.w.set_mode(mode)

    # -- provider faults ------------------------------------------------------

    @rule(
        provider=st.sampled_from([OPENAI, LLAMAPARSE]),
        seconds=st.sampled_from([45.0, 200.0, 900.0, 10 * DAY_S]),
    )
    def outage(self, provider: str, seconds: float) -> None:
        """The provider answers 503 to everything for `seconds` from now (or until healed)."""
        self._fault("outage")
        faults = self.openai if provider == OPENAI else self.llamaparse
        faults["outages"] = ((0.0, seconds),)
        self._apply_faults()

    @rule(provider=st.sampled_from([OPENAI, LLAMAPARSE]), seconds=st.sampled_from([120.0, 400.0]))
    def outage_under_load(self, provider: str, seconds: float) -> None:
        """An outage of `seconds` with documents arriving through it and for a while after:
        the breaker's whole cycle, trip, failed probes, heal and a successful probe."""
        self.outage(provider, seconds)
        self.advance(seconds + 600.0, 4)

    @rule(low=st.floats(30.0, 150.0), high=st.floats(150.0, 300.0))
    def latency_spike(self, low: float, high: float) -> None:
        self._fault("parse latency spike")
        self.llamaparse["parse_time_s"] = (low, high)
        self._apply_faults()

    @rule(low=st.sampled_from([2.0, 4.0]), high=st.sampled_from([8.0, 20.0]))
    def slow_answers(self, low: float, high: float) -> None:
        """OpenAI answers everything after `low` to `high` seconds, with documents
        arriving meanwhile: slow calls, where the world's breaker counts them
        (`Features.slow_call_s`), trip it, and slow probes keep it open."""
        self._fault("slow embeddings")
        self.openai["latency_s"] = (low, high)
        self._apply_faults()
        self.advance(600.0, 4)

    @rule(rpm=st.sampled_from([2, 6, 20]))
    def rate_limit_burst(self, rpm: int) -> None:
        self._fault("429 burst")
        self.openai["rpm"] = rpm
        self._apply_faults()

    @rule(rpm=st.sampled_from([1, 3]))
    def rate_limits_under_load(self, rpm: int) -> None:
        """OpenAI's limit falls below the world's own (`Features.rpm`) while documents
        arrive: its 429s pause our buckets, which then refill from empty."""
        self.rate_limit_burst(rpm)
        self.advance(600.0, 4)

    @rule(
        provider=st.sampled_from([OPENAI, LLAMAPARSE]),
        malformed=st.sampled_from([0.0, 0.2, 0.6]),
        hang=st.sampled_from([0.0, 0.1, 0.4]),
        lost=st.sampled_from([0.0, 0.1, 0.4]),
    )
    def bad_answers(self, provider: str, malformed: float, hang: float, lost: float) -> None:
        """Garbled answers, hangs before the provider does anything, and (OpenAI) answers
        lost after it billed: timeouts that cost money."""
        self._fault("malformed or hanging answers")
        faults = self.openai if provider == OPENAI else self.llamaparse
        faults["malformed_rate"] = malformed
        faults["hang_rate"] = hang
        if provider == OPENAI:
            faults["lost_answer_rate"] = lost
        self._apply_faults()

    @rule()
    def heal_providers(self) -> None:
        self.openai = dict(HEALTHY)
        self.llamaparse = {}
        self._apply_faults()

    # -- budgets and clocks ---------------------------------------------------

    @rule(provider=st.sampled_from([OPENAI, LLAMAPARSE]), usd=st.sampled_from([0.001, 0.01, 1.0]))
    def budget_change(self, provider: str, usd: float) -> None:
        self._fault("budget change")
        self._set_budget(provider, usd)

    def _set_budget(self, provider: str, usd: float) -> None:
        """Change the budget; the day's spend is then held to the largest limit it had."""
        self.w.set_budget(provider, usd)
        self.most_budget[provider] = max(self.most_budget[provider], usd)
        assert self.calendar is not None
        self.calendar.budget(self.w, provider, usd)

    @rule(to_next=st.sampled_from(["hour", "day"]), leap=st.floats(0.0, 120.0))
    def clock_jump(self, to_next: str, leap: float) -> None:
        """The wall clock jumps forward across an hour or day boundary; the loop clock does not.

        Budget periods turn over at once, and leases (stamped in wall time)
        may lapse under workers mid-step.
        """
        self._fault(f"clock jump to next {to_next}")
        period = 3600.0 if to_next == "hour" else DAY_S
        wall = self.w.loop.wall_epoch + self.w.now
        self.w.jump_clock((period - wall % period) + leap)
        assert self.calendar is not None
        self.calendar.jumped(self.w)
        if to_next == "day":
            self.most_budget = dict(self.w.budgets)

    # -- workers --------------------------------------------------------------

    @precondition(lambda self: self.world is not None and bool(self.world.processes))
    @rule(data=st.data())
    def crash_and_restart(self, data: st.DataObject) -> None:
        self._fault("worker crash")
        number = data.draw(st.sampled_from(sorted(self.w.processes)))
        owner = f"p{number}"
        held = self.w.run(self.w.store.leased_by(owner))
        self.w.crash(number)
        self.orphans.update(held)
        self.w.start_process()

    @precondition(lambda self: self.world is not None and bool(self.world.processes))
    @rule(tripwire=st.sampled_from(Tripwire), count=st.integers(1, 8))
    def crash_in_remote_parse(self, tripwire: Tripwire, count: int) -> None:
        """`count` documents arrive and a process dies at `tripwire`: just after LlamaParse
        accepted an upload of its, or just after it told its poller a job COMPLETED,
        before it read the answer. A new process starts in its place."""
        self._fault(f"worker {tripwire}")
        self.accepted.update(self.w.submit(count))
        link = self.w.link
        fired = len(link.fired)
        link.armed = tripwire
        waited = 0.0
        while len(link.fired) == fired and waited < TRIPWIRE_WAIT_S:
            self.w.advance(TRIPWIRE_STEP_S)
            waited += TRIPWIRE_STEP_S
        link.armed = None
        if len(link.fired) > fired:
            self.w.start_process()

    @rule(rate=st.sampled_from([0.3, 1.0]))
    def remote_failures(self, rate: float) -> None:
        """LlamaParse fails the jobs it accepts: each page fails at `rate`, and a job with a
        failed page of its one page ends FAILED."""
        self._fault("remote jobs fail")
        self.llamaparse["page_failure_rate"] = rate
        self._apply_faults()

    # -- webhooks -------------------------------------------------------------

    @rule(
        duplicate=st.sampled_from([0.0, 0.5, 1.0]),
        delay=st.sampled_from([0.0, 5.0, 120.0]),
        drop=st.sampled_from([0.0, 0.3]),
        forged=st.sampled_from([0.0, 0.3]),
    )
    def webhook_weather(self, duplicate: float, delay: float, drop: float, forged: float) -> None:
        self._fault("webhook duplicate/delay/drop/forge")
        self.webhook = {
            "duplicate_rate": duplicate,
            "delay_s": (delay, delay),
            "drop_rate": drop,
            "bad_signature_rate": forged,
        }
        self._apply_faults()

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data())
    def forge_webhook(self, data: st.DataObject) -> None:
        """A delivery signed with the wrong secret: 401, and nothing recorded. Where the
        server takes Standard Webhooks, LC-Signature alone (which a replay carries) is
        not enough, so the delivery is signed with the right LC secret and still refused."""
        self._fault("forged webhook")
        job_id = data.draw(st.sampled_from(sorted(self.accepted)))
        body = orjson.dumps(
            {"event_type": "parse.success", "job_id": job_id, "status": "SUCCESS", "data": {}}
        )
        secret = DEFAULT_WEBHOOK_SECRET if self.w.features.standard_webhooks else "forged-secret"
        request = HttpRequest("POST", WEBHOOK_URL, {SIGNATURE_HEADER: sign(secret, body)}, body)
        response = self.w.run(self.w.webhooks.send(request))
        assert response.status == 401, f"a forged webhook got {response.status}"
        inboxes = [process.inbox for process in self.w.processes.values()]
        forged = parse_webhook_body(body)
        assert not any(inbox.seen(forged) for inbox in inboxes), "a forged webhook was recorded"

    # -- invariants -----------------------------------------------------------

    @invariant()
    def store_is_consistent(self) -> None:
        if self.world is None:
            return
        RUN.invariant_checks += 1
        store = self.w.store
        events = self.w.run(store.events_since(self.last_seq))
        for seq, job_id, source, dest in events:
            problem = edge_problem(source, dest, self.states.get(job_id))
            assert problem is None, f"job {job_id}: {problem}"
            if source in (JobState.COMPLETE, JobState.FAILED) and dest != source:
                raise AssertionError(f"job {job_id} left terminal state {source}")
            self.states[job_id] = dest
            self.last_seq = seq
        jobs = self.w.run(store.all_jobs())
        assert {job.id for job in jobs} == set(self.accepted), "a job was lost or invented"
        for job in jobs:
            if not job.is_terminal:
                assert job.lease_owner is None or job.lease_expires_at is not None, job
        counts = self.w.run(store.row_counts())
        assert counts["parses"] <= counts["documents"]
        assert not store.lapsed_commits, store.lapsed_commits[0]

    @invariant()
    def breakers_hold(self) -> None:
        if self.world is None:
            return
        assert not self.w.webhooks.repeat_problems, self.w.webhooks.repeat_problems[0]
        for witness in self.w.witnesses():
            assert not witness.opened_calls, witness.opened_calls[0]
            assert witness.most_probes <= witness.half_open_max_calls, (
                f"{witness.breaker.name}: {witness.most_probes} probes at once"
            )
        for provider, number, breaker in self.w.breakers():
            assert breaker.aiobreaker_state == breaker.state, (
                f"p{number} {provider}: aiobreaker {breaker.aiobreaker_state}, "
                f"machine {breaker.state}"
            )

    @invariant()
    def timing_holds(self) -> None:
        """Breakers and leases judged by when calls reached the providers (`truth`)."""
        if self.world is None:
            return
        problems = timing_problems(self.w, self.w.run(self.w.store.all_jobs()))
        assert not problems, problems[0]

    @invariant()
    def uploads_wait_for_live_jobs(self) -> None:
        """No document is uploaded again while LlamaParse runs, or has COMPLETED, an earlier
        upload of it, unless we gave that one up past our deadline (its own record)."""
        if self.world is None:
            return
        world = self.w
        problems = early_uploads(
            world.emulator.llamaparse_jobs(),
            world.run(world.store.remote_rows()),
            wall_at=world.wall_at,
            timeout_s=JOB_TIMEOUT_S,
            lapsed=world.store.taken_over,
        )
        assert not problems, f"uploaded twice: {problems[0]}"

    @invariant()
    def parse_spend_is_billed_spend(self) -> None:
        """The budget ledger holds, for LlamaParse, exactly what the jobs it made bill, our
        estimate for those we gave up on, and the reservations of those in flight: a killed
        process's reservations are neither lost nor charged twice after a restart. Only a
        task stopped between a ledger write and a row write may hold a reservation no row
        accounts for (`windows`): a running one for a moment, and a killed one for good
        where the crash table says so."""
        if self.world is None:
            return
        world = self.w
        rows, charged, in_flight = world.run(
            world.store.remote_accounts(LLAMAPARSE, world.in_flight)
        )
        price = LlamaParseConfig.from_env(world.environ).usd_per_credit
        expected = expected_usd(
            world.emulator.llamaparse_jobs(),
            rows,
            usd_per_credit=price,
            lapsed=world.store.taken_over,
        )
        held = sums(
            [
                *(leak for leak in world.leaks if leak.documented),
                *(window for window in in_flight if window.scope == LLAMAPARSE),
            ]
        )
        assert any(abs(charged - expected - usd) < 1e-9 for usd in held), (
            f"llamaparse: ${charged:.9f} charged, ${expected:.9f} billed or held, and open "
            f"windows for any of {sorted(held)}; killed in {[w.what for w in world.leaks]}"
        )

    @invariant()
    def spend_within_budget(self) -> None:
        """Attempted spend (the ledger, unknown outcomes at their estimate) stays within the
        budget, and confirmed spend (the usage logs) never exceeds what was attempted."""
        if self.world is None or not self.w.processes:
            return
        for provider in (OPENAI, LLAMAPARSE):
            attempted, confirmed = self._spend(provider)
            limit = self.most_budget[provider]
            assert -1e-9 <= attempted <= limit + 1e-9, (
                f"{provider}: ${attempted:.6f} attempted of ${limit:.6f}"
            )
            assert confirmed <= attempted + USD_TOLERANCE, (
                f"{provider}: ${confirmed:.6f} settled but only ${attempted:.6f} in the ledger"
            )

    @invariant()
    def ground_truth_holds(self) -> None:
        """What complete jobs hold is what a provider served or a mock makes, labelled so
        (`provenance`); the ledger holds what OpenAI billed, and no day's bills went over
        its budget (`money`)."""
        if self.world is None or self.provenance is None or self.calendar is None:
            return
        problems = world_problems(self.w, self.provenance)
        problems += filter(None, [billed_spend_problem(self.w)])
        problems += daily_budget_problems(self.w, self.calendar)
        assert not problems, problems[0]

    def _spend(self, provider: str) -> tuple[float, float]:
        """Today's (ledger total, sum of settled and kept costs in every process's usage log)."""
        world = self.w
        capability = "parse" if provider == LLAMAPARSE else "embed"
        process = world.processes[min(world.processes)]
        budget = process.pipeline.guard(capability).budget
        assert budget is not None
        attempted, _ = world.run(budget.spent("day"))
        today = iso_utc(world.loop.wall_epoch + world.now)[:10]
        logs = {
            id(guard.budget.usage): guard.budget.usage
            for p in (*world.processes.values(), *world.retired)
            if (guard := p.pipeline.guard(capability)).budget is not None
        }

        async def summaries() -> list[dict[str, Any]]:
            # On the loop, where the logs' clock (wall_time) is the virtual one.
            return [log.summary() for log in logs.values()]

        confirmed = 0.0
        for summary in world.run(summaries()):
            stats = summary["providers"].get(provider)
            if stats is not None:
                confirmed += sum(h["cost_usd"] for h in stats["hours"] if h["hour"][:10] == today)
        return attempted, confirmed

    # -- the end --------------------------------------------------------------

    histories: list[bytes] | None = None
    """When a list, each test case appends its history here (the determinism test)."""

    def teardown(self) -> None:
        if self.world is None:
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        try:
            self._settle_and_check()
        finally:
            self._count()
            if self.histories is not None:
                self.histories.append(self.w.history())
            self.w.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _settle_and_check(self) -> None:
        world = self.w
        self.openai, self.llamaparse, self.webhook = dict(HEALTHY), {}, {}
        self._apply_faults()
        world.set_mode(ServiceMode.HYBRID)
        for provider in (OPENAI, LLAMAPARSE):
            self._set_budget(provider, 1_000.0)
        if not world.processes:
            world.start_process()
        deadline = world.now + HORIZON_S
        while world.now < deadline and not self._settled():
            world.advance(300.0)
        self.store_is_consistent()
        jobs = {job.id: job for job in world.run(world.store.all_jobs())}
        for job_id, poison in self.accepted.items():
            job = jobs[job_id]
            assert job.is_terminal, f"job {job_id} still {job.state} after the horizon"
            if poison:
                assert job.state is JobState.FAILED, f"poison job {job_id} ended {job.state}"
            if job.state is JobState.COMPLETE:
                self._check_outputs(job_id, job)
        # Only tries the providers failed, or LlamaParse failing its parse, may dead-letter
        # a healthy document: judged by the audit trail against what the emulator served.
        healthy = [
            job_id
            for job_id, poison in self.accepted.items()
            if not poison and jobs[job_id].state is JobState.FAILED
        ]
        dead = dead_letter_problems(world, jobs, healthy)
        assert not dead, dead[0]
        self.spend_within_budget()
        rows = world.run(world.store.remote_rows())
        # Every remote parse ended, its reservation settled or released, save a known gap:
        # an intent a crash left behind whose job ended before a lease resumed it (failed
        # for killing worker after worker, or served by the mock in MOCK mode). Nobody
        # looks for its upload again, so it keeps the estimate (counted as held).
        unresolved = [
            row.name
            for row in rows
            if row.status is RemoteState.LIVE
            or (row.status is RemoteState.INTENT and not jobs[row.job_id].is_terminal)
        ]
        assert not unresolved, f"remote parses never resolved: {unresolved}"
        self.uploads_wait_for_live_jobs()
        self.parse_spend_is_billed_spend()
        # Quiescent: every reservation settled, released or kept, so the ledger holds
        # exactly what the usage logs recorded, on every day, crashes or not (`money`).
        assert self.provenance is not None
        problems = world_problems(world, self.provenance, full=True)
        problems += ledger_usage_problems(world, "settled")
        assert not problems, problems[0]
        world.advance(900.0)  # every cooldown over, so the first real call is a probe
        process = world.processes[min(world.processes)]
        report = world.run(backfill(world.store, process.pipeline))
        assert not report.still_degraded, report.still_degraded
        assert not world.run(world.store.degraded_jobs()), "degraded jobs after backfill"
        problems = world_problems(world, self.provenance, after_backfill=True)
        problems += ledger_usage_problems(world, "after backfill")
        problems += filter(None, [billed_spend_problem(world)])
        assert not problems, problems[0]
        self.uploads_wait_for_live_jobs()
        self.timing_holds()
        self._record_coverage(jobs, rows)

    def _check_outputs(self, job_id: str, job: Job) -> None:
        """A complete job's outputs agree with each other and with `degraded`.

        Its chunks are what the documented chunking rules give its stored
        text (`chunk_oracle`, which never calls the chunker), with one vector
        each. Mock output anywhere means `degraded`; `degraded` means a mock
        served one of its steps (a later real result may have replaced the
        mock's output, when the text was the same).
        """
        world = self.w
        store = world.store
        process = world.processes[min(world.processes)]
        parse = world.run(store.get_parse(job.sha256))
        assert parse is not None, f"job {job_id} complete without a parse"
        chunks = world.run(store.chunks(job.sha256))
        problem = chunk_problem(
            parse.parsed.markdown,
            [(c.index, c.text) for c in chunks],
            size_tokens=CHUNK_TOKENS,
            overlap_tokens=OVERLAP_TOKENS,
        )
        assert problem is None, f"ground truth: chunks: job {job_id}: {problem}"
        embedder = process.pipeline.embedder
        vectors = world.run(
            store.embeddings(job.sha256, embedder.model, embedder.vector_dimensions)
        )
        assert [v.chunk_index for v in vectors] == [c.index for c in chunks], job_id
        if world.run(store.served_by_mock(job.sha256)):
            assert job.degraded, f"job {job_id} has mock output but is not degraded"
        if job.degraded:
            assert world.run(store.mock_steps(job_id)), f"job {job_id} degraded with no mock step"

    def _settled(self) -> bool:
        """Every job terminal, and no remote job left to poll."""
        counts = self.w.run(self.w.store.jobs_by_state())
        if any(n for state, n in counts.items() if state not in _TERMINAL):
            return False
        rows = self.w.run(self.w.store.remote_rows())
        return all(row.status is not RemoteState.LIVE for row in rows)

    def _record_coverage(self, jobs: dict[str, Job], rows: list[RemoteJob]) -> None:
        world = self.w
        seen = self._remote_coverage(rows)
        for _provider, _number, transition in world.transitions:
            if transition.source == CLOSED and transition.dest == OPEN:
                seen.add("breaker opened")
            if transition.source == HALF_OPEN:
                seen.add("probe succeeded" if transition.dest == CLOSED else "probe failed")
        if any(job.state is JobState.FAILED for job in jobs.values()):
            seen.add("job dead-lettered")
        if world.webhooks.answers["duplicate"]:
            seen.add("duplicate webhook dropped")
        if world.run(world.store.budget_refusals()):
            seen.add("budget exhausted")
        if any(jobs[job_id].is_terminal for job_id in self.orphans):
            seen.add("worker crash recovered")
        if world.run(world.store.mock_served_count()):
            seen.add("fallback served")
        seen |= world.watch.coverage(world.emulator.stats(), world.transitions)
        for name in sorted(seen):
            event(f"coverage: {name}")
            RUN.coverage[name] += 1

    def _remote_coverage(self, rows: list[RemoteJob]) -> set[str]:
        """Which of a remote parse's hard paths this run took."""
        world = self.w
        seen = {str(tripwire) for tripwire in world.link.fired}
        done = {row.name for row in rows if row.status is RemoteState.DONE}
        if world.interrupted & done:
            seen.add("remote parse resumed after a crash")
        if any(row.status in _FAILED and not gave_up(row) for row in rows):
            seen.add("remote job failed")
        if any(gave_up(row) for row in rows):
            seen.add("remote job expired")
        if world.webhooks.repeated & {row.remote_id for row in rows}:
            seen.add("webhook duplicated for a recorded job")
        return seen

    def _count(self) -> None:
        world = self.w
        RUN.count_example(
            jobs=len(self.accepted),
            simulated_s=world.now,
            began=self.started,
            ended=time.perf_counter(),
        )
        for _provider, _number, transition in world.transitions:
            RUN.transitions[f"{transition.source}->{transition.dest}"] += 1


_TERMINAL: Final = frozenset({JobState.COMPLETE, JobState.FAILED})
_FAILED: Final = frozenset({RemoteState.FAILED, RemoteState.REPORTED})

__all__ = ["PipelineChaos"]
