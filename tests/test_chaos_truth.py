"""The chaos oracle's ground-truth judges, on small hand-made histories.

Each judge reads only what the world saw (arrivals, transition times, lease
commits, clock jumps), so each is fed those directly here: a history that
keeps the rule passes, and the smallest one that breaks it is named.
"""

from __future__ import annotations

from resilience.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, Transition
from simulations.chaos.dead_letters import AuditRow, Evidence, dead_letter_problem
from simulations.chaos.leases import LeaseJudge, lease_problems
from simulations.chaos.oracle import LeaseEvent
from simulations.chaos.timing import Call, calls, calls_while_open, schedule_problems
from simulations.emulators.journal import Arrival

UPLOAD = "POST /api/v2/parse/upload"
LIST = "GET /api/v2/parse"
EMBED = "POST /v1/embeddings"
POLICY = BreakerPolicy(cooldown_s=30.0, cooldown_multiplier=2.0, cooldown_max_s=100.0)
EPOCH = 1_000_000.0


def arrival(at: float, ended: float, *, cid: str = "job-a", client: str = "0") -> Arrival:
    return Arrival(at, "openai", EMBED, cid, client, 200, ended, ended)


def change(source: str, dest: str, trigger: str, at: float) -> tuple[str, int, Transition]:
    return ("openai", 0, Transition("openai", source, dest, trigger, "", at, 0, 0, 0.0, None, None))


def call(started: float, ended: float, *, client: str = "0", route: str = EMBED) -> Call:
    return Call(client, "openai", "job-a", route, started, ended)


# -- calls ---------------------------------------------------------------------


def test_requests_sent_as_the_one_before_was_answered_are_one_call() -> None:
    found = calls(
        [
            arrival(0.0, 1.0),
            arrival(1.0, 2.0),  # sent the instant the first was answered: the same call
            arrival(1.0, 3.0, cid="job-b"),  # another job's: another call
            arrival(5.0, 6.0),  # after a pause: another call
            Arrival(7.0, "openai", EMBED, "job-a", "", 200, 8.0, 8.0),  # untagged: not ours
        ]
    )
    assert [(c.correlation_id, c.started, c.ended) for c in found] == [
        ("job-a", 0.0, 2.0),
        ("job-b", 1.0, 3.0),
        ("job-a", 5.0, 6.0),
    ]


# -- calls while open ------------------------------------------------------------

TRIPPED = [change(CLOSED, OPEN, "trip", 10.0), change(OPEN, HALF_OPEN, "half_open", 40.0)]


def test_a_call_inside_an_open_period_is_named_and_its_edges_are_not() -> None:
    policies = {("openai", 0): POLICY}
    edges = [call(10.0, 11.0), call(40.0, 41.0)]
    assert calls_while_open(edges, TRIPPED, policies, 100.0) == []
    [problem] = calls_while_open([call(25.0, 26.0)], TRIPPED, policies, 100.0)
    assert "reached it at 25 s, while open from 10 s to 40 s" in problem
    [queued] = calls_while_open([call(10.5, 11.0)], TRIPPED, policies, 100.0)
    assert "reached it at 10.5 s" in queued


def test_half_open_allows_the_policy_s_probes_at_once_each_within_its_timeout() -> None:
    policies = {("openai", 0): POLICY}  # one probe at a time, 30 s each
    one_after_another = [call(40.0, 45.0), call(45.0, 50.0)]
    assert calls_while_open(one_after_another, TRIPPED, policies, 100.0) == []
    [two] = calls_while_open([call(40.0, 45.0), call(41.0, 42.0)], TRIPPED, policies, 100.0)
    assert "2 probes in flight at once" in two
    [slow] = calls_while_open([call(40.0, float("inf"))], TRIPPED, policies, 80.0)
    assert "still out at 80 s, past its 30 s limit" in slow
    assert calls_while_open([call(40.0, float("inf"))], TRIPPED, policies, 60.0) == []


