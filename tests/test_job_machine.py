"""The job state machine and the transition rules, checked against a table written here.

The table below is the issue's graph written out by hand, independently of
`state.machine`, so the two must agree edge for edge.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import BudgetExceeded, CircuitOpen, RateLimited
from state.machine import (
    STEPS,
    TERMINAL,
    IllegalTransition,
    Job,
    JobState,
    Trigger,
    WaitReason,
    next_state,
)
from state.store.protocol import JobChanges
from state.store.rules import apply, check_changes, job_id_for, lease_problem

S, T = JobState, Trigger
WORKING = (S.UPLOADED, S.PARSING, S.PARSED, S.CHUNKED, S.EMBEDDING)

# (state, trigger) -> dest, for every edge but `resume` (whose dest is remembered).
EDGES: dict[tuple[JobState, Trigger], JobState] = {
    (S.UPLOADED, T.START_PARSE): S.PARSING,
    (S.PARSING, T.FINISH_PARSE): S.PARSED,
    (S.PARSED, T.CHUNK): S.CHUNKED,
    (S.CHUNKED, T.START_EMBED): S.EMBEDDING,
    (S.EMBEDDING, T.FINISH_EMBED): S.COMPLETE,
    **{(state, T.WAIT): S.WAITING for state in WORKING},
    **{(state, T.FAIL): S.FAILED for state in (*WORKING, S.WAITING)},
}
ILLEGAL = [
    (state, trigger)
    for state in JobState
    for trigger in Trigger
    if (state, trigger) not in EDGES and (state, trigger) != (S.WAITING, T.RESUME)
]


def make_job(state: JobState = S.UPLOADED, **fields: object) -> Job:
    job = Job(
        id="job-1",
        sha256="0" * 64,
        filename="a.txt",
        mime_type="text/plain",
        state=state,
        version=3,
        step_attempts=2,
        not_before=100.0,
        wait_reason=None,
        resume_to=None,
        degraded=False,
        last_error="boom",
        failure_reason=None,
        lease_owner="w1",
        lease_expires_at=200.0,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
        correlation_id="abc-123",
    )
    return replace(job, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("edge", "dest"), list(EDGES.items()))
def test_every_legal_edge(edge: tuple[JobState, Trigger], dest: JobState) -> None:
    state, trigger = edge
    assert next_state(state, trigger) is dest


@pytest.mark.parametrize("step", STEPS)
def test_resume_returns_to_the_step_left(step: JobState) -> None:
    assert next_state(S.WAITING, T.RESUME, resume_to=step) is step


@pytest.mark.parametrize("resume_to", [None, S.WAITING, S.COMPLETE, S.FAILED])
def test_resume_needs_a_step_to_return_to(resume_to: JobState | None) -> None:
    with pytest.raises(IllegalTransition, match="cannot resume"):
        next_state(S.WAITING, T.RESUME, resume_to=resume_to)


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_every_other_edge_is_illegal(state: JobState, trigger: Trigger) -> None:
    with pytest.raises(IllegalTransition) as raised:
        next_state(state, trigger, resume_to=S.PARSING)
    assert raised.value.state is state
    assert raised.value.trigger is trigger
    assert str(raised.value).startswith(f"cannot {trigger} from {state}")


@pytest.mark.parametrize("state", sorted(TERMINAL))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_terminal_states_absorb_every_trigger(state: JobState, trigger: Trigger) -> None:
    with pytest.raises(IllegalTransition, match="terminal state absorbs"):
        next_state(state, trigger, resume_to=S.PARSING)


def test_names_are_accepted_as_strings() -> None:
    assert next_state("parsing", "finish_parse") is S.PARSED  # type: ignore[arg-type]


def test_wait_reasons_match_the_guards_refusals() -> None:
    for refusal in (BudgetExceeded, CircuitOpen, RateLimited):
        assert WaitReason(refusal.reason).value == refusal.reason


@given(
    moves=st.lists(
        st.tuples(st.sampled_from(list(Trigger)), st.none() | st.sampled_from(list(JobState))),
        max_size=40,
    )
)
def test_random_triggers_never_leave_the_graph(
    moves: list[tuple[Trigger, JobState | None]],
) -> None:
    """Legal moves follow the table, illegal ones change nothing, terminal states absorb."""
    state, remembered = S.UPLOADED, None
    for trigger, resume_to in moves:
        if trigger is T.RESUME:
            # A store passes what `wait` remembered; sometimes pass a wrong one instead.
            resume_to = remembered if resume_to is None else resume_to
        if state == S.WAITING and trigger is T.RESUME:
            expected = resume_to if resume_to in WORKING else None
        else:
            expected = EDGES.get((state, trigger))
        if expected is None:
            with pytest.raises(IllegalTransition):
                next_state(state, trigger, resume_to)
            continue
        assert state not in TERMINAL
        dest = next_state(state, trigger, resume_to)
        assert dest is expected
        remembered = state if dest is S.WAITING else None
        state = dest


def test_the_shared_machine_is_safe_across_threads() -> None:
    failures: list[str] = []

    def hammer(state: JobState, trigger: Trigger, dest: JobState) -> None:
        for _ in range(300):
            got = next_state(state, trigger)
            if got is not dest:
                failures.append(f"{state} --{trigger}--> {got}, not {dest}")

    threads = [
        threading.Thread(target=hammer, args=(state, trigger, dest))
        for (state, trigger), dest in list(EDGES.items())[:8]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- what a transition does besides the state (state.store.rules) -------------------


def test_forward_moves_reset_attempts_and_error_and_keep_the_lease() -> None:
    job = apply(make_job(S.PARSING), T.FINISH_PARSE, {}, now=1_767_225_600.0)
    assert (job.state, job.version, job.step_attempts, job.last_error) == (S.PARSED, 4, 0, None)
    assert (job.lease_owner, job.lease_expires_at) == ("w1", 200.0)
    assert job.updated_at == "2026-01-01T00:00:00.000Z"


def test_wait_remembers_the_step_and_frees_the_lease() -> None:
    changes: JobChanges = {"not_before": 160.0, "wait_reason": WaitReason.RATE_LIMITED}
    job = apply(make_job(S.EMBEDDING), T.WAIT, changes, now=0.0)
    assert (job.state, job.resume_to, job.wait_reason) == (S.WAITING, S.EMBEDDING, "rate_limited")
    assert (job.not_before, job.step_attempts, job.last_error) == (160.0, 2, "boom")
    assert job.lease_owner is None
    assert job.lease_expires_at is None
    resumed = apply(job, T.RESUME, {}, now=0.0)
    assert (resumed.state, resumed.resume_to, resumed.wait_reason) == (S.EMBEDDING, None, None)


def test_fail_keeps_the_last_error_and_frees_the_lease() -> None:
    job = apply(make_job(S.PARSING), T.FAIL, {"failure_reason": "422 unparseable"}, now=0.0)
    assert (job.state, job.failure_reason, job.last_error) == (S.FAILED, "422 unparseable", "boom")
    assert job.lease_owner is None


def test_degraded_only_rises() -> None:
    job = apply(make_job(S.PARSING), T.FINISH_PARSE, {"degraded": True}, now=0.0)
    job = apply(job, T.CHUNK, {"degraded": False}, now=0.0)
    assert job.degraded


@pytest.mark.parametrize(
    ("trigger", "changes", "message"),
    [
        (T.WAIT, {"not_before": 1.0}, "wait needs wait_reason"),
        (T.WAIT, {"wait_reason": "budget"}, "wait needs not_before"),
        (T.WAIT, {"not_before": 1.0, "wait_reason": "lunch"}, "lunch"),
        (T.FAIL, {}, "fail needs failure_reason"),
        (T.FAIL, {"failure_reason": "  "}, "must say why"),
        (T.CHUNK, {"failure_reason": "x"}, "failure_reason is set only by fail"),
        (T.RESUME, {"not_before": 1.0}, "not_before is set only by wait"),
        (T.CHUNK, {"step_attempts": -1}, "step_attempts"),
        (T.CHUNK, {"colour": "red"}, "unknown job fields: colour"),
    ],
)
def test_changes_that_do_not_suit_the_trigger_are_refused(
    trigger: Trigger, changes: JobChanges, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_changes(trigger, changes)


def test_lease_rules() -> None:
    job = make_job(lease_owner="w1", lease_expires_at=200.0)
    assert lease_problem(job, "w1", 199.9) is None
    assert "lapsed" in (lease_problem(job, "w1", 200.0) or "")
    assert "w1 does" in (lease_problem(job, "w2", 100.0) or "")
    assert "leased by w1" in (lease_problem(job, None, 100.0) or "")
    assert lease_problem(job, None, 200.0) is None  # an operator may act once it lapsed
    assert "nobody does" in (lease_problem(make_job(lease_owner=None), "w1", 0.0) or "")


def test_job_ids_derive_from_the_content_hash() -> None:
    sha = "ab" * 32
    assert job_id_for(sha) == "job-" + sha[:32]
