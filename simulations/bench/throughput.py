"""Throughput under OpenAI's rate limits: Breakwater's client beside the official SDK.

One corpus (about 2M tokens by default) is embedded twice against the OpenAI
emulator with its RPM and TPM limits set: once by Breakwater's
`OpenAIEmbeddings` behind a guard and a REAL-mode router, once by the
official `openai.AsyncOpenAI` at its default retries (`max_retries=2`). Each
run gets a fresh `Emulator` with the same seed and limits, on its own
virtual-time loop (`resilience.testing.run_virtual`), in-process, with no
sockets: our client reaches the emulator through `InProcessTransport`, the
SDK through an `httpx2.MockTransport` whose handler hands each request to
the same transport. (This `openai` release is built on `httpx2`, the
successor of httpx, and accepts only an `httpx2.AsyncClient`.)

Design decisions, each printed with the results:

* **Model.** `text-embedding-3-small` at `dimensions=256` for both clients,
  to keep the emulator's vector generation and both decoders cheap; the
  limits count tokens, not dimensions, so this changes no number measured.
* **Corpus.** Generated once from `random.Random(seed)` and shared: prose-like
  sentences over a vocabulary of common words, invented terms, numbers and
  punctuation, cut into inputs whose lengths are log-uniform between 50 and
  2,000 tokens (mostly short chunks, a few long ones).
  Inputs are added until the total reaches `--tokens`; every count is exact
  (`providers.tokens`, cl100k_base, as the emulator counts).
* **Limits.** TPM 300,000 and RPM 3,000 by default. TPM binds (a few
  requests a minute against 3,000 allowed), a request may carry the API's
  full 300,000 tokens (a request over the TPM is refused, so the per-request
  cap is min(300,000, TPM); the output says which applies), and 2M tokens
  take about six virtual minutes, long enough for a steady rate.
* **Achieved rate.** The emulator's token bucket starts full with one
  minute's allowance, so tokens / duration overstates the rate (2M tokens
  pass in under six minutes at 300k TPM). The rate reported is therefore
  (tokens accepted - one minute's allowance) / (virtual time of the last
  accepted request), as a fraction of the TPM. By the bucket's own bound
  (at most `capacity + rate * t` granted by time t) it cannot exceed 1, and
  a client that keeps the bucket busy from start to finish scores 1. The
  same definition is applied to both clients; "n/a" means the corpus fits in
  the first minute's allowance.
* **Packing.** Our planner packs the corpus (next-fit, at most 2,048 inputs
  and the per-request token cap per request). The SDK sends exactly the same
  batches, so request counts differ only by what each client does about 429s.
* **Concurrency.** `--workers` (default 4) for both: the batches are cut
  into that many contiguous groups of whole batches. Each of our workers calls
  `embed()` on its group's inputs (re-planning a group that starts on a batch
  boundary gives the same batches), all sharing one guard; each SDK worker
  calls `embeddings.create` for its group's batches in turn. One `embed()`
  alone would keep the bucket just as busy here (it waits for the bucket,
  not for the network: the emulator adds no latency), so the workers test
  that the shared guard holds under concurrency rather than add speed. With
  more than one worker, the SDK also runs once with a single worker, as a
  context row with no target: it shows how much of the SDK's result is due
  to concurrency.
* **Counting.** Requests and 429s are the emulator's counts of its
  `POST /v1/embeddings` answers (`Emulator.stats()`), 429'd ones included.
  An SDK call that still gets a 429 after its two retries raises
  `RateLimitError`; its batch's inputs are counted as failed and the worker
  goes on. For our client (REAL mode, no mock) an `embed()` that raises
  fails its whole group. Wall time is each run's `run_virtual`, the only
  place this module reads `time.perf_counter`; building the corpus is left
  out, while our `embed()` counts its inputs' tokens again inside its run.
* **Virtual time and the SDK.** The SDK sleeps between retries with
  `anyio.sleep`, which on asyncio is `asyncio.sleep`, so its waits run on
  the virtual clock. It reads `time.time` only to parse a Retry-After given
  as an HTTP date; the emulator sends `retry-after-ms` (which the SDK
  prefers) and `Retry-After` in seconds, so that path is never taken. Its
  backoff jitter (unseeded `random`) applies only to answers with no
  Retry-After, which these 429s never are. Before its first request it
  detects the platform once, in a worker thread; left to the workers, the
  threads' finishing order decided which batch reached the emulator first,
  so the run warms it up first with one GET of the emulator's /_control/
  stats (neither counted nor limited). Virtual time does not move meanwhile:
  no timer is pending.

Run it with `python -m simulations.bench.throughput [--tokens N] [--tpm N]
[--rpm N] [--workers N] [--seed N] [--json PATH]`. Missed targets are
printed, not fatal: the numbers are information.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
import openai
import orjson

from providers.openai.client import (
    MAX_REQUEST_INPUTS,
    MAX_REQUEST_TOKENS,
    Batch,
    OpenAIConfig,
    OpenAIEmbeddings,
)
from providers.openai.mock import MockEmbedder
from providers.tokens import count_tokens, truncate
from providers.transport import HttpRequest, HttpResponse
from resilience import Router, ServiceMode
from resilience.config import ProviderSettings
from resilience.events import close_logging, configure_logging, remove_default_handler
from resilience.testing import run_virtual
from simulations.emulators import Emulator, FaultPlan, InProcessTransport, OpenAIPlan

MODEL: Final = "text-embedding-3-small"
DIMENSIONS: Final = 256
API_KEY: Final = "sk-bench"
BASE_URL: Final = "http://emulator.local/v1"
CONTROL_URL: Final = "http://emulator.local/_control/stats"
ENDPOINT: Final = "POST /v1/embeddings"
"""The emulator's label for the embeddings route in its stats."""