# -- breaker schedule ---------------------------------------------------------------


def test_open_periods_follow_the_cooldown_growing_on_reopen_capped_and_reset_on_close() -> None:
    policies = {("openai", 0): POLICY}
    history = [
        change(CLOSED, OPEN, "trip", 0.0),
        change(OPEN, HALF_OPEN, "half_open", 30.0),
        change(HALF_OPEN, OPEN, "reopen", 31.0),
        change(OPEN, HALF_OPEN, "half_open", 91.0),  # 60 s: doubled
        change(HALF_OPEN, OPEN, "reopen", 92.0),
        change(OPEN, HALF_OPEN, "half_open", 192.0),  # 100 s: capped
        change(HALF_OPEN, CLOSED, "close", 193.0),
        change(CLOSED, OPEN, "trip", 200.0),
        change(OPEN, HALF_OPEN, "half_open", 230.0),  # 30 s again after closing
    ]
    assert schedule_problems(history, policies, {}, 300.0) == []
    early = [*history[:3], change(OPEN, HALF_OPEN, "half_open", 61.0)]
    [problem] = schedule_problems(early, policies, {}, 300.0)
    assert "open 30 s from 31 s (reopen); the policy's cooldown was 60 s" in problem


def test_a_breaker_still_open_past_its_cooldown_is_named_unless_its_process_died() -> None:
    policies = {("openai", 0): POLICY}
    stuck = [change(CLOSED, OPEN, "trip", 0.0)]
    assert schedule_problems(stuck, policies, {}, 30.0) == []
    [problem] = schedule_problems(stuck, policies, {}, 90.0)
    assert "still open at 90 s" in problem
    assert schedule_problems(stuck, policies, {0: 20.0}, 90.0) == []
    forced = [change(CLOSED, OPEN, "force_open", 0.0)]
    assert schedule_problems(forced, policies, {}, 900.0) == []


# -- leases -----------------------------------------------------------------------


def lease(
    at: float, owner: str | None, *, epoch: float = EPOCH, renewal: bool = False
) -> LeaseEvent:
    expires = None if owner is None else epoch + at + 60.0
    return LeaseEvent(at, "job-a", owner, expires, epoch + at, renewal)


def test_calls_inside_the_process_s_own_live_lease_pass_and_others_are_named() -> None:
    history = [lease(0.0, "p0"), lease(40.0, "p0", renewal=True), lease(90.0, None)]
    judge = LeaseJudge(history, [(0.0, EPOCH)])
    jobs = {"job-a": "job-a"}
    inside = [call(1.0, 2.0), call(89.0, 90.0)]
    assert lease_problems(inside, jobs, judge) == []
    [released] = lease_problems([call(95.0, 96.0)], jobs, judge)
    assert "p0 called openai" in released
    assert "when nobody held it" in released
    [other] = lease_problems([call(10.0, 11.0, client="1")], jobs, judge)
    assert "p1 called" in other
    assert "p0 held it" in other
    lapsed = LeaseJudge([lease(0.0, "p0")], [(0.0, EPOCH)])
    [late] = lease_problems([call(61.0, 62.0)], jobs, lapsed)
    assert "its own lease lapsed" in late


def test_a_lease_a_clock_jump_lapsed_under_its_holder_excuses_its_calls() -> None:
    jumped = EPOCH + 3600.0
    history = [lease(0.0, "p0"), lease(70.0, "p1", epoch=jumped)]  # p1 takes it after the jump
    judge = LeaseJudge(history, [(0.0, EPOCH), (10.0, jumped)])
    jobs = {"job-a": "job-a"}
    assert lease_problems([call(20.0, 30.0), call(75.0, 80.0, client="1")], jobs, judge) == []
    no_jump = LeaseJudge([lease(0.0, "p0")], [(0.0, EPOCH)])
    assert lease_problems([call(70.0, 71.0)], jobs, no_jump)


