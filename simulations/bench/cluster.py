"""Many `breakwater worker` processes on one PostgreSQL store and one Redis, against the emulator.

What the scale-out tests and the scaling benchmark both need: an emulator
process (`breakwater emulate`) with a fault plan, N worker processes
configured through the environment as users configure them, jobs submitted
straight into the store, and the means to watch, kill and read them all.
Real processes, real sockets, real time: this is where timing across
processes is the point, so nothing here runs on virtual time.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from state import JobState
from state.store.open import open_store

ROOT: Final = Path(__file__).resolve().parents[2]
WORDS: Final = (
    "breaker",
    "budget",
    "bucket",
    "token",
    "retry",
    "outage",
    "parse",
    "chunk",
    "embed",
    "vector",
    "store",
    "lease",
    "worker",
    "redis",
    "postgres",
    "quorum",
    "window",
    "limit",
    "probe",
    "cooldown",
    "mock",
    "degraded",
    "backfill",
    "ledger",
)
PROVIDER_KEYS: Final = (
    "OPENAI_API_KEY",
    "LLAMA_CLOUD_API_KEY",
    "LLAMA_CLOUD_WEBHOOK_URL",
    "LLAMA_CLOUD_WEBHOOK_SECRET",
)
"""The caller's provider settings, never passed on: a worker gets only what `env` gives."""


def documents(count: int, seed: int, *, words: int = 120) -> list[bytes]:
    """`count` distinct plain-text documents of about `words` words, from `seed`."""
    rng = random.Random(seed)
    return [
        (f"Document {n}.\n\n" + " ".join(rng.choice(WORDS) for _ in range(words)) + "\n").encode()
        for n in range(count)
    ]


