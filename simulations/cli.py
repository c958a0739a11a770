"""The `breakwater` command: a demo of the pipeline at work, and a reader for event logs.

`breakwater demo` needs no keys and no network: it serves the emulators on
127.0.0.1, ingests the bundled samples through the real clients in HYBRID
mode while the embeddings API goes down and comes back, then backfills
(see `simulations.demo`).
`breakwater logs FILE` prints the breaker timelines of any Breakwater log.
`breakwater emulate` serves local OpenAI-embeddings and LlamaParse emulators
with a seeded fault plan, until Ctrl-C.
`breakwater ingest PATH...`, `worker`, `backfill`, `costs` and `serve` work on
the job store that --db or BREAKWATER_DB names: a SQLite file, or a PostgreSQL
database for a `postgresql://` URL (`simulations.commands`); each prints the
daily budgets in force first, and a provider without a key runs mock-only,
spending nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Sequence

from providers import PROVIDERS
from resilience.config import load_config
from resilience.errors import ConfigError
from resilience.events import DEFAULT_LOG_PATH, close_logging, configure_logging
from resilience.logreport import report_file
from simulations.commands.common import DEFAULT_DB, command_environment
from simulations.commands.jobs import (
    DEFAULT_LEASE_S,
    run_backfill,
    run_costs,
    run_ingest,
    run_worker,
)
from simulations.commands.serve import DEFAULT_WORKERS, run_serve
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


def _demo(args: argparse.Namespace) -> int:
    return run_demo(log=args.log, db=args.db, environ=os.environ)


def _database_command(args: argparse.Namespace) -> int:
    """Run ingest, worker, backfill, costs or serve with logging set up and closed."""
    environ = command_environment(os.environ, mode=getattr(args, "mode", None))
    configure_logging(args.log)
    try:
        match args.command:
            case "ingest":
                return run_ingest(
                    args.paths,
                    db=args.db,
                    environ=environ,
                    out=sys.stdout,
                    err=sys.stderr,
                    concurrency=args.concurrency,
                )
            case "worker":
                return run_worker(
                    db=args.db,
                    environ=environ,
                    out=sys.stdout,
                    concurrency=args.concurrency,
                    lease_s=args.lease_s,
                )
            case "backfill":
                return run_backfill(db=args.db, environ=environ, out=sys.stdout)
            case "costs":
                return run_costs(db=args.db, environ=environ, out=sys.stdout, export=args.export)
            case "serve":
                return run_serve(
                    host=args.host,
                    port=args.port,
                    db=args.db,
                    environ=environ,
                    out=sys.stdout,
                    workers=args.workers,
                )
        raise AssertionError(f"unknown command {args.command}")
    except ConfigError as exc:
        print(f"breakwater {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        close_logging()


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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

    def database_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--db",
            metavar="PATH|URL",
            help="SQLite file, sqlite:///PATH or postgresql://USER@HOST/DATABASE "
            f"(default: $BREAKWATER_DB or ./{DEFAULT_DB})",
        )
        command.add_argument(
            "--log",
            metavar="PATH",
            help=f"append events here ('-' for stderr; default: $BREAKWATER_LOG or "
            f"./{DEFAULT_LOG_PATH})",
        )
        command.set_defaults(run=_database_command)
        return command

    ingest = database_command(
        "ingest", "ingest your own files (parse, chunk, embed) with a progress bar and a summary"
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files to ingest")
    ingest.add_argument(
        "--mode",
        choices=("mock", "real", "hybrid"),
        help="how calls are served (default: $SERVICE_MODE or hybrid); "
        "a provider without a key is always mock-only",
    )
    ingest.add_argument(
        "--concurrency", type=_positive_int, default=4, help="jobs at once (default: 4)"
    )

    worker = database_command("worker", "work the database's jobs until SIGINT or SIGTERM")
    worker.add_argument(
        "--concurrency", type=_positive_int, default=4, help="jobs at once (default: 4)"
    )
    worker.add_argument("--mode", choices=("mock", "real", "hybrid"), help="as for ingest")
    worker.add_argument(
        "--lease-s",
        type=_positive_seconds,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help="how long a job's lease lasts unrenewed: a crashed worker's jobs are taken "
        f"again after this (default: {DEFAULT_LEASE_S:g})",
    )

    database_command("backfill", "redo mock-served steps of degraded jobs with the real providers")

    costs = database_command("costs", "spend today and this hour per provider, from the ledger")
    costs.add_argument("--export", choices=("csv", "json"), help="print CSV or JSON instead")

    serve_cmd = database_command("serve", "serve the HTTP API over the job database")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    serve_cmd.add_argument(
        "--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)"
    )
    serve_cmd.add_argument(
        "--workers",
        type=_non_negative_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="jobs the in-process worker holds at once; 0 serves the API only "
        f"(default: {DEFAULT_WORKERS})",
    )
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
