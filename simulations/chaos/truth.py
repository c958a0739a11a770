"""The timing, lease and dead-letter invariants from ground truth, over one `World`.

Gathers what the world saw (the emulator's arrival journal, the breakers'
transition times, the store's lease history and audit rows, the clock
jumps and the deaths of processes) and hands it to the judges: `timing`
for breakers, `leases`, `dead_letters`. Every problem comes back as an
assertion message starting `ground truth: <invariant>: `.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

from providers import OPENAI
from resilience.breaker import BreakerPolicy
from simulations.chaos.dead_letters import AuditRow, Evidence, dead_letter_problem, loop_time
from simulations.chaos.leases import LeaseJudge, lease_problems
from simulations.chaos.pacing import Answered, early_after_429, over_rate
from simulations.chaos.timing import calls, calls_while_open, schedule_problems
from simulations.chaos.world import JOB_TIMEOUT_S, World
from state.machine import Job


def _policies(world: World) -> dict[tuple[str, int], BreakerPolicy]:
    return {
        (provider, process.number): witness.breaker.policy
        for process in (*world.processes.values(), *world.retired)
        for provider, witness in process.witnesses.items()
    }


def _jumps(world: World) -> list[tuple[float, float]]:
    """Each wall clock jump: (loop time, seconds added)."""
    return [(at, epoch - before) for (_, before), (at, epoch) in pairwise(world.epochs)]


def timing_problems(world: World, jobs: list[Job]) -> list[str]:
    """`calls while open`, `breaker schedule` and `leases`, as assertion messages."""
    found = calls(world.emulator.arrivals())
    policies = _policies(world)
    problems = [
        f"ground truth: calls while open: {problem}"
        for problem in calls_while_open(found, world.transitions, policies, world.now)
    ]
    problems += [
        f"ground truth: breaker schedule: {problem}"
        for problem in schedule_problems(world.transitions, policies, world.deaths, world.now)
    ]
    judge = LeaseJudge(world.store.leases, world.epochs)
    job_of = {job.correlation_id: job.id for job in jobs if job.correlation_id}
    problems += [
        f"ground truth: leases: {problem}" for problem in lease_problems(found, job_of, judge)
    ]
    problems += [f"ground truth: pacing: {problem}" for problem in pacing_problems(world)]
    return problems


def pacing_problems(world: World) -> list[str]:
    """Each OpenAI-limited process's requests, as OpenAI saw them arrive: never more than
    its RPM bucket grants, and none while a 429 answered to it still asked it to wait."""
    rpm, tpm = world.features.rpm, world.features.tpm
    if rpm is None and tpm is None:
        return []  # no bucket: a 429 is waited out by the job, not by the process
    mine: dict[str, list[Answered]] = {}
    for arrival in world.emulator.arrivals():
        if arrival.provider == OPENAI and arrival.client:
            mine.setdefault(arrival.client, []).append(
                Answered(
                    arrival.received_at, arrival.answered_at, arrival.status, arrival.retry_after_s
                )
            )
    problems = []
    for client, requests in sorted(mine.items()):
        found = [early_after_429(requests)]
        if rpm is not None:
            found.append(over_rate([r.at for r in requests], rpm, rpm / 60.0))
        problems += [f"p{client}: {problem}" for problem in found if problem is not None]
    return problems


def dead_letter_problems(world: World, jobs: Mapping[str, Job], healthy: list[str]) -> list[str]:
    """`dead letters` for the healthy jobs among `jobs` that ended failed."""
    evidence = Evidence(
        arrivals=world.emulator.arrivals(),
        parse_jobs=world.emulator.llamaparse_jobs(),
        leases=world.store.leases,
        deaths=world.deaths,
        jump_times=[at for at, _ in _jumps(world)],
        timeout_s=JOB_TIMEOUT_S,
        wall_at=world.wall_at,
    )
    max_attempts = next(iter((*world.processes.values(), *world.retired))).worker.max_attempts
    problems = []
    for job_id in healthy:
        job = jobs[job_id]
        rows = [
            AuditRow(
                None if event.source is None else event.source.value,
                event.dest.value,
                event.trigger,
                event.reason,
                loop_time(world.epochs, event.at),
            )
            for event in world.run(world.store.history(job_id))
        ]
        problem = dead_letter_problem(
            job_id, job.filename, job.correlation_id or job_id, rows, max_attempts, evidence
        )
        if problem is not None:
            problems.append(f"ground truth: dead letters: {problem}")
    return problems


__all__ = ["dead_letter_problems", "timing_problems"]