def test_overlapping_calls_of_two_processes_for_one_job_are_named() -> None:
    history = [lease(0.0, "p0"), lease(5.0, None), lease(6.0, "p1")]
    judge = LeaseJudge(history, [(0.0, EPOCH)])
    [both] = lease_problems(
        [call(1.0, 30.0), call(7.0, 8.0, client="1")], {"job-a": "job-a"}, judge
    )
    assert "p0 and p1 both called for job-a" in both


def test_a_jump_that_lapsed_the_first_caller_s_lease_excuses_the_overlap() -> None:
    jumped = EPOCH + 3600.0
    history = [lease(0.0, "p0"), lease(12.0, "p1", epoch=jumped)]  # taken over after the jump
    jobs = {"job-a": "job-a"}
    still_running = [call(5.0, 30.0), call(12.0, 14.0, client="1")]
    judge = LeaseJudge(history, [(0.0, EPOCH), (10.0, jumped)])
    assert lease_problems(still_running, jobs, judge) == []
    # The old holder, still running after the jump, calls again while the new one does.
    old_holder_late = [call(12.0, 20.0, client="1"), call(13.0, 14.0)]
    assert lease_problems(old_holder_late, jobs, judge) == []
    # Without the jump the same takeover is a second worker on a leased job.
    unjumped = LeaseJudge([lease(0.0, "p0"), lease(12.0, "p1")], [(0.0, EPOCH)])
    assert lease_problems(still_running, jobs, unjumped)


def test_llamaparse_reads_need_no_lease() -> None:
    judge = LeaseJudge([], [(0.0, EPOCH)])
    poll = Call("0", "llamaparse", "job-a", LIST, 1.0, 2.0)
    upload = Call("0", "llamaparse", "job-a", UPLOAD, 1.0, 2.0)
    assert lease_problems([poll], {"job-a": "job-a"}, judge) == []
    assert lease_problems([upload], {"job-a": "job-a"}, judge)


# -- dead letters ---------------------------------------------------------------------


def row(source: str | None, dest: str, trigger: str, reason: str, at: float) -> AuditRow:
    return AuditRow(source, dest, trigger, reason, at)


def evidence(arrivals: list[Arrival]) -> Evidence:
    return Evidence(arrivals, [], [], {}, [], 240.0, lambda at: EPOCH + at)


def embedding_tries(reason: str) -> list[AuditRow]:
    rows = [row("chunked", "embedding", "start_embed", "embedding", 0.0)]
    for at in (10.0, 50.0):
        rows += [
            row("embedding", "waiting", "wait", f"{reason}: x", at),
            row("waiting", "embedding", "resume", "resumed", at + 30.0),
        ]
    return [*rows, row("embedding", "failed", "fail", "gave up", 100.0)]


def failed_embed(at: float) -> Arrival:
    return Arrival(at, "openai", EMBED, "job-a", "0", 503, at + 1.0, at + 1.0, "outage")


def test_a_healthy_job_may_fail_after_its_tries_each_failed_by_the_provider() -> None:
    served = evidence([failed_embed(5.0), failed_embed(45.0), failed_embed(95.0)])
    assert (
        dead_letter_problem("job-a", "a.md", "job-a", embedding_tries("retry"), 3, served) is None
    )


def test_a_try_without_a_failure_served_or_a_wait_for_other_reasons_is_not_a_try() -> None:
    two = evidence([failed_embed(5.0), failed_embed(95.0)])
    problem = dead_letter_problem("job-a", "a.md", "job-a", embedding_tries("retry"), 3, two)
    assert problem is not None
    assert "after 2 tries the providers failed" in problem
    all_served = evidence([failed_embed(5.0), failed_embed(45.0), failed_embed(95.0)])
    budget = embedding_tries("budget")
    assert dead_letter_problem("job-a", "a.md", "job-a", budget, 3, all_served) is not None