@dataclass
class Cluster:
    """An emulator and worker processes; `close` stops them all. Use it in a `with` block."""

    db_url: str
    redis_url: str | None
    faults: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra variables for every worker (BREAKWATER_OPENAI_RPM, ...)."""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bw-cluster-")))
    urls: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    server: subprocess.Popen[str] | None = None
    _emulator: subprocess.Popen[str] | None = None

    def __enter__(self) -> Cluster:
        self.start_emulator()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- processes ---------------------------------------------------------------

    def start_emulator(self) -> None:
        plan = self.workdir / "faults.json"
        plan.write_bytes(orjson.dumps(self.faults))
        command = ["emulate", "--port", "0", "--faults", str(plan), "--seed", "1"]
        self._emulator = self._spawn(command, {}, "emulator")
        text = _wait_for(self._emulator, self.workdir / "emulator.out", "LlamaParse base URL:")
        for line in text.splitlines():
            if "base URL:" in line:
                name, url = line.split("base URL:")
                self.urls[name.strip()] = url.split()[0]

    def environment(self) -> dict[str, str]:
        """What every `breakwater` command here runs with: the store, Redis, keys, limits."""
        return {
            "SERVICE_MODE": "hybrid",
            "BREAKWATER_DB": self.db_url,
            "OPENAI_API_KEY": "sk-cluster",
            "OPENAI_BASE_URL": self.urls["OpenAI"],
            "LLAMA_CLOUD_API_KEY": "llx-cluster",
            "LLAMA_CLOUD_BASE_URL": self.urls["LlamaParse"],
            **({"BREAKWATER_REDIS_URL": self.redis_url} if self.redis_url else {}),
            **self.env,
        }

    def start_workers(self, count: int, *, concurrency: int, lease_s: float = 10.0) -> None:
        """Start `count` workers and wait until each says it runs (its SIGTERM handler is in)."""
        first = len(self.workers)
        for n in range(first, first + count):
            log = self.workdir / f"worker-{n}.jsonl"
            command = ["worker", "--concurrency", str(concurrency), "--lease-s", str(lease_s)]
            worker = self._spawn([*command, "--log", str(log)], self.environment(), f"worker-{n}")
            self.workers.append(worker)
        for n in range(first, first + count):
            _wait_for(self.workers[n], self.output_path(n), " running (concurrency ")

    def start_server(self, secret: str) -> str:
        """`breakwater serve --workers 0`: the API and webhook endpoint only; its base URL."""
        env = {**self.environment(), "LLAMA_CLOUD_WEBHOOK_SECRET": secret}
        command = ["serve", "--port", "0", "--workers", "0"]
        log = str(self.workdir / "server.jsonl")
        self.server = self._spawn([*command, "--log", log], env, "server")
        text = _wait_for(self.server, self.workdir / "server.out", "Serving on ")
        return text.split("Serving on ", 1)[1].split()[0]

    def output_path(self, n: int) -> Path:
        """Where worker `n`'s standard output and error go."""
        return self.workdir / f"worker-{n}.out"

    def command(self, *args: str) -> str:
        """Run `breakwater ARGS...` to the end with the workers' environment; its output."""
        name = f"command-{args[0]}"
        process = self._spawn(
            [*args, "--log", str(self.workdir / f"{name}.jsonl")], self.environment(), name
        )
        if process.wait(timeout=120) != 0:
            raise RuntimeError(
                f"breakwater {' '.join(args)}: {(self.workdir / f'{name}.out').read_text()}"
            )
        return (self.workdir / f"{name}.out").read_text()

    def kill(self, n: int) -> None:
        """SIGKILL worker `n`: no handler runs, its leases are simply abandoned."""
        self.workers[n].send_signal(signal.SIGKILL)
        self.workers[n].wait(timeout=10)

    def stop_workers(self) -> list[int]:
        """SIGTERM every live worker and wait; their exit codes (-9 for the killed)."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        return [worker.wait(timeout=60) for worker in self.workers]

    def close(self) -> None:
        """Kill what still runs and delete the working directory with its logs."""
        try:
            for process in [*self.workers, self.server, self._emulator]:
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(
        self, command: list[str], env: Mapping[str, str], name: str
    ) -> subprocess.Popen[str]:
        """`breakwater COMMAND` with only `env`'s Breakwater and provider variables.

        Output goes to a file, not a pipe: a pipe nobody reads stalls its writer.
        """
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in PROVIDER_KEYS and not k.startswith("BREAKWATER_")
        }
        base["PYTHONPATH"] = str(ROOT)
        with (self.workdir / f"{name}.out").open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "simulations.cli", *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**base, **env},
                cwd=self.workdir,
            )

    # -- jobs and observations ---------------------------------------------------

    async def submit(self, contents: list[bytes]) -> None:
        async with await open_store(self.db_url) as store:
            for n, content in enumerate(contents):
                await store.create_job(
                    content, filename=f"doc-{n}.txt", mime_type="text/plain", now=time.time()
                )

    async def states(self) -> dict[str, int]:
        async with await open_store(self.db_url) as store:
            counts = await store.jobs_by_state()
        return {state.value: n for state, n in counts.items() if n}

    async def row_counts(self) -> dict[str, int]:
        async with await open_store(self.db_url) as store:
            return await store.row_counts()

    async def degraded(self) -> int:
        async with await open_store(self.db_url) as store:
            return len(await store.degraded_jobs())

    async def wait_until_done(self, total: int, timeout_s: float) -> float:
        """Poll until `total` jobs are terminal; the seconds it took. Raises on timeout."""
        started = time.monotonic()
        while True:
            states = await self.states()
            done = states.get(JobState.COMPLETE.value, 0) + states.get(JobState.FAILED.value, 0)
            if done >= total:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"after {timeout_s:g}s: {states}")
            await asyncio.sleep(0.2)

    def emulator_stats(self) -> dict[str, Any]:
        base = self.urls["OpenAI"].rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{base}/_control/stats", timeout=10) as answer:
            stats: dict[str, Any] = orjson.loads(answer.read())
        return stats

    def events(self, n: int) -> list[dict[str, Any]]:
        """Worker `n`'s JSON log lines."""
        path = self.workdir / f"worker-{n}.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _wait_for(process: subprocess.Popen[str], output: Path, text: str) -> str:
    """Wait until `process` has written `text` to `output`; all it wrote by then."""
    deadline = time.monotonic() + 60
    while True:
        written = output.read_text() if output.exists() else ""
        if text in written:
            return written
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} never said {text!r}:\n{written}")
        time.sleep(0.05)
