"""Pipeline throughput: documents and embeddings per second through the worker.

One corpus of distinct documents goes through `state.pipeline.worker.Worker` end to
end (lease, parse, chunk, embed, store, every job transition), into a fresh
SQLite file per run, and the wall time from the worker's start until every
job is complete gives documents per second and embeddings per second.

Runs, each at 1 and 8 concurrent jobs (`Worker(concurrency=...)`, driven by
`Worker.run`, which refills a slot as soon as a job frees it):

* **mock**: SERVICE_MODE=mock. The providers' deterministic mocks
  (`MockParser`, `MockEmbedder`) serve every call through the routers.
* **emulator**: SERVICE_MODE=real with throwaway keys, against a fresh
  `Emulator` with the default `FaultPlan` (no faults), in process through
  `InProcessTransport`. This runs on a virtual-time loop
  (`resilience.testing.run_virtual`), as the worker tests and the throughput
  benchmark do, so the emulated provider's deliberate waits (LlamaParse's
  1 s parse time and the client's polls, and the client's upload bucket of
  1.4 uploads a second, which alone would hold 60 documents to about 43
  real seconds) cost no wall time: the wall time measured is the CPU work
  of both clients, the emulator and our pipeline. The virtual seconds the
  run took are printed beside it, for context.
* **raw**: the same documents' "chunk-and-store" work alone, sequentially,
  with no worker, router, guard or job transitions: read the document from
  the store, parse it with `MockParser`, store the parse, `chunk` it, store
  the chunks, plan batches and embed them with `MockEmbedder`, store the
  embeddings. This is the work the mock path cannot avoid.

Target: the mock path at concurrency 1 takes at most `TARGET` (2x) the raw
work's wall time. Concurrency 1 is the like-for-like comparison with the
sequential raw run (one document at a time, the same store calls in the same
order); the concurrency 8 ratio is printed as context. Each run is repeated
`--repeats` times and its fastest repeat is reported (the least disturbed by
machine noise); the runs take turns within each repeat.

Not timed: a warm-up of every run over two other documents first (the
tokenizer's encoding, loaded on first use, alone takes about 0.25 s), building
the corpus, creating the store and the jobs (the upload),
building the pipeline and the emulator, and checking the results afterwards.
Events are logged at INFO to a temporary file throughout, as a deployed
service would log them. Wall time is the thing measured here, so this module
reads `time.perf_counter`.

Run it with `python -m simulations.bench.pipeline [--docs N] [--repeats R]
[--seed N] [--json PATH]`. Missed targets are printed, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from providers.llamaparse.client import Document
from providers.llamaparse.mock import MockParser
from providers.openai.mock import MockEmbedder
from resilience.clock import wall_time
from resilience.events import close_logging, configure_logging, remove_default_handler
from resilience.testing import run_virtual
from simulations.emulators import Emulator, FaultPlan, InProcessTransport
from simulations.samples import TEXT_SAMPLES
from state import JobState, SqliteJobStore
from state.pipeline.chunking import chunk
from state.pipeline.wiring import Pipeline
from state.pipeline.worker import IDLE_SLEEP_S, Worker
from state.store.protocol import EmbeddingRow

DEFAULT_DOCS: Final = 60
DEFAULT_REPEATS: Final = 3
DEFAULT_SEED: Final = 1
CONCURRENCIES: Final = (1, 8)
TARGET: Final = 2.0
"""mock path (concurrency 1) wall time / raw wall time should stay at or below this."""

MOCK: Final = "mock"
EMULATOR: Final = "emulator"
RAW: Final = "raw"
LABELS: Final = {
    MOCK: "worker, SERVICE_MODE=mock",
    EMULATOR: "worker, REAL vs emulator (no faults)",
    RAW: "raw chunk-and-store, no worker",
}

_BASE = "http://emulator.local"
_TIMEOUT_S: Final = 600.0
"""A run that has not finished by then (loop time) is a bug, not a slow machine."""


# -- the corpus ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorpusDocument:
    filename: str
    mime_type: str
    content: bytes


def make_corpus(docs: int, seed: int = DEFAULT_SEED) -> list[CorpusDocument]:
    """`docs` distinct documents of a few KB, varied deterministically from the samples.

    Each is a random selection of one sample's paragraphs, in a random order,
    under a title naming its number, so every document has its own sha256.
    """
    if docs < 1:
        raise ValueError(f"docs must be at least 1, got {docs}")
    rng = random.Random(seed)
    sources = []
    # The text samples only: the PDF's bytes are fixed, so it cannot be varied.
    for sample in TEXT_SAMPLES:
        text = sample.path.read_text(encoding="utf-8")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        sources.append((Path(sample.name), sample.mime_type, paragraphs))
    corpus = []
    for number in range(docs):
        path, mime, paragraphs = sources[number % len(sources)]
        count = rng.randint(max(1, len(paragraphs) // 3), max(1, len(paragraphs) * 2 // 3))
        picked = rng.sample(paragraphs, count)
        title = f"# Bench document {number} (seed {seed})"
        text = "\n\n".join([title, *picked]) + "\n"
        filename = f"{path.stem}-{number:04d}{path.suffix}"
        corpus.append(CorpusDocument(filename, mime, text.encode()))
    return corpus


# -- one run ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    run: str
    concurrency: int
    docs: int
    embeddings: int
    chunks: int
    wall_s: float
    virtual_s: float | None = None

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def embeddings_per_s(self) -> float:
        return self.embeddings / self.wall_s if self.wall_s > 0 else float("inf")


def emulator_environment(base_url: str) -> dict[str, str]:
    """Throwaway keys and the base URLs of the emulator at `base_url`, for the real clients."""
    return {
        "OPENAI_API_KEY": "sk-bench-throwaway",
        "OPENAI_BASE_URL": f"{base_url}/v1",
        "LLAMA_CLOUD_API_KEY": "llx-bench-throwaway",
        "LLAMA_CLOUD_BASE_URL": base_url,
    }


def environment(mode: str) -> dict[str, str]:
    """MOCK, or REAL against the in-process emulator (`InProcessTransport` ignores the host)."""
    if mode == MOCK:
        return {"SERVICE_MODE": "mock"}
    return {"SERVICE_MODE": "real", **emulator_environment(_BASE)}


async def upload_corpus(store: SqliteJobStore, corpus: list[CorpusDocument]) -> list[str]:
    ids = []
    for doc in corpus:
        created = await store.create_job(
            doc.content, filename=doc.filename, mime_type=doc.mime_type, now=wall_time()
        )
        if not created.created:
            raise ValueError(f"{doc.filename} duplicates another document of the corpus")
        ids.append(created.job.id)
    return ids


async def _check(store: SqliteJobStore, ids: list[str], run: str) -> dict[str, int]:
    """Every job complete and every chunk embedded; the store's row counts."""
    for job_id in ids:
        job = await store.get_job(job_id)
        if job is None or job.state is not JobState.COMPLETE:
            raise RuntimeError(f"{run}: job {job_id} ended as {job}")
    counts = await store.row_counts()
    if counts["embeddings"] != counts["chunks"] or counts["chunks"] < len(ids):
        raise RuntimeError(f"{run}: {counts['chunks']} chunks, {counts['embeddings']} embeddings")
    return counts


async def drive(
    worker: Worker, jobs: int, *, idle_sleep_s: float = IDLE_SLEEP_S, timeout_s: float = _TIMEOUT_S
) -> None:
    """`Worker.run` until it has completed `jobs` jobs, then stop it."""
    stop = asyncio.Event()
    running = asyncio.get_running_loop().create_task(worker.run(stop, idle_sleep_s=idle_sleep_s))
    try:
        async with asyncio.timeout(timeout_s):
            while worker.stats.completed < jobs:
                if worker.stats.failed or running.done():
                    raise RuntimeError(f"{worker!r} stopped short: {worker.stats}")
                await asyncio.sleep(0.001)
    finally:
        stop.set()
        await running


async def _worker_run(
    db: Path, corpus: list[CorpusDocument], mode: str, concurrency: int
) -> RunResult:
    emulator = Emulator(seed=DEFAULT_SEED, faults=FaultPlan()) if mode == EMULATOR else None
    transport = InProcessTransport(emulator if emulator is not None else Emulator(seed=0))
    pipeline = Pipeline.from_env(environment(mode), transport=transport, rng=random.Random(0))
    loop = asyncio.get_running_loop()
    try:
        async with await SqliteJobStore.open(db) as store:
            ids = await upload_corpus(store, corpus)
            worker = Worker(store, pipeline, owner=f"bench-{mode}", concurrency=concurrency)
            gc.collect()
            virtual_start = loop.time()
            started = time.perf_counter()  # clock-ok: benchmark
            await drive(worker, len(ids), idle_sleep_s=0.01)
            wall_s = time.perf_counter() - started  # clock-ok: benchmark
            virtual_s = loop.time() - virtual_start
            counts = await _check(store, ids, mode)
    finally:
        await pipeline.close()
        if emulator is not None:
            await emulator.close()
    return RunResult(
        mode,
        concurrency,
        len(ids),
        counts["embeddings"],
        counts["chunks"],
        wall_s,
        virtual_s if mode == EMULATOR else None,
    )


async def _raw_run(db: Path, corpus: list[CorpusDocument]) -> RunResult:
    # Used only to plan batches (as the worker's embed step does); never sends.
    pipeline = Pipeline.from_env(environment(MOCK), transport=InProcessTransport(Emulator()))
    embedder = pipeline.embedder
    model, dims = embedder.model, embedder.vector_dimensions
    parser, mock = MockParser(), MockEmbedder(model, dims)
    try:
        async with await SqliteJobStore.open(db) as store:
            ids = await upload_corpus(store, corpus)
            jobs = [await store.get_job(job_id) for job_id in ids]
            gc.collect()
            started = time.perf_counter()  # clock-ok: benchmark
            for job in jobs:
                assert job is not None
                content = await store.document(job.sha256)
                assert content is not None
                parsed = await parser.parse(Document(job.filename, content, job.mime_type))
                await store.put_parse(parsed, "mock")
                chunks = chunk(parsed.markdown, pipeline.chunking)
                await store.put_chunks(job.sha256, chunks)
                texts = [c.text for c in chunks]
                rows = []
                for batch in embedder.plan(texts):
                    result = await mock.embed_batch(batch)
                    for position, index in enumerate(batch.indices):
                        rows.append(
                            EmbeddingRow(chunks[index].index, result.vectors[position], "mock")
                        )
                await store.put_embeddings(job.sha256, model, dims, rows)
            wall_s = time.perf_counter() - started  # clock-ok: benchmark
            counts = await store.row_counts()
    finally:
        await pipeline.close()
    if counts["embeddings"] != counts["chunks"]:
        raise RuntimeError(f"raw: {counts['chunks']} chunks, {counts['embeddings']} embeddings")
    return RunResult(RAW, 1, len(ids), counts["embeddings"], counts["chunks"], wall_s)


def _once(
    tmp: Path, number: int, corpus: list[CorpusDocument], run: str, concurrency: int
) -> RunResult:
    db = tmp / f"{run}-{concurrency}-{number}.db"
    runner: Callable[[Coroutine[Any, Any, RunResult]], RunResult]
    if run == RAW:
        return asyncio.run(_raw_run(db, corpus))
    runner = run_virtual if run == EMULATOR else asyncio.run
    return runner(_worker_run(db, corpus, run, concurrency))


# -- measure, verdict, table -----------------------------------------------------------

RUNS: Final = (
    *((MOCK, c) for c in CONCURRENCIES),
    *((EMULATOR, c) for c in CONCURRENCIES),
    (RAW, 1),
)