DEFAULT_TOKENS: Final = 2_000_000
DEFAULT_TPM: Final = 300_000
DEFAULT_RPM: Final = 3_000
DEFAULT_WORKERS: Final = 4
DEFAULT_SEED: Final = 7
INPUT_TOKENS: Final = (50, 2_000)
"""Each input's target length in tokens, drawn log-uniformly."""

RATE_TARGET: Final = 0.95
"""Achieved TPM as a fraction of the limit: at least this."""
RATE_LIMITED_TARGET: Final = 0.01
"""429s as a fraction of requests: at most this."""
REQUESTS_TARGET: Final = 1.05
"""Requests as a multiple of the minimum: at most this."""

OURS: Final = "breakwater"
SDK: Final = "openai_sdk"
SDK_SEQUENTIAL: Final = "openai_sdk_sequential"
LABELS: Final[dict[str, str]] = {
    OURS: "breakwater (guard + router REAL)",
    SDK: "openai SDK (max_retries=2)",
    SDK_SEQUENTIAL: "context: openai SDK, 1 worker",
}
"""Result keys and their table labels, in table order. The context row, run only
when `workers` > 1, shows what the SDK does without concurrency; it has no target."""


# -- the corpus ------------------------------------------------------------------

_COMMON_TEXT: Final = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were their one all we can her has there been if more when "
    "will would who so no other into time only new some could these two may first then do "
    "any like my now over such our man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three system data model service request "
    "response limit rate token budget provider failure retry latency document page section"
)
_COMMON: Final = tuple(_COMMON_TEXT.split())
_ONSETS: Final = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "st", "tr")
_NUCLEI: Final = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS: Final = ("", "n", "r", "s", "t", "l", "nd", "st", "x")


def _invented(rng: random.Random) -> str:
    """A pronounceable made-up word: names and jargon the tokenizer has not seen whole."""
    syllables = rng.randint(2, 4)
    return "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(syllables)) + (
        rng.choice(_CODAS)
    )


def _sentence(rng: random.Random, jargon: Sequence[str]) -> str:
    words: list[str] = []
    for _ in range(rng.randint(6, 28)):
        roll = rng.random()
        if roll < 0.78:
            words.append(rng.choice(_COMMON))
        elif roll < 0.93:
            words.append(rng.choice(jargon))
        elif roll < 0.97:
            words.append(str(rng.randint(0, 10_000)))
        else:
            words.append(f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%")
        if rng.random() < 0.07:
            words[-1] += ","
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice((".", ".", ".", "?", "!", ";"))


def _document(rng: random.Random, jargon: Sequence[str], target: int) -> str:
    """Sentences in paragraphs, cut at `target` tokens as a fixed-size chunker cuts.

    This text runs at about 1.8 tokens a word; 1.2 makes sure there is enough to cut.
    """
    paragraphs: list[str] = []
    words = 0
    budget = target / 1.2
    while words < budget:
        sentences = []
        for _ in range(rng.randint(2, 7)):
            sentence = _sentence(rng, jargon)
            sentences.append(sentence)
            words += sentence.count(" ") + 1
            if words >= budget:
                break
        paragraphs.append(" ".join(sentences))
    return truncate("\n\n".join(paragraphs), target).rstrip()


@dataclass(frozen=True, slots=True)
class Corpus:
    texts: list[str]
    token_counts: list[int]
    seed: int

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)

    def __len__(self) -> int:
        return len(self.texts)


