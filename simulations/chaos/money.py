"""Our budget judged by what the providers billed, on every day and after crashes.

The budget ledger and the usage logs are written by the code under test; the
emulators' records (`Emulator.openai_bills`, `Emulator.llamaparse_jobs`) are
what the providers charged. Three checks:

* billed spend: the ledger's attempted spend for OpenAI, over every day key
  it ever held (the swept ones too), is at least what OpenAI billed,
  answers that were lost or garbled included: a charge we cannot see
  answered (a timeout, a dropped connection) must stay charged.
* daily budget: on each wall-clock day (the processes' clock, which
  `clock_jump` moves), what the providers billed never exceeded the largest
  budget the day had. An OpenAI request is counted on the day it reached
  the provider, which is the day its reservation was made: the guard
  reserves just before it sends, and the wall clock only jumps between
  steps. A LlamaParse job bills the credits it reports once COMPLETED (a
  FAILED or CANCELLED job bills nothing), counted on the day of the
  reservation it was uploaded under (its remote parse row's, found by the
  job's name), else on the day it was made: an intent reserved before
  midnight may be uploaded after it, by a process that resumed it.
* ledger vs usage: once quiet, the ledger holds exactly what the usage logs
  of every process (the killed ones' too) recorded as settled or kept, over
  every day, plus the reservations of remote-parse intents still open (an
  intent whose job ended before anyone resumed it keeps its estimate and
  has no outcome to log). A killed process may have been stopped in a
  window (`windows`): a remote parse's documented ones ("reserved, before
  the intent"; "stored, before settling"), or the budget's own between a
  ledger write and the usage log's; its estimate then stays in the ledger
  with no usage record, so exactly those windows' amounts may be missing
  from the logs, in any combination.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from providers import LLAMAPARSE, OPENAI
from providers.llamaparse.settings import LlamaParseConfig
from resilience.clock import iso_utc
from simulations.chaos.ground_truth import row_name
from simulations.chaos.windows import BUDGET_WINDOWS, sums
from state.store.remote import RemoteState

if TYPE_CHECKING:
    from simulations.chaos.world import World

USD_TOLERANCE: Final = 1e-7
"""Usage logs round each hour's dollars to 9 places; the cheapest call costs about 1e-6."""
BILLED: Final = "ground truth: billed spend: "
DAILY: Final = "ground truth: daily budget: "
EXACT: Final = "ground truth: ledger vs usage: "


def charged(world: World, provider: str) -> float:
    """Every dollar the budget ledger ever charged `provider`: all its day keys, swept too."""
    _, usd, _ = world.run(world.store.remote_accounts(provider, lambda: None))
    return usd


def billed_spend_problem(world: World) -> str | None:
    """The ledger's OpenAI spend is below what OpenAI billed (module doc)."""
    bills = world.emulator.openai_bills()
    billed = sum(bill.usd for bill in bills)
    attempted = charged(world, OPENAI)
    if attempted >= billed - USD_TOLERANCE:
        return None
    unanswered = sum(bill.usd for bill in bills if bill.outcome != "answered")
    return (
        f"{BILLED}openai billed ${billed:.9f} (${unanswered:.9f} of it for answers lost or "
        f"garbled), the ledger charged only ${attempted:.9f}"
    )


class Calendar:
    """The processes' wall-clock days, as the world's clock jumps moved them.

    Each budget change is noted with the day it was made on. A jump moves the
    wall clock at one loop instant, so a loop time alone cannot say whether
    something at that instant came before the jump: each jump notes how many
    bills and jobs the providers had made by then instead.
    """

    def __init__(self, world: World) -> None:
        self._changes: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
        self._epochs: list[tuple[int, int, float]] = [(0, 0, world.loop.wall_epoch)]

    def budget(self, world: World, provider: str, usd: float) -> None:
        """`provider`'s daily budget is `usd` from now on."""
        self._changes[provider].append((_iso_day(world.loop.wall_epoch + world.now), usd))

    def jumped(self, world: World) -> None:
        """The wall clock just jumped (`World.jump_clock`)."""
        emulator = world.emulator
        made = (len(emulator.openai_bills()), len(emulator.llamaparse_jobs()))
        self._epochs.append((*made, world.loop.wall_epoch))

    def bill_day(self, number: int, at: float) -> str:
        """The day of OpenAI's bill `number` (from 0), billed at loop time `at`."""
        return _iso_day(next(e for n, _, e in reversed(self._epochs) if n <= number) + at)

    def job_day(self, number: int, at: float) -> str:
        """The day of LlamaParse's job `number` (from 0), made at loop time `at`."""
        return _iso_day(next(e for _, n, e in reversed(self._epochs) if n <= number) + at)

    def most(self, provider: str, day: str) -> float:
        """The largest budget in force at any moment of `day` (a UTC date)."""
        before: float | None = None
        during: list[float] = []
        for changed_on, usd in self._changes[provider]:
            if changed_on < day:
                before = usd
            elif changed_on == day:
                during.append(usd)
        return max([*during, *([] if before is None else [before])], default=0.0)


def _iso_day(wall: float) -> str:
    return iso_utc(wall)[:10]


def billed_by_day(world: World, calendar: Calendar) -> dict[tuple[str, str], float]:
    """(provider, UTC day) -> dollars the providers billed that day."""
    days: defaultdict[tuple[str, str], float] = defaultdict(float)
    for number, bill in enumerate(world.emulator.openai_bills()):
        days[OPENAI, calendar.bill_day(number, bill.at)] += bill.usd
    price = LlamaParseConfig.from_env(world.environ).usd_per_credit
    reserved_on = {
        row.name: _iso_day(float(start))
        for row in world.run(world.store.remote_rows())
        for kind, _, start, _ in (row.reservation or {}).get("periods", [])
        if kind == "day"
    }
    for number, job in enumerate(world.emulator.llamaparse_jobs()):
        if job.cancelled_at is None and job.outcome == "COMPLETED":
            day = reserved_on.get(row_name(job.name) or "")
            days[LLAMAPARSE, day or calendar.job_day(number, job.created_at)] += job.credits * price
    return days


def daily_budget_problems(world: World, calendar: Calendar) -> list[str]:
    return [
        f"{DAILY}{provider} billed ${usd:.6f} on {day}, over its largest budget that day, "
        f"${most:.6f}"
        for (provider, day), usd in sorted(billed_by_day(world, calendar).items())
        if usd > (most := calendar.most(provider, day)) + USD_TOLERANCE
    ]


def _logged(world: World, provider: str) -> float:
    """What every process's usage log recorded for `provider`, over all its hours."""
    capability_logs = {
        id(budget.usage): budget.usage
        for process in (*world.processes.values(), *world.retired)
        for guard in (process.pipeline.guard(c) for c in process.pipeline.capabilities)
        if (budget := guard.budget) is not None
    }

    async def summaries() -> list[dict[str, Any]]:
        # On the loop, where the logs' clock (wall_time) is the virtual one.
        return [log.summary() for log in capability_logs.values()]

    total = 0.0
    for summary in world.run(summaries()):
        stats = summary["providers"].get(provider)
        if stats is not None:
            total += float(stats["cost_usd"])
    return total


def ledger_usage_problems(world: World, when: str) -> list[str]:
    """The ledger and the usage logs disagree beyond what the windows killed tasks were
    stopped in, and the intents still open, account for (module doc)."""
    found = []
    rows = world.run(world.store.remote_rows())
    intents = sum(
        float((row.reservation or {}).get("cost", 0.0))
        for row in rows
        if row.status is RemoteState.INTENT
    )
    for provider in (OPENAI, LLAMAPARSE):
        attempted, logged = charged(world, provider), _logged(world, provider)
        held = intents if provider == LLAMAPARSE else 0.0
        windows = [
            leak
            for leak in world.leaks
            if leak.scope == provider and (leak.documented or leak.what in BUDGET_WINDOWS)
        ]
        allowed = sums(windows)
        if not any(abs(attempted - logged - held - usd) < USD_TOLERANCE for usd in allowed):
            found.append(
                f"{EXACT}{when}: {provider} ledger ${attempted:.9f}, usage logs "
                f"${logged:.9f}, open intents ${held:.9f}, and windows killed tasks were in "
                f"allow any of {_few(allowed)}"
            )
    return found


def _few(amounts: Iterable[float]) -> list[float]:
    return sorted(amounts)[:8]


__all__ = [
    "BILLED",
    "DAILY",
    "EXACT",
    "Calendar",
    "billed_by_day",
    "billed_spend_problem",
    "charged",
    "daily_budget_problems",
    "ledger_usage_problems",
]
