"""Leases judged by who called the providers for a job when, not by the store's own check.

A job's correlation id goes out with every request made for it, and the
emulator's journal keeps it with the calling process and the time
(`timing.calls`). The store's lease history (`oracle.LeaseEvent`: every
grant, renewal and release as committed, expiries in wall time) says who
might call for the job when. Two rules, `leases`:

* a process's call for a job starts inside a live lease it holds on it
  (expiry after the wall time of the call's start, `World.wall_at`);
* no two processes' calls for one job overlap in time.

Two gaps are legitimate and left out, judged by routes and clock jumps:

* LlamaParse reads (job lists and job GETs): the remote-parse poller's
  calls, for jobs parked unleased while LlamaParse parses (the poller's
  claims on remote_parses rows fence those); the parse step's own `find`
  is such a read too.
* a holder's calls after a wall clock jump (`World.jump_clock`) lapsed its
  live lease under it, until it is granted the job again: it cannot renew,
  and it learns of the loss only at its next write.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from providers import LLAMAPARSE
from simulations.chaos.oracle import LeaseEvent
from simulations.chaos.timing import Call

UNFENCED_METHOD: Final = "GET "
"""LlamaParse routes with this method are reads the poller makes without a lease."""


def fenced(call: Call) -> bool:
    """Whether a lease must cover `call` (not a LlamaParse read)."""
    return not (call.provider == LLAMAPARSE and call.route.startswith(UNFENCED_METHOD))


class LeaseJudge:
    """Judges calls against one run's lease history and wall clock.

    `epochs` is `World.epochs`: (loop time, wall epoch from then on), one per jump.
    """

    def __init__(
        self, history: Sequence[LeaseEvent], epochs: Sequence[tuple[float, float]]
    ) -> None:
        self.by_job: defaultdict[str, list[LeaseEvent]] = defaultdict(list)
        for event in history:
            self.by_job[event.job_id].append(event)
        self.times = {job: [event.at for event in events] for job, events in self.by_job.items()}
        self.epochs = epochs
        self.jumps = [
            Jump(at, before + at, epoch + at) for (_, before), (at, epoch) in pairwise(epochs)
        ]

    def _earliest_wall(self, at: float) -> float:
        """The wall clock at loop time `at`, as read before any jump at that instant."""
        epoch = next((e for start, e in reversed(self.epochs) if start < at), self.epochs[0][1])
        return epoch + at

    def problem(self, call: Call, job_id: str) -> str | None:
        """Why `call` for `job_id` was not covered by a lease of its process, or None."""
        owner = f"p{call.client}"
        events, times = self.by_job.get(job_id, []), self.times.get(job_id, [])
        at, wall = call.started, self._earliest_wall(call.started)
        # Commits (and jumps) at the call's own instant may have come before or after it:
        # any state the lease was in at that instant will do.
        first, last = bisect.bisect_left(times, at), bisect.bisect_right(times, at)
        upto = events[:last]
        for lease in events[max(first - 1, 0) : last]:
            if lease.owner == owner and (lease.expires_at or 0.0) > wall:
                return None
        if self._lapsed_by_jump(upto, owner, at):
            return None
        held = upto[-1] if upto else None
        if held is None or held.owner is None:
            state = "nobody held it"
        elif held.owner == owner:
            state = f"its own lease lapsed at wall {held.expires_at:.3f}"
        else:
            state = f"{held.owner} held it"
        return (
            f"{owner} called {call.provider} ({call.route}) for {job_id} at {at:g} s "
            f"(wall {wall:.3f}) when {state}"
        )

    def jumped_from(self, job_id: str, client: str, at: float) -> bool:
        """Had a jump lapsed process `client`'s lease on `job_id` by loop time `at`?"""
        events = self.by_job.get(job_id, [])
        upto = events[: bisect.bisect_right(self.times.get(job_id, []), at)]
        return self._lapsed_by_jump(upto, f"p{client}", at)

    def _lapsed_by_jump(self, events: Sequence[LeaseEvent], owner: str, at: float) -> bool:
        """Did a jump lapse `owner`'s live lease, with no grant to it since, by `at`?"""
        mine = [i for i, event in enumerate(events) if event.owner == owner]
        if not mine:
            return False
        held = events[mine[-1]]  # its last grant or renewal
        ended = events[mine[-1] + 1].at if mine[-1] + 1 < len(events) else at
        return any(
            held.wall < jump.wall_after
            and held.at <= jump.at <= min(ended, at)
            and (held.expires_at or 0.0) > jump.wall_before
            for jump in self.jumps
        )


@dataclass(frozen=True, slots=True)
class Jump:
    """A wall clock jump at loop time `at`, from `wall_before` to `wall_after`."""

    at: float
    wall_before: float
    wall_after: float


def lease_problems(
    found: Sequence[Call],
    job_of: Mapping[str, str],
    judge: LeaseJudge,
) -> list[str]:
    """`leases` (module doc): each uncovered call, and each overlap of two processes' calls."""
    problems = []
    covered: defaultdict[str, list[Call]] = defaultdict(list)
    for call in found:
        job_id = job_of.get(call.correlation_id)
        if job_id is None or not fenced(call):
            continue
        problem = judge.problem(call, job_id)
        if problem is not None:
            problems.append(problem)
        else:
            covered[job_id].append(call)
    for job_id, made in covered.items():
        problems += _overlaps(job_id, made, judge)
    return problems


def _overlaps(job_id: str, made: Sequence[Call], judge: LeaseJudge) -> list[str]:
    """Calls by two processes for `job_id` in flight at once (in order of start), save
    where a jump had lapsed either caller's lease when the later call began."""
    problems = []
    latest: dict[str, Call] = {}  # per process, its call that ends last so far
    for call in made:
        for client, other in latest.items():
            if (
                client != call.client
                and other.ended > call.started
                and not judge.jumped_from(job_id, client, call.started)
                and not judge.jumped_from(job_id, call.client, call.started)
            ):
                problems.append(
                    f"p{other.client} and p{call.client} both called for {job_id}: "
                    f"{other.route} from {other.started:g} s to {other.ended:g} s, "
                    f"{call.route} from {call.started:g} s"
                )
        mine = latest.get(call.client)
        if mine is None or call.ended > mine.ended:
            latest[call.client] = call
    return problems


__all__ = ["LeaseJudge", "fenced", "lease_problems"]
