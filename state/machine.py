"""The job state machine: which step a document is at, and which moves are legal.

A job walks uploaded -> parsing -> parsed -> chunked -> embedding -> complete.
The two provider steps (parsing, embedding) have their own states, so a job
whose worker died mid-call is visibly stuck *in* that step and is simply
re-run there; the quick local steps (chunking) only mark their result.

Besides the happy path:

* `waiting`: the guard refused the step (budget, circuit open, rate limited)
  or a transient error is backing off. The job remembers the step it left in
  `resume_to`, and `resume` returns it there; no other way out but `fail`.
* `failed`: terminal, the dead letter. It keeps `failure_reason` and the
  step's `last_error`.
* `complete`: terminal; `degraded` says a mock served some step.

Terminal states absorb: every trigger from them raises `IllegalTransition`.

A `transitions.Machine` is the single source of truth for legal edges, as in
`resilience.breaker`: a plain model object, `auto_transitions=False`, and a
`MachineError` for an edge that does not exist. A `JobMachine` owns one such
machine, its probe model and the lock that makes it safe across threads.
`next_state` asks the one `job_machine()` builds on first use rather than
building one per check (building one costs some fifteen triggers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Final

from transitions import Machine, MachineError

if TYPE_CHECKING:
    from transitions.core import TransitionConfigDict  # only in the package's stubs


class JobState(StrEnum):
    """Where a job is. The values are what the store and the audit rows hold."""

    UPLOADED = "uploaded"
    PARSING = "parsing"
    PARSED = "parsed"
    CHUNKED = "chunked"
    EMBEDDING = "embedding"
    COMPLETE = "complete"
    WAITING = "waiting"
    FAILED = "failed"


class Trigger(StrEnum):
    """The moves a job can make; `next_state` says where each leads."""

    START_PARSE = "start_parse"
    FINISH_PARSE = "finish_parse"
    CHUNK = "chunk"
    START_EMBED = "start_embed"
    FINISH_EMBED = "finish_embed"
    WAIT = "wait"
    RESUME = "resume"
    FAIL = "fail"


class WaitReason(StrEnum):
    """Why a job is waiting. The first three equal `resilience.Rejected.reason`
    of the matching refusal, so `WaitReason(exc.reason)` converts one."""

    BUDGET = "budget"
    CIRCUIT_OPEN = "circuit_open"
    RATE_LIMITED = "rate_limited"
    RETRY = "retry"
    """A step raised a transient error and backs off before trying again."""


STEPS: Final = (
    JobState.UPLOADED,
    JobState.PARSING,
    JobState.PARSED,
    JobState.CHUNKED,
    JobState.EMBEDDING,
)
"""The states a job works from, in pipeline order; `waiting` returns to one of these."""

TERMINAL: Final = frozenset({JobState.COMPLETE, JobState.FAILED})

FORWARD: Final = {
    Trigger.START_PARSE: (JobState.UPLOADED, JobState.PARSING),
    Trigger.FINISH_PARSE: (JobState.PARSING, JobState.PARSED),
    Trigger.CHUNK: (JobState.PARSED, JobState.CHUNKED),
    Trigger.START_EMBED: (JobState.CHUNKED, JobState.EMBEDDING),
    Trigger.FINISH_EMBED: (JobState.EMBEDDING, JobState.COMPLETE),
}
"""The happy path: trigger -> (source, dest). Each moves the job to a new step."""


class IllegalTransition(Exception):
    """`trigger` has no edge from `state` (or `resume` has nowhere legal to return to)."""

    def __init__(self, state: JobState, trigger: Trigger, detail: str) -> None:
        super().__init__(f"cannot {trigger} from {state}: {detail}")
        self.state = state
        self.trigger = trigger


def _resumes_to(step: JobState) -> Callable[..., bool]:
    """The condition of the `resume` edge into `step`: the job left from there."""

    def check(resume_to: JobState | None = None) -> bool:
        return resume_to == step

    return check


def _edges() -> list[TransitionConfigDict]:
    """The legal edges, with plain-string names: `transitions` names Enum states by `.name`."""
    steps = [step.value for step in STEPS]
    edges: list[TransitionConfigDict] = [
        {"trigger": trigger.value, "source": source.value, "dest": dest.value}
        for trigger, (source, dest) in FORWARD.items()
    ]
    edges.append({"trigger": Trigger.WAIT.value, "source": steps, "dest": JobState.WAITING.value})
    edges.extend(
        {
            "trigger": Trigger.RESUME.value,
            "source": JobState.WAITING.value,
            "dest": step.value,
            "conditions": _resumes_to(step),
        }
        for step in STEPS
    )
    edges.append(
        {
            "trigger": Trigger.FAIL.value,
            "source": [*steps, JobState.WAITING.value],
            "dest": JobState.FAILED.value,
        }
    )
    return edges


class _Probe:
    """The model a `JobMachine` moves: set to a state, triggered, read back."""

    state: str
    trigger: Callable[..., bool]


class JobMachine:
    """The legal edges as a `transitions.Machine`, asked where a trigger leads.

    The machine moves one probe model, set afresh on every question; the
    lock keeps one question at a time, so threads may share an instance.
    """

    def __init__(self) -> None:
        self._probe = _Probe()
        self._machine = Machine(
            model=self._probe,
            states=[state.value for state in JobState],
            transitions=_edges(),
            initial=JobState.UPLOADED.value,
            auto_transitions=False,
        )
        self._lock = threading.Lock()

    def next_state(
        self, current: JobState, trigger: Trigger, resume_to: JobState | None = None
    ) -> JobState:
        """Where `trigger` takes a job in `current`, or raise `IllegalTransition`.

        `resume_to` is the waiting job's remembered step; only `resume` reads it.
        """
        current, trigger = JobState(current), Trigger(trigger)
        with self._lock:
            self._machine.set_state(current.value, model=self._probe)
            try:
                moved = self._probe.trigger(trigger.value, resume_to=resume_to)
            except MachineError:
                terminal = current in TERMINAL
                detail = "a terminal state absorbs every trigger" if terminal else "no edge"
                raise IllegalTransition(current, trigger, detail) from None
            dest = JobState(self._probe.state)
        if not moved:  # only `resume` has conditions
            raise IllegalTransition(current, trigger, f"cannot resume to {resume_to}")
        return dest


@cache
def job_machine() -> JobMachine:
    """The `JobMachine` `next_state` asks, built on the first question."""
    return JobMachine()


def next_state(current: JobState, trigger: Trigger, resume_to: JobState | None = None) -> JobState:
    """Where `trigger` takes a job in `current`, or raise `IllegalTransition`.

    Pure: nothing is stored; `job_machine()` answers.
    """
    return job_machine().next_state(current, trigger, resume_to)


@dataclass(frozen=True, slots=True)
class Job:
    """One uploaded document's progress through the pipeline, as the store holds it.

    `version` rises by one on every transition; with `state` it is what a
    compare-and-set checks. `not_before` and `lease_expires_at` are epoch
    seconds (`resilience.clock.wall_time`), compared by the store;
    `created_at` and `updated_at` are ISO-8601 UTC, for people.

    `step_attempts` counts the leases that picked the job up in its current
    step; moving forward resets it. A value above one means earlier workers
    died or lapsed there, so a worker can dead-letter a job that keeps
    killing workers. Callers may also set it (say, per failed try).
    """

    id: str
    sha256: str
    filename: str
    mime_type: str
    state: JobState
    version: int
    step_attempts: int
    not_before: float
    wait_reason: WaitReason | None
    resume_to: JobState | None
    degraded: bool
    last_error: str | None
    failure_reason: str | None
    lease_owner: str | None
    lease_expires_at: float | None
    created_at: str
    updated_at: str
    correlation_id: str
    """What ties the job's provider requests, log lines and audit rows together:
    the upload's `X-Correlation-ID`, else the job's id."""

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL
