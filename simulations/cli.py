"""The `breakwater` console script: the production commands plus `demo` and `emulate`.

`breakwater demo` needs no keys and no network: it serves the emulators on
127.0.0.1, ingests the bundled samples through the real clients in HYBRID
mode while the embeddings API goes down and comes back, then backfills
(see `simulations.demo`).
`breakwater emulate` serves local OpenAI-embeddings and LlamaParse emulators
with a seeded fault plan, until Ctrl-C.
The production commands (`ingest`, `worker`, `backfill`, `costs`, `serve`,
`logs`) live in `state.app.cli`; this module only adds the two that need the
emulators.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from simulations.demo import DEMO_DB, DEMO_LOG, run_demo
from simulations.emulators import (
    DEFAULT_WEBHOOK_SECRET,
    Emulator,
    FaultPlan,
    FaultPlanError,
    RunningEmulator,
    load_plan,
    serve,
)
from state.app import cli


def _demo(args: argparse.Namespace) -> int:
    return run_demo(log=args.log, db=args.db, environ=os.environ)


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
            "  (v2: /api/v2/parse, /api/v1/beta/files; v1: /api/v1/parsing/..., /api/parsing/...)"
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


def _add_demo_and_emulate(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    demo = commands.add_parser(
        "demo",
        help="ingest the samples through local emulators, ride out an outage, backfill",
        description=(
            "Serve the emulators on 127.0.0.1, ingest the bundled samples in HYBRID mode "
            "through the real clients with an embeddings outage in the middle, then backfill. "
            "No keys, no network, no money."
        ),
    )
    demo.add_argument(
        "--log",
        metavar="PATH",
        help=f"append events here ('-' for stderr; default: $BREAKWATER_LOG or ./{DEMO_LOG})",
    )
    demo.add_argument(
        "--db", metavar="PATH", help=f"SQLite file, recreated each run (default: ./{DEMO_DB})"
    )
    demo.set_defaults(run=_demo)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (argparse errors give 2)."""
    return cli.main(argv, description=__doc__, extend=_add_demo_and_emulate)


if __name__ == "__main__":
    raise SystemExit(main())