def measure(
    docs: int = DEFAULT_DOCS, *, repeats: int = DEFAULT_REPEATS, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """Every run in `RUNS`, fastest of `repeats`; the corpus, the ratios and the verdict."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    corpus = make_corpus(docs, seed)
    best: dict[tuple[str, int], RunResult] = {}
    with tempfile.TemporaryDirectory(prefix="breakwater-bench-") as tmp:
        remove_default_handler()  # deployed, events are JSON lines only
        configure_logging(str(Path(tmp) / "events.jsonl"), level="INFO")
        try:
            # Warm up what each path builds lazily on first use (the tokenizer's
            # encoding alone takes a quarter of a second to load), untimed.
            warm = make_corpus(min(docs, 2), seed + 1)
            for run, concurrency in RUNS:
                _once(Path(tmp), -1, warm, run, concurrency)
            for repeat in range(repeats):
                shift = repeat % len(RUNS)
                for run, concurrency in RUNS[shift:] + RUNS[:shift]:
                    result = _once(Path(tmp), repeat, corpus, run, concurrency)
                    key = (run, concurrency)
                    if key not in best or result.wall_s < best[key].wall_s:
                        best[key] = result
        finally:
            close_logging()
    results = [best[key] for key in RUNS]
    raw = best[(RAW, 1)].wall_s
    ratios = {
        f"mock_c{c}/raw": best[(MOCK, c)].wall_s / raw if raw > 0 else float("inf")
        for c in CONCURRENCIES
    }
    headline = ratios[f"mock_c{CONCURRENCIES[0]}/raw"]
    return {
        "settings": {"docs": docs, "repeats": repeats, "seed": seed},
        "corpus": {
            "documents": len(corpus),
            "bytes": sum(len(d.content) for d in corpus),
            "chunks": best[(RAW, 1)].chunks,
        },
        "python": sys.version.split()[0],
        "results": [
            {**asdict(r), "docs_per_s": r.docs_per_s, "embeddings_per_s": r.embeddings_per_s}
            for r in results
        ],
        "ratios": ratios,
        "target": {
            "ratio": f"mock_c{CONCURRENCIES[0]}/raw",
            "value": headline,
            "limit": TARGET,
            "met": headline <= TARGET,
        },
    }


def render(results: dict[str, Any]) -> str:
    """The table and the verdict on the target."""
    s, c = results["settings"], results["corpus"]
    lines = [
        f"Pipeline throughput through the worker (Python {results['python']}), fastest of "
        f"{s['repeats']} repeat(s), wall time",
        f"corpus: {c['documents']} distinct documents, {c['bytes']:,} bytes, {c['chunks']} chunks "
        f"(seed {s['seed']}); a fresh SQLite file per run",
        "emulator runs: in process on a virtual-time loop, so the emulated waits cost no wall "
        "time (virtual seconds shown)",
        "",
        f"{'run':<38} {'conc':>4} {'docs/s':>9} {'emb/s':>10} {'wall s':>8} {'virtual s':>9}",
    ]
    for r in results["results"]:
        virtual = f"{r['virtual_s']:9.1f}" if r["virtual_s"] is not None else f"{'-':>9}"
        lines.append(
            f"{LABELS[r['run']]:<38} {r['concurrency']:>4} {r['docs_per_s']:9.1f} "
            f"{r['embeddings_per_s']:10.1f} {r['wall_s']:8.3f} {virtual}"
        )
    lines.append("")
    target = results["target"]
    for name, value in results["ratios"].items():
        if name == target["ratio"]:
            verdict = "met" if target["met"] else "MISSED"
            lines.append(f"{name:<14} {value:6.2f}  (target <= {TARGET:.1f}: {verdict})")
        else:
            lines.append(f"{name:<14} {value:6.2f}  (context, no target)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.pipeline",
        description="Documents and embeddings per second through the worker, against the "
        "mocks and the emulator, beside the raw chunk-and-store work.",
    )
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents in the corpus")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="runs of each")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="corpus seed")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    results = measure(args.docs, repeats=args.repeats, seed=args.seed)
    print(render(results))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