def make_corpus(tokens: int, seed: int = DEFAULT_SEED) -> Corpus:
    """Inputs of log-uniform length in `INPUT_TOKENS` until their exact total reaches `tokens`."""
    if tokens < 1:
        raise ValueError(f"tokens must be at least 1, got {tokens}")
    rng = random.Random(seed)
    jargon = [_invented(rng) for _ in range(600)]
    low, high = INPUT_TOKENS
    texts: list[str] = []
    counts: list[int] = []
    total = 0
    while total < tokens:
        target = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        text = _document(rng, jargon, target)
        count = count_tokens(text)
        texts.append(text)
        counts.append(count)
        total += count
    return Corpus(texts, counts, seed)


# -- the limits and the bound ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Minimum:
    """The fewest requests the API's bounds allow for a corpus."""

    inputs: int
    tokens: int
    token_cap: int
    """Tokens one request may carry: 300,000, or the TPM if that is lower."""
    by_inputs: int
    by_tokens: int

    @property
    def requests(self) -> int:
        return max(self.by_inputs, self.by_tokens)

    @property
    def cap_source(self) -> str:
        if self.token_cap < MAX_REQUEST_TOKENS:
            return "the TPM, below the API's 300,000 (a request over the TPM is refused)"
        return "the API's 300,000 per request (the TPM is not lower)"


def minimum_requests(corpus: Corpus, tpm: int) -> Minimum:
    cap = min(MAX_REQUEST_TOKENS, tpm)
    return Minimum(
        inputs=len(corpus),
        tokens=corpus.tokens,
        token_cap=cap,
        by_inputs=math.ceil(len(corpus) / MAX_REQUEST_INPUTS),
        by_tokens=math.ceil(corpus.tokens / cap),
    )


# -- recording what the emulator answered ------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One embeddings request: loop times sent and answered, status, tokens accepted."""

    sent_at: float
    answered_at: float
    status: int
    tokens: int
    """`usage.total_tokens` of a 200; 0 otherwise."""


class RecordingTransport:
    """`InProcessTransport(emulator)`, noting time, status and tokens of each embeddings answer."""

    def __init__(self, emulator: Emulator) -> None:
        self._inner = InProcessTransport(emulator)
        self.exchanges: list[Exchange] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        if not request.url.endswith("/embeddings"):
            return await self._inner.send(request)
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        response = await self._inner.send(request)
        tokens = 0
        if response.status == 200:
            tokens = int(orjson.loads(response.body)["usage"]["total_tokens"])
        self.exchanges.append(Exchange(sent_at, loop.time(), response.status, tokens))
        return response


# -- one run -----------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    """What one client did. Counts come from the emulator; times are virtual seconds."""

    client: str
    workers: int
    requests: int
    succeeded: int
    rate_limited: int
    tokens_accepted: int
    last_accept_s: float
    virtual_s: float
    wall_s: float
    inputs_failed: int
    tpm_ratio: float | None
    """(tokens accepted - TPM) / minutes to the last accepted request / TPM; None if undefined."""
    naive_tpm_ratio: float | None
    """tokens accepted / minutes to the last accepted request / TPM: overstated, for context."""
    statuses: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    """Breakwater's structured events by name (our client's run only)."""
    errors: list[str] = field(default_factory=list)


def _emulator(seed: int, rpm: int, tpm: int) -> Emulator:
    return Emulator(seed=seed, faults=FaultPlan(openai=OpenAIPlan(rpm=rpm, tpm=tpm)))


