"""The `breakwater` command: a demo of the breaker at work, and a reader for event logs.

`breakwater demo` needs no keys and no network: a scripted provider goes down
and comes back on a virtual-time loop, so three minutes of outage and
recovery run in a blink and come out the same every time for the same seed.
`breakwater logs FILE` prints the breaker timelines of any Breakwater log.
`breakwater emulate` serves local OpenAI-embeddings and LlamaParse emulators
with a seeded fault plan, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from providers import PROVIDERS
from resilience import (
    BreakerPolicy,
    Guard,
    ProviderError,
    RetryPolicy,
    Routed,
    Router,
    ServiceMode,
    Transition,
)
from resilience.config import load_config
from resilience.errors import ConfigError
from resilience.events import close_logging, configure_logging, emit
from resilience.logreport import analyze, render, report_file
from resilience.testing import run_virtual
from simulations.emulators import (
    DEFAULT_WEBHOOK_SECRET,
    Emulator,
    FaultPlan,
    FaultPlanError,
    RunningEmulator,
    load_plan,
    serve,
)

DEMO_LOG: Final = "breakwater-demo.log.jsonl"
"""Where the demo logs when neither --log nor BREAKWATER_LOG says otherwise."""

DEMO_PROVIDER: Final = "flaky"
DEMO_CAPABILITY: Final = "complete"
DEMO_SECONDS: Final = 180
"""One request per virtual second for this long."""
DEMO_OUTAGE: Final = (20.0, 80.0)
"""Virtual seconds during which the provider answers 503."""


@dataclass(slots=True)
class FlakyProvider:
    """A provider that answers after a short random latency, but 503s during its outage."""

    outage_start: float
    outage_end: float
    rng: random.Random

    async def __call__(self, prompt: str) -> str:
        await asyncio.sleep(self.rng.uniform(0.05, 0.25))
        if self.outage_start <= asyncio.get_running_loop().time() < self.outage_end:
            raise ProviderError(f"{DEMO_PROVIDER}: service unavailable", status=503)
        return f"real answer to {prompt}"


async def mock_complete(prompt: str) -> str:
    """The deterministic stand-in HYBRID serves while the provider cannot."""
    return f"mock answer to {prompt}"


def _print_transition(change: Transition) -> None:
    cooldown = f", next half-open in {change.cooldown_s:g}s" if change.cooldown_s else ""
    edge = f"{change.source} -> {change.dest}"
    print(f"  t={change.at:8.3f}s  {edge:<22} {change.trigger}: {change.reason}{cooldown}")


async def _demo_traffic(seed: int) -> list[Routed[str]]:
    """Send one request per virtual second through a HYBRID router; return what served each."""
    rng = random.Random(seed)
    guard = Guard(
        DEMO_PROVIDER,
        BreakerPolicy(failure_threshold=3, cooldown_s=10),
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.5, rng=rng),
    )
    guard.breaker.subscribe(_print_transition)
    router = Router(ServiceMode.HYBRID)
    real = FlakyProvider(*DEMO_OUTAGE, rng=rng)
    router.register(DEMO_CAPABILITY, real=real, mock=mock_complete, guard=guard)

    async def request(second: int) -> Routed[str]:
        await asyncio.sleep(second)
        routed: Routed[str] = await router.call(DEMO_CAPABILITY, f"request {second}")
        return routed

    # Bracketing events let the log report count the quiet closed time before and after.
    emit("demo.started", provider=DEMO_PROVIDER, seed=seed)
    results = await asyncio.gather(*(request(second) for second in range(DEMO_SECONDS)))
    real_served = sum(not result.degraded for result in results)
    emit("demo.finished", provider=DEMO_PROVIDER, real=real_served, mock=len(results) - real_served)
    return results


def _demo(args: argparse.Namespace) -> int:
    path: str = args.log or os.environ.get("BREAKWATER_LOG") or DEMO_LOG
    # Logs are appended to, and every run starts at the same virtual instant, so
    # the report reads only this run's lines: earlier runs would overlap it in time.
    offset = Path(path).stat().st_size if path != "-" and Path(path).is_file() else 0
    configure_logging(path)
    start_s, end_s = DEMO_OUTAGE
    print(
        f"Demo: provider {DEMO_PROVIDER!r} answers 503 from t={start_s:g}s to t={end_s:g}s; "
        f"one request per second for {DEMO_SECONDS}s of virtual time (seed {args.seed})."
    )
    print("Breaker transitions:")
    try:
        results = run_virtual(_demo_traffic(args.seed))
    finally:
        close_logging()
    served = Counter(result.path for result in results)
    reasons = Counter(result.reason for result in results if result.degraded)
    print()
    print(f"Requests: {len(results)} (real {served['real']}, mock {served['mock']})")
    by_reason = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "none"
    print(f"Fallbacks by reason: {by_reason}")
    print()
    if path == "-":
        print("Events went to standard error, so there is no log file to report on.")
        return 0
    print(f"Log report for this run (events in {path}):")
    with Path(path).open("rb") as log:
        log.seek(offset)
        lines = log.read().decode("utf-8", errors="replace").splitlines()
    print(render(analyze(lines)), end="")
    return 0


def _logs(args: argparse.Namespace) -> int:
    try:
        text = report_file(args.file)
    except OSError as exc:
        print(f"breakwater logs: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def _emulate(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.faults) if args.faults else FaultPlan()
    except OSError as exc:
        print(f"breakwater emulate: cannot read {args.faults}: {exc.strerror}", file=sys.stderr)
        return 2
    except FaultPlanError as exc:
        print(f"breakwater emulate: bad fault plan {args.faults}: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(
        seed=args.seed,
        faults=plan,
        webhook_secret=args.webhook_secret,
        openai_api_key=args.openai_api_key,
        llamaparse_api_key=args.llamaparse_api_key,
    )

    def announce(running: RunningEmulator) -> None:
        print(f"Breakwater emulators on {running.base_url} (seed {args.seed}); Ctrl-C stops them.")
        print(f"  OpenAI base URL:      {running.openai_base_url}")
        print(
            f"  LlamaParse base URL:  {running.llamaparse_base_url}"
            "  (/api/v1/parsing/..., alias /api/parsing/...)"
        )
        print(f"  Control:              {running.base_url}/_control/{{stats,faults,reset}}")
        sys.stdout.flush()

    try:
        asyncio.run(serve(emulator, args.host, args.port, on_start=announce))
    except OSError as exc:
        print(
            f"breakwater emulate: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breakwater", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="watch a breaker ride out a scripted outage (no keys, no network)",
        description="Run a scripted outage on virtual time and report the breaker's timeline.",
    )
    demo.add_argument(
        "--log",
        metavar="PATH",
        help=f"append events here ('-' for stderr; default: $BREAKWATER_LOG or ./{DEMO_LOG})",
    )
    demo.add_argument("--seed", type=int, default=7, help="seed for latencies and jitter")
    demo.set_defaults(run=_demo)

    logs = commands.add_parser(
        "logs",
        help="summarize a Breakwater event log",
        description="Print breaker timelines, time in state, trips, MTTR and fallbacks.",
    )
    logs.add_argument("file", metavar="FILE", help="a JSON-lines log written by Breakwater")
    logs.set_defaults(run=_logs)

    emulate = commands.add_parser(
        "emulate",
        help="serve local OpenAI-embeddings and LlamaParse emulators with a fault plan",
        description=(
            "Serve emulated OpenAI embeddings (/v1/...) and LlamaParse (/api/v1/parsing/...) "
            "on one port, faulting as the plan says, until SIGINT or SIGTERM."
        ),
    )
    emulate.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    emulate.add_argument(
        "--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)"
    )
    emulate.add_argument(
        "--faults", metavar="PLAN.json", help="fault plan (schema: simulations/emulators/README.md)"
    )
    emulate.add_argument(
        "--seed", type=int, default=0, help="seed for faults, ids and timings (default: 0)"
    )
    emulate.add_argument(
        "--webhook-secret",
        default=DEFAULT_WEBHOOK_SECRET,
        metavar="S",
        help="HMAC key for LlamaParse webhooks' LC-Signature",
    )
    emulate.add_argument(
        "--openai-api-key", metavar="KEY", help="accept only this key (default: any)"
    )
    emulate.add_argument(
        "--llamaparse-api-key", metavar="KEY", help="accept only this key (default: any)"
    )
    emulate.set_defaults(run=_emulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (argparse errors give 2)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 0
    try:
        load_config(os.environ, PROVIDERS)  # every provider's variables, checked at start
    except ConfigError as exc:
        print(f"breakwater: configuration error\n{exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # The reader went away (`breakwater demo | head`): not our failure.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
