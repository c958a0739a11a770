"""The production `breakwater` command: the job store's commands and the log reader.

`breakwater ingest PATH...`, `worker`, `backfill`, `costs` and `serve` work on
the job store that --db or BREAKWATER_DB names: a SQLite file, or a PostgreSQL
database for a `postgresql://` URL; each prints the daily budgets in force
first, and a provider without a key runs mock-only, spending nothing.
`breakwater logs FILE` prints the breaker timelines of any Breakwater log.

`simulations.cli` adds `demo` and `emulate`, which need the emulators, through
`main`'s `extend` hook; the console script is that one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

from providers import PROVIDERS
from resilience.config import load_config
from resilience.errors import ConfigError
from resilience.events import (
    DEFAULT_LOG_PATH,
    close_logging,
    configure_logging,
    remove_default_handler,
)
from resilience.logreport import report_file
from state.app.common import DEFAULT_DB, command_environment
from state.app.jobs import (
    DEFAULT_LEASE_S,
    run_backfill,
    run_costs,
    run_ingest,
    run_worker,
)
from state.app.serve import DEFAULT_WORKERS, run_serve


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
                    lease_s=args.lease_s,
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


def _lease_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--lease-s",
        type=_positive_seconds,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help="how long a job's lease lasts unrenewed: a crashed process's jobs are taken "
        f"again after this (default: {DEFAULT_LEASE_S:g})",
    )


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


def parser(
    description: str | None = None,
    extend: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None,
) -> argparse.ArgumentParser:
    """The argument parser: the production commands, and whatever `extend` adds first."""
    parser = argparse.ArgumentParser(prog="breakwater", description=description or __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if extend is not None:
        extend(commands)

    logs = commands.add_parser(
        "logs",
        help="summarize a Breakwater event log",
        description="Print breaker timelines, time in state, trips, MTTR and fallbacks.",
    )
    logs.add_argument("file", metavar="FILE", help="a JSON-lines log written by Breakwater")
    logs.set_defaults(run=_logs)

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
    _lease_argument(ingest)

    worker = database_command("worker", "work the database's jobs until SIGINT or SIGTERM")
    worker.add_argument(
        "--concurrency", type=_positive_int, default=4, help="jobs at once (default: 4)"
    )
    worker.add_argument("--mode", choices=("mock", "real", "hybrid"), help="as for ingest")
    _lease_argument(worker)

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


def main(
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    extend: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None,
) -> int:
    """Run the command line and return its exit code (argparse errors give 2).

    The command owns its process, so loguru's default stderr handler goes:
    events are JSON lines (to standard error with BREAKWATER_LOG=-), never
    also loguru's text.
    """
    remove_default_handler()
    try:
        args = parser(description, extend).parse_args(argv)
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