def _groups(batches: Sequence[Batch], workers: int) -> list[list[Batch]]:
    """`batches` cut into at most `workers` contiguous groups of near-equal length."""
    count = min(workers, len(batches))
    bounds = [len(batches) * k // count for k in range(count + 1)]
    return [list(batches[bounds[k] : bounds[k + 1]]) for k in range(count)]


def _span(group: Sequence[Batch]) -> tuple[int, int]:
    """The corpus slice [first, last + 1) a group of whole batches covers."""
    return group[0].indices[0], group[-1].indices[-1] + 1


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How a run's coroutine ended: inputs failed, and loop times of its start and end."""

    inputs_failed: int
    start: float
    end: float


def _summarize(
    client: str,
    workers: int,
    emulator: Emulator,
    recorder: RecordingTransport,
    tpm: int,
    outcome: _Outcome,
    wall_s: float,
    errors: list[str],
) -> RunResult:
    stats = emulator.stats()
    accepted = [e for e in recorder.exchanges if e.status == 200]
    tokens = sum(e.tokens for e in accepted)
    last = max((e.answered_at - outcome.start for e in accepted), default=0.0)
    ratio = naive = None
    if last > 0:
        naive = tokens / (last / 60.0) / tpm
        if tokens > tpm:
            ratio = (tokens - tpm) / (last / 60.0) / tpm
    statuses = {str(status): n for status, n in sorted(stats.requests.get(ENDPOINT, {}).items())}
    return RunResult(
        client=client,
        workers=workers,
        requests=stats.count(ENDPOINT),
        succeeded=stats.count(ENDPOINT, 200),
        rate_limited=stats.count(ENDPOINT, 429),
        tokens_accepted=tokens,
        last_accept_s=last,
        virtual_s=outcome.end - outcome.start,
        wall_s=wall_s,
        inputs_failed=outcome.inputs_failed,
        tpm_ratio=ratio,
        naive_tpm_ratio=naive,
        statuses=statuses,
        errors=errors,
    )


def run_breakwater(
    corpus: Corpus, *, tpm: int, rpm: int, workers: int, seed: int
) -> tuple[RunResult, list[Batch]]:
    """Our client through a guard from `ProviderSettings(rpm, tpm)` and a REAL router.

    Also returns the batches it planned, for the SDK to send.
    """
    emulator = _emulator(seed, rpm, tpm)
    recorder = RecordingTransport(emulator)
    guard = ProviderSettings(rpm=rpm, tpm=tpm).guard("openai", rng=random.Random(seed))
    client = OpenAIEmbeddings(
        OpenAIConfig(API_KEY, base_url=BASE_URL),
        recorder,
        model=MODEL,
        dimensions=DIMENSIONS,
        buckets=(guard.requests, guard.tokens),
    )
    router = Router(ServiceMode.REAL)
    mock = MockEmbedder(MODEL, DIMENSIONS)
    router.register("embed", real=client.embed_batch, mock=mock.embed_batch, guard=guard)
    batches = client.plan(corpus.texts)
    groups = _groups(batches, workers)
    errors: list[str] = []

    async def worker(group: list[Batch]) -> int:
        """Embed one group; the number of its inputs that failed."""
        first, end = _span(group)
        try:
            embeddings = await client.embed(corpus.texts[first:end], router)
        except Exception as exc:  # REAL mode raises what the guard could not absorb
            errors.append(f"{type(exc).__name__}: {exc}")
            return end - first
        if len(embeddings.vectors) != end - first or embeddings.degraded:
            errors.append("a group came back short or degraded")
            return end - first
        return 0

    async def main() -> _Outcome:
        loop = asyncio.get_running_loop()
        start = loop.time()
        failed = await asyncio.gather(*(worker(group) for group in groups))
        return _Outcome(sum(failed), start, loop.time())

    started = time.perf_counter()  # clock-ok: benchmark
    outcome = run_virtual(main())
    wall_s = time.perf_counter() - started  # clock-ok: benchmark
    result = _summarize(OURS, workers, emulator, recorder, tpm, outcome, wall_s, errors)
    return result, batches


def run_sdk(
    batches: Sequence[Batch], *, tpm: int, rpm: int, workers: int, seed: int, name: str = SDK
) -> RunResult:
    """The official SDK at its defaults, sending `batches` in `workers` contiguous groups."""
    emulator = _emulator(seed, rpm, tpm)
    recorder = RecordingTransport(emulator)
    groups = _groups(batches, workers)
    errors: list[str] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        ours = HttpRequest(request.method, str(request.url), dict(request.headers), request.content)
        answer = await recorder.send(ours)
        return httpx2.Response(
            answer.status, headers=list(answer.headers.items()), content=answer.body
        )

    async def main() -> _Outcome:
        loop = asyncio.get_running_loop()
        http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        client = openai.AsyncOpenAI(api_key=API_KEY, base_url=BASE_URL, http_client=http_client)
        # The SDK detects the platform in a worker thread before its first request.
        # Done here, once, the workers then start in a fixed order (racing threads
        # would shuffle which batch reaches the emulator first, and so which fail).
        # The emulator neither counts nor limits /_control/.
        await client.get(CONTROL_URL, cast_to=httpx2.Response)
        start = loop.time()

        async def worker(group: list[Batch]) -> int:
            failed = 0
            for batch in group:
                try:
                    response = await client.embeddings.create(
                        model=MODEL, input=list(batch.texts), dimensions=DIMENSIONS
                    )
                except openai.APIError as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                    failed += len(batch)
                    continue
                if len(response.data) != len(batch):
                    errors.append("a response came back short")
                    failed += len(batch)
            return failed

        try:
            failed = await asyncio.gather(*(worker(group) for group in groups))
        finally:
            await client.close()
        return _Outcome(sum(failed), start, loop.time())

    started = time.perf_counter()  # clock-ok: benchmark
    outcome = run_virtual(main())
    wall_s = time.perf_counter() - started  # clock-ok: benchmark
    return _summarize(name, workers, emulator, recorder, tpm, outcome, wall_s, errors)


def count_events(path: Path) -> dict[str, int]:
    """How many of each event a JSON-lines log holds, by name."""
    if not path.exists():
        return {}
    counts: Counter[str] = Counter()
    for line in path.read_bytes().splitlines():
        counts[str(orjson.loads(line).get("event", "log"))] += 1
    return dict(sorted(counts.items()))


def measure(
    tokens: int = DEFAULT_TOKENS,
    *,
    tpm: int = DEFAULT_TPM,
    rpm: int = DEFAULT_RPM,
    workers: int = DEFAULT_WORKERS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Run both clients over one corpus and return the settings, corpus, bound and results.

    Breakwater's events are logged at INFO to a temporary file during its run
    (as a deployed service would log them) and counted by name.
    """
    if min(tpm, rpm, workers) < 1:
        raise ValueError(f"tpm, rpm and workers must be at least 1, got {tpm}, {rpm}, {workers}")
    corpus = make_corpus(tokens, seed)
    minimum = minimum_requests(corpus, tpm)
    with tempfile.TemporaryDirectory(prefix="breakwater-bench-") as tmp:
        log = Path(tmp) / "events.jsonl"
        remove_default_handler()  # deployed, events are JSON lines only
        configure_logging(str(log), level="INFO")
        try:
            ours, batches = run_breakwater(corpus, tpm=tpm, rpm=rpm, workers=workers, seed=seed)
        finally:
            close_logging()
        ours.events = count_events(log)
    runs = {OURS: asdict(ours)}
    runs[SDK] = asdict(run_sdk(batches, tpm=tpm, rpm=rpm, workers=workers, seed=seed))
    if workers > 1:
        sequential = run_sdk(batches, tpm=tpm, rpm=rpm, workers=1, seed=seed, name=SDK_SEQUENTIAL)
        runs[SDK_SEQUENTIAL] = asdict(sequential)
    low, high = INPUT_TOKENS
    return {
        "settings": {
            "model": MODEL,
            "dimensions": DIMENSIONS,
            "tpm": tpm,
            "rpm": rpm,
            "workers": workers,
            "seed": seed,
        },
        "corpus": {
            "inputs": len(corpus),
            "tokens": corpus.tokens,
            "input_tokens_min": min(corpus.token_counts),
            "input_tokens_max": max(corpus.token_counts),
            "input_tokens_drawn": [low, high],
        },
        "minimum": {
            "requests": minimum.requests,
            "by_inputs": minimum.by_inputs,
            "by_tokens": minimum.by_tokens,
            "token_cap": minimum.token_cap,
            "token_cap_source": minimum.cap_source,
        },
        "batches_planned": len(batches),
        "results": runs,
        "targets": targets(runs[OURS], minimum.requests),
    }


# -- verdicts and the table ----------------------------------------------------------


def targets(ours: dict[str, Any], minimum: int) -> dict[str, dict[str, Any]]:
    """The three targets for our client: each value, its limit, and whether it was met."""
    requests = int(ours["requests"])
    rate_limited = int(ours["rate_limited"])
    ratio: float | None = ours["tpm_ratio"]
    return {
        "achieved_tpm_ratio": {
            "value": ratio,
            "target": f">= {RATE_TARGET}",
            "met": ratio is not None and ratio >= RATE_TARGET,
        },
        "rate_limited_fraction": {
            "value": rate_limited / requests if requests else 0.0,
            "target": f"<= {RATE_LIMITED_TARGET}",
            "met": rate_limited <= RATE_LIMITED_TARGET * requests,
        },
        "requests_over_minimum": {
            "value": requests / minimum,
            "target": f"<= {REQUESTS_TARGET}",
            "met": requests <= REQUESTS_TARGET * minimum,
        },
    }


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:04.1f}s"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    """The settings, the table, and the verdict on each target."""
    s, c, m = results["settings"], results["corpus"], results["minimum"]
    lines = [
        f"Throughput under rate limits: {s['model']} at dimensions={s['dimensions']}, "
        "in-process emulator, virtual time",
        f"corpus: {c['inputs']:,} inputs, {c['tokens']:,} tokens "
        f"(seed {s['seed']}; {c['input_tokens_min']:,}-{c['input_tokens_max']:,} tokens each, "
        "log-uniform)",
        f"limits: TPM {s['tpm']:,} (binds), RPM {s['rpm']:,}; "
        f"token cap per request {m['token_cap']:,}, set by {m['token_cap_source']}",
        f"minimum requests: {m['requests']} = max(ceil({c['inputs']:,} / {MAX_REQUEST_INPUTS:,}) "
        f"= {m['by_inputs']}, ceil({c['tokens']:,} / {m['token_cap']:,}) = {m['by_tokens']}); "
        f"our planner made {results['batches_planned']} batches, and the SDK sends the same",
        f"workers: {s['workers']} per client, each taking a contiguous group of whole batches",
        "achieved TPM = (tokens accepted - one minute's allowance) / minutes to the last "
        "accepted request, over the limit (at most 1 by the bucket's bound)",
        "",
    ]
    header = (
        f"{'client':<33} {'requests':>8} {'ok':>4} {'429s':>5} {'(% req)':>8} "
        f"{'TPM/limit':>9} {'virtual':>9} {'wall':>7} {'inputs failed':>13}"
    )
    lines.append(header)
    runs = [(name, label) for name, label in LABELS.items() if name in results["results"]]
    for name, label in runs:
        r = results["results"][name]
        share = r["rate_limited"] / r["requests"] if r["requests"] else 0.0
        lines.append(
            f"{label:<33} {r['requests']:>8} {r['succeeded']:>4} {r['rate_limited']:>5} "
            f"{share:>8.1%} {_ratio(r['tpm_ratio']):>9} {_duration(r['virtual_s']):>9} "
            f"{r['wall_s']:>6.1f}s {r['inputs_failed']:>13,}"
        )
    lines.append("")
    lines.append("targets for breakwater:")
    verdicts = results["targets"]
    ours = results["results"][OURS]
    rate = verdicts["achieved_tpm_ratio"]
    lines.append(
        f"  achieved TPM >= {RATE_TARGET} of the limit: {_ratio(rate['value'])}"
        f"  {'met' if rate['met'] else 'MISSED'}"
    )
    limited = verdicts["rate_limited_fraction"]
    lines.append(
        f"  429s <= {RATE_LIMITED_TARGET:.0%} of requests: {ours['rate_limited']} of "
        f"{ours['requests']} ({limited['value']:.1%})  {'met' if limited['met'] else 'MISSED'}"
    )
    over = verdicts["requests_over_minimum"]
    lines.append(
        f"  requests <= {REQUESTS_TARGET} x the minimum ({m['requests']}): {ours['requests']} "
        f"({over['value']:.3f} x)  {'met' if over['met'] else 'MISSED'}"
    )
    events = ours["events"]
    if events:
        counted = ", ".join(f"{name} {count}" for name, count in events.items())
        lines.append(f"breakwater's events: {counted}")
    for name, label in runs:
        errors = results["results"][name]["errors"]
        if errors:
            lines.append(f"{label}: {len(errors)} error(s), the first: {errors[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.bench.throughput",
        description="Tokens per minute achieved under the emulator's RPM and TPM limits, "
        "Breakwater's client beside the official openai SDK.",
    )
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="corpus size")
    parser.add_argument("--tpm", type=int, default=DEFAULT_TPM, help="tokens per minute limit")
    parser.add_argument("--rpm", type=int, default=DEFAULT_RPM, help="requests per minute limit")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="per client")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="corpus and emulator")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    results = measure(args.tokens, tpm=args.tpm, rpm=args.rpm, workers=args.workers, seed=args.seed)
    print(render(results))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
