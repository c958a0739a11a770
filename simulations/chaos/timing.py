"""Breakers judged by when calls reached the providers, not by what the breakers say.

The breakers' own account (their state when a call started, their logged
cooldowns) is what a bug in them would get wrong too. Here the emulator's
arrival journal (`simulations.emulators.journal`) says which process's
requests reached which provider when, and only the times of the logged
transitions are taken from the breakers, on the loop clock:

* `calls while open`: no call of process p reached provider X strictly
  inside an open period of p's breaker for X; and among the calls that
  started while it was half-open, never more than `half_open_max_calls` in
  flight at once, none outliving `probe_timeout_s` (the guard admits probes
  by counted permits, each bounded by that timeout, and a retry is admitted
  again like any call).
* `breaker schedule`: each open period lasts the cooldown the policy gives,
  recomputed here: `cooldown_s`, times `cooldown_multiplier` for each reopen
  from half-open in a row, at most `cooldown_max_s`, back to `cooldown_s`
  once closed. A forced open has no schedule and is left out.

A call is what the journal shows of one guarded call: its requests from one
process, for one correlation id, to one provider, each sent the instant the
one before was answered (`calls`). A call admitted while closed may send its
next request after the breaker opened under it (a job list's next page);
that is the same call going on, not a new one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from resilience.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, Transition
from simulations.emulators.journal import UNTAGGED, Arrival

TOLERANCE_S: Final = 1e-6
"""Float slack for times on the loop clock that should be equal."""
LATE_GRACE_S: Final = 1.0
"""How long past its cooldown a breaker may still be seen open at a check (the timer
due at the check's own instant may not have run yet)."""

Breakers = Mapping[tuple[str, int], BreakerPolicy]
"""(provider, process number) -> the policy of that process's breaker for it."""
Transitions = Sequence[tuple[str, int, Transition]]


@dataclass(frozen=True, slots=True)
class Call:
    """One process's back-to-back requests for one correlation id to one provider."""

    client: str
    provider: str
    correlation_id: str
    route: str
    """The first request's route."""
    started: float
    ended: float
    """When its last request ended; infinity while one is in flight."""


def calls(arrivals: Iterable[Arrival]) -> list[Call]:
    """The tagged arrivals grouped into calls (module doc), in order of their start."""
    chains: list[list[Arrival]] = []
    answered: dict[tuple[str, str, str, float], int] = {}
    for arrival in arrivals:
        if arrival.client == UNTAGGED:
            continue
        key = (arrival.client, arrival.provider, arrival.correlation_id)
        index = answered.pop((*key, arrival.received_at), None)
        if index is None:
            index = len(chains)
            chains.append([arrival])
        else:
            chains[index].append(arrival)
        if arrival.answered_at is not None:
            answered[(*key, arrival.answered_at)] = index
    return [
        Call(
            first.client,
            first.provider,
            first.correlation_id,
            first.route,
            first.received_at,
            math.inf if chain[-1].ended_at is None else chain[-1].ended_at,
        )
        for chain in chains
        for first in chain[:1]
    ]


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch of one breaker's life in one state, on the loop clock."""

    provider: str
    number: int
    state: str
    trigger: str
    """The trigger that entered it."""
    start: float
    end: float
    """When it was left; infinity while it lasts."""
    then: str | None
    """The state it was left for; None while it lasts."""


def periods(transitions: Transitions) -> list[Period]:
    """Each breaker's periods after its first transition (before it, it was closed)."""
    by_breaker: defaultdict[tuple[str, int], list[Transition]] = defaultdict(list)
    for provider, number, transition in transitions:
        by_breaker[(provider, number)].append(transition)
    found = []
    for (provider, number), changes in by_breaker.items():
        following: list[Transition | None] = [*changes[1:], None]
        found += [
            Period(
                provider,
                number,
                change.dest,
                change.trigger,
                change.at,
                math.inf if then is None else then.at,
                None if then is None else then.dest,
            )
            for change, then in zip(changes, following, strict=True)
        ]
    return found


def calls_while_open(
    found: Sequence[Call],
    transitions: Transitions,
    policies: Breakers,
    now: float,
) -> list[str]:
    """`calls while open` (module doc): what broke it, one line each."""
    by_caller: defaultdict[tuple[str, str], list[Call]] = defaultdict(list)
    for call in found:
        by_caller[(call.client, call.provider)].append(call)
    problems = []
    for period in periods(transitions):
        if period.state not in (OPEN, HALF_OPEN):
            continue
        caller = (str(period.number), period.provider)
        name = f"p{period.number} {period.provider}"
        if period.state == OPEN:
            problems += [
                f"{name}: a call ({call.route}, {call.correlation_id or 'no id'}) reached it at "
                f"{call.started:g} s, while open from {period.start:g} s to {period.end:g} s"
                for call in by_caller[caller]
                if period.start < call.started < period.end
            ]
            continue
        policy = policies[(period.provider, period.number)]
        probes = [c for c in by_caller[caller] if period.start <= c.started < period.end]
        most = _most_at_once(probes)
        if most > policy.half_open_max_calls:
            problems.append(
                f"{name}: {most} probes in flight at once while half-open from "
                f"{period.start:g} s (the policy allows {policy.half_open_max_calls})"
            )
        problems += [
            f"{name}: a probe ({probe.route}) started at {probe.started:g} s was still out at "
            f"{min(probe.ended, now):g} s, past its {policy.probe_timeout_s:g} s limit"
            for probe in probes
            if min(probe.ended, now) - probe.started > policy.probe_timeout_s + TOLERANCE_S
        ]
    return problems


def _most_at_once(found: Sequence[Call]) -> int:
    # An end at the instant another call starts frees its place first.
    edges = sorted([(call.started, 1) for call in found] + [(call.ended, -1) for call in found])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def schedule_problems(
    transitions: Transitions, policies: Breakers, deaths: Mapping[int, float], now: float
) -> list[str]:
    """`breaker schedule` (module doc): each open period against the recomputed cooldown."""
    problems = []
    cooldowns: dict[tuple[str, int], float] = {}
    for period in periods(transitions):
        breaker = (period.provider, period.number)
        policy = policies[breaker]
        cooldown = cooldowns.get(breaker, policy.cooldown_s)
        if period.state == CLOSED:
            cooldown = policy.cooldown_s
        elif period.state == OPEN and period.trigger == "reopen":
            cooldown = min(cooldown * policy.cooldown_multiplier, policy.cooldown_max_s)
        cooldowns[breaker] = cooldown
        if period.state != OPEN or period.trigger == "force_open":
            continue
        name = f"p{period.number} {period.provider}"
        if math.isinf(period.end):
            seen_until = deaths.get(period.number, now)
            if seen_until - period.start > cooldown + LATE_GRACE_S:
                problems.append(
                    f"{name}: open since {period.start:g} s, still open at {seen_until:g} s, "
                    f"past its {cooldown:g} s cooldown"
                )
            continue
        lasted = period.end - period.start
        if period.then == HALF_OPEN and abs(lasted - cooldown) > TOLERANCE_S:
            problems.append(
                f"{name}: open {lasted:g} s from {period.start:g} s ({period.trigger}); "
                f"the policy's cooldown was {cooldown:g} s"
            )
    return problems


__all__ = ["Call", "Period", "calls", "calls_while_open", "periods", "schedule_problems"]
