"""Makespan over loopback: `breakwater ingest` against `breakwater emulate`, each its own process.

The virtual-time benchmark (`simulations.bench.makespan`, whose docstring
defines the bound) leaves out what only real time shows: the interpreter's
start, the HTTP stack, SQLite's fsyncs, two processes sharing the CPU. Here
`breakwater emulate` serves both providers on 127.0.0.1 with LlamaParse's
parse time fixed at `PARSE_S` (10 s), and `breakwater ingest` takes `DOCS`
(16) distinct documents at its default settings: the mode (hybrid, keys
set, so every call is real), concurrency 4, the budgets' $1 default, v2
with its 50 uploads per 10 s. The bound is 10 + 16 / 5 = 13.2 s.

The makespan is the command's wall time, from its launch to its exit: what
a user waits, interpreter start and the summary included. The store's own
span (first job created to last job complete) is printed beside it. Uploads
and embedded tokens are the emulator's counts (`GET /_control/stats`).

Run it with `python -m simulations.bench.makespan_loopback [--docs N] [--parse-s S]
[--json PATH]`. Missed targets are printed, not fatal. Wall time is the thing
measured, so this module reads `time.perf_counter`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import orjson

from simulations.bench.makespan import (
    DEFAULT_SEED,
    Run,
    jobs_span,
    makespan_plan,
    measured,
    render,
    write_json,
)
from simulations.bench.pipeline import emulator_environment, make_corpus
from simulations.emulators import plan_to_json
from state import SqliteJobStore
from state.store.rules import job_id_for

DOCS: Final = 16
PARSE_S: Final = 10.0
ROOT: Final = Path(__file__).resolve().parents[2]
_SETTINGS: Final = ("OPENAI_", "LLAMA_CLOUD_", "BREAKWATER_", "SERVICE_MODE")
"""Variables left out of the children's environment, so they run at the defaults."""
_BANNER: Final = "Breakwater emulators on "


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS)}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever is installed
    return env


def _breakwater(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", *args]


def _base_url(emulator: subprocess.Popen[str]) -> str:
    """The root URL `breakwater emulate` announces on its first line."""
    assert emulator.stdout is not None
    line = emulator.stdout.readline()
    if not line.startswith(_BANNER):
        raise RuntimeError(f"breakwater emulate said {line!r}, exit code {emulator.poll()}")
    return line.removeprefix(_BANNER).split()[0]


def _stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/_control/stats", timeout=10) as answer:
        stats: dict[str, Any] = orjson.loads(answer.read())
    return stats


async def _span(db: Path, ids: list[str]) -> float:
    async with await SqliteJobStore.open(db) as store:
        return await jobs_span(store, ids)


def loopback(docs: int = DOCS, parse_s: float = PARSE_S, seed: int = DEFAULT_SEED) -> Run:
    """`docs` documents through `breakwater ingest` against `breakwater emulate`.

    Raises `RuntimeError` when the command fails or a job does not complete.
    """
    plan = makespan_plan(parse_s, seed)
    corpus = make_corpus(docs, seed)
    with tempfile.TemporaryDirectory(prefix="breakwater-loopback-") as tmp:
        root = Path(tmp)
        plan_path, db = root / "plan.json", root / "jobs.db"
        plan_path.write_bytes(orjson.dumps(plan_to_json(plan)))
        files = []
        for document in corpus:
            (root / document.filename).write_bytes(document.content)
            files.append(document.filename)
        env = _environment()
        emulate = _breakwater("emulate", "--port", "0", "--faults", str(plan_path))
        emulator = subprocess.Popen(emulate, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        try:
            base_url = _base_url(emulator)
            ingest = _breakwater("ingest", "--db", str(db), "--log", "events.jsonl", *files)
            started = time.perf_counter()  # clock-ok: benchmark
            done = subprocess.run(
                ingest,
                env={**env, **emulator_environment(base_url)},
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10 * (parse_s + docs + 60),
                check=False,
            )
            makespan_s = time.perf_counter() - started  # clock-ok: benchmark
            stats = _stats(base_url)
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"breakwater ingest exited {done.returncode}: {done.stdout[-2000:]}")
        ids = [job_id_for(hashlib.sha256(document.content).hexdigest()) for document in corpus]
        span = asyncio.run(_span(db, ids))
    return measured(
        "loopback",
        plan,
        docs=docs,
        makespan_s=makespan_s,
        jobs_s=span,
        wall_s=makespan_s,
        stats=stats,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.makespan_loopback",
        description="Wall makespan of `breakwater ingest` against `breakwater emulate` over "
        "loopback, as a ratio to the providers' bound.",
    )
    parser.add_argument("--docs", type=int, default=DOCS, help="documents to ingest")
    parser.add_argument("--parse-s", type=float, default=PARSE_S, help="LlamaParse parse time")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="corpus and emulator seed")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    run = loopback(args.docs, args.parse_s, args.seed)
    plan = makespan_plan(args.parse_s, args.seed)
    print(render([run], plan))
    if args.json:
        write_json(args.json, [run], plan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
