"""OpenAI embeddings: plan requests, send one batch, decode it, and embed a whole list.

The client is split the way the guard needs it:

* `plan` does everything that needs no network: it refuses what OpenAI
  would refuse (blank inputs), counts tokens exactly, cuts inputs over
  8,191 tokens, and packs the rest into as few requests as the API allows.
* `embed_batch` is one POST /embeddings, the unit the guard retries and the
  router replaces with a mock. It never crashes on a bad body: anything
  unexpected is a `ProviderError` the breaker counts as a failure.
* `embed` runs the batches through a `resilience.Router`, re-sends only the
  inputs a short response left out, and puts the vectors back in input order.

Vectors are requested as base64, as openai-python asks by default (about a
third of the bytes of JSON floats), and decoded as little-endian float32,
explicitly, so a big-endian host reads them right too.
"""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import math
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeGuard

import orjson

from providers import OPENAI
from providers.http import correlated, error_from_response, rate_limits, reported
from providers.pricing import embedding_cost_usd, output_dimensions
from providers.tokens import count_tokens, split, truncate
from providers.transport import HttpRequest, HttpResponse, Transport
from resilience import BudgetExceeded, ConfigError, ProviderError, Router, correlation
from resilience.bucket import Throttle
from resilience.clock import wall_time
from resilience.events import emit
from resilience.router import Path

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "text-embedding-3-small"
MAX_INPUT_TOKENS: Final = 8191
"""The API documents 8,192; OpenAI's own cookbook and error text use 8,191, so we do."""
MAX_REQUEST_INPUTS: Final = 2048
MAX_REQUEST_TOKENS: Final = 300_000
MISSING_RETRIES: Final = 3
"""How many times `embed` re-sends inputs a response left out before giving up."""

LongInputs = Literal["truncate", "split"]


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """Where and as whom to call OpenAI. The key never appears in the repr."""

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    organization: str | None = None
    project: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    """The whole request's deadline, applied around the transport's `send`."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OpenAIConfig:
        """Read OPENAI_API_KEY (required), OPENAI_BASE_URL, OPENAI_ORG_ID, OPENAI_PROJECT_ID.

        Empty values count as unset, as `VAR=` in a shell or .env file means.
        """
        key, base_url, organization, project = (
            environ.get(name, "").strip() or None
            for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")
        )
        if key is None:
            raise ConfigError("OPENAI_API_KEY is not set: real OpenAI calls need an API key")
        return cls(key, base_url or DEFAULT_BASE_URL, organization, project)


@dataclass(frozen=True, slots=True)
class Batch:
    """One request's inputs, with the index in the caller's list each came from.

    A split input contributes several pieces with the same index.
    """

    texts: tuple[str, ...]
    indices: tuple[int, ...]
    token_counts: tuple[int, ...]
    estimated_cost_usd: float

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        # Texts are documents: too long for a log line, and possibly private.
        return f"Batch({len(self)} inputs, {self.tokens} tokens, ${self.estimated_cost_usd:.6f})"


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one request returned. `vectors` is keyed by position in the batch.

    `missing` lists the positions the response left out. `tokens` and
    `cost_usd` are the names the guard reads to settle the budget at the
    actual cost.
    """

    vectors: dict[int, list[float]]
    missing: list[int]
    tokens: int
    cost_usd: float
    request_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"BatchResult({len(self.vectors)} vectors, missing={self.missing}, "
            f"tokens={self.tokens}, cost_usd={self.cost_usd:.6f}, request_id={self.request_id!r})"
        )


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order, and which path served each.

    A mock-served input (`paths[i] == "mock"`, `reasons[i]` says why) holds a
    placeholder vector; callers persist the path so it can be redone.
    """

    vectors: list[list[float]]
    paths: list[Path]
    reasons: list[str | None]

    @property
    def degraded(self) -> bool:
        return "mock" in self.paths

    def __repr__(self) -> str:
        return f"Embeddings({len(self.vectors)} vectors, degraded={self.degraded})"


class Group(NamedTuple):
    """One caller's inputs for `OpenAIEmbeddings.embed_groups`, and the id its requests carry."""

    correlation_id: str
    texts: Sequence[str]


@dataclass(slots=True)
class EmbeddingStats:
    """Counters a pipeline or a test reads to see what the client did."""

    requests: int = 0
    """POST /embeddings requests sent."""
    rate_limited: int = 0
    """429 answers, `insufficient_quota` included."""
    truncated: int = 0
    """Inputs over MAX_INPUT_TOKENS cut to fit."""
    split: int = 0
    """Inputs over MAX_INPUT_TOKENS split into pieces."""
    retried_missing: int = 0
    """Inputs re-sent because a response left them out."""


@dataclass(frozen=True, slots=True)
class _Piece:
    index: int
    text: str
    tokens: int


class _Served(NamedTuple):
    vector: list[float]
    path: Path
    reason: str | None


class _Malformed(Exception):
    """A 2xx body that is not what the API promises; says what was wrong."""


class OpenAIEmbeddings:
    """The OpenAI embeddings client.

    `buckets` are the guard's (requests, tokens) buckets, either may be None:
    rate-limit headers pull them down to what the server reports (a 429's
    pause is the guard's to make). A tokens bucket smaller than 300,000 also caps the tokens per
    request, since the guard could never grant a batch bigger than it.
    """

    def __init__(
        self,
        config: OpenAIConfig,
        transport: Transport,
        *,
        model: str = DEFAULT_MODEL,
        dimensions: int | None = None,
        long_inputs: LongInputs = "truncate",
        buckets: tuple[Throttle | None, Throttle | None] | None = None,
    ) -> None:
        self.vector_dimensions = output_dimensions(model, dimensions)
        if long_inputs not in ("truncate", "split"):
            raise ValueError(f"long_inputs must be 'truncate' or 'split', got {long_inputs!r}")
        self.model = model
        self.dimensions = dimensions
        self.long_inputs = long_inputs
        self.stats = EmbeddingStats()
        self._config = config
        self._transport = transport
        self._buckets = buckets or (None, None)
        tokens_bucket = self._buckets[1]
        self._max_request_tokens = MAX_REQUEST_TOKENS
        if tokens_bucket is not None:
            self._max_request_tokens = min(MAX_REQUEST_TOKENS, int(tokens_bucket.capacity))
        self._url = config.base_url.rstrip("/") + "/embeddings"
        self._headers = _headers(config)

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbeddings(model={self.model!r}, dimensions={self.vector_dimensions}, "
            f"url={self._url!r})"
        )

    # -- planning ------------------------------------------------------------

    def plan(self, texts: Sequence[str]) -> list[Batch]:
        """The requests that embed `texts`: as few as the limits allow, in input order.

        Raises ValueError naming the first blank input, before anything else.
        Packing is next-fit: inputs go into the current request until the next
        would break 2,048 inputs or the token cap, which starts a new one. So
        every request but the last is full: 2,048 inputs, or more than the cap
        minus one longest input (300,000 - 8,191 = 291,809 tokens). Where tokens
        bind, that is at most ceil(total / 291,809) requests against a minimum of
        ceil(total / 300,000): the same count unless the total falls just under
        a multiple of 300,000 (within 2.7%).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"input {index} is empty or whitespace only; OpenAI refuses it")
        batches: list[Batch] = []
        current: list[_Piece] = []
        tokens = 0
        for index, text in enumerate(texts):
            for piece in self._pieces(index, text):
                full = len(current) == MAX_REQUEST_INPUTS
                if current and (full or tokens + piece.tokens > self._max_request_tokens):
                    batches.append(self._batch(current))
                    current, tokens = [], 0
                current.append(piece)
                tokens += piece.tokens
        if current:
            batches.append(self._batch(current))
        return batches

    def _pieces(self, index: int, text: str) -> list[_Piece]:
        """The input as it will be sent: whole, truncated, or split (blank pieces dropped)."""
        tokens = count_tokens(text)
        if tokens <= MAX_INPUT_TOKENS:
            return [_Piece(index, text, tokens)]
        if self.long_inputs == "truncate":
            parts = [truncate(text, MAX_INPUT_TOKENS)]
            self.stats.truncated += 1
            action = "truncated"
        else:
            parts = [part for part in split(text, MAX_INPUT_TOKENS) if part.strip()]
            self.stats.split += 1
            action = "split"
        emit(
            "openai.long_input",
            level="WARNING",
            provider=OPENAI,
            index=index,
            tokens=tokens,
            action=action,
            pieces=len(parts),
        )
        return [_Piece(index, part, count_tokens(part)) for part in parts]

    def _batch(self, pieces: Sequence[_Piece]) -> Batch:
        total = sum(piece.tokens for piece in pieces)
        return Batch(
            texts=tuple(piece.text for piece in pieces),
            indices=tuple(piece.index for piece in pieces),
            token_counts=tuple(piece.tokens for piece in pieces),
            estimated_cost_usd=embedding_cost_usd(self.model, total),
        )

    # -- one request ---------------------------------------------------------

    async def embed_batch(self, batch: Batch) -> BatchResult:
        """POST one batch. Raises `ProviderError` for every failure, never anything else.

        A response with fewer items than inputs is returned as it is, with the
        left-out positions in `missing`; one with a wrong item fails with no status
        (a failure whose charge stays: OpenAI billed the 200 it garbled).
        The request carries the bound correlation id (`providers.http.correlated`).
        """
        cid = correlation.current()
        payload: dict[str, Any] = {
            "model": self.model,
            "input": list(batch.texts),
            "encoding_format": "base64",
        }
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        request = HttpRequest("POST", self._url, correlated(self._headers), orjson.dumps(payload))
        self.stats.requests += 1
        timeout_s = self._config.read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._transport.send(request)
        except TimeoutError as exc:
            error = ProviderError(f"openai: no response within {timeout_s:g}s", code="timeout")
            raise reported(OPENAI, error, cid) from exc
        except ProviderError as exc:  # the transport got no answer at all
            raise reported(OPENAI, exc, cid) from None
        self._sync_buckets(response)
        if not 200 <= response.status < 300:
            raise reported(OPENAI, self._error(response), cid)
        request_id = response.headers.get("x-request-id")
        try:
            return self._decode(batch, response, request_id)
        except _Malformed as exc:
            # No status, as for no answer at all: OpenAI answered 200, so it billed the
            # request, and a known status would have the guard refund what was spent.
            error = ProviderError(
                f"openai: malformed response: {exc}",
                code="malformed_response",
                request_id=request_id,
            )
            raise reported(OPENAI, error, cid) from None

    def _error(self, response: HttpResponse) -> ProviderError:
        error = error_from_response(OPENAI, response, wall_time(), secrets=[self._config.api_key])
        if response.status == 429:
            self.stats.rate_limited += 1  # the guard pauses the buckets for its Retry-After
        elif response.status == 401:
            return ProviderError(
                f"{error.message} (check OPENAI_API_KEY)",
                status=401,
                code=error.code,
                request_id=error.request_id,
            )
        return error

    def _sync_buckets(self, response: HttpResponse) -> None:
        requests, tokens = self._buckets
        if requests is None and tokens is None:
            return
        limits = rate_limits(response.headers)
        # OpenAI's limits refill continuously, and x-ratelimit-reset-* is the time
        # until a limit is back to full, not until it grants again: a bucket at zero
        # refills at once. So only `remaining` is passed on. Passed as `sync`'s
        # reset, it paused a client that had just used the last token for up to a
        # minute, then restarted it from empty: a whole minute lost each time.
        if requests is not None:
            requests.sync(limits.remaining_requests, None)
        if tokens is not None:
            tokens.sync(limits.remaining_tokens, None)

    def _decode(self, batch: Batch, response: HttpResponse, request_id: str | None) -> BatchResult:
        try:
            document = response.json()
        except orjson.JSONDecodeError:
            raise _Malformed("the body is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            raise _Malformed('the body is not an object with a "data" list')
        usage = document.get("usage")
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        if not _is_count(total):
            raise _Malformed('"usage.total_tokens" is not a count')
        vectors: dict[int, list[float]] = {}
        for item in document["data"]:
            index = item.get("index") if isinstance(item, dict) else None
            if not _is_count(index) or index >= len(batch) or index in vectors:
                raise _Malformed(f"an item's index {index!r} is out of range or repeated")
            vectors[index] = self._vector(index, item.get("embedding"))
        missing = [position for position in range(len(batch)) if position not in vectors]
        if batch.texts and not vectors:
            # Nothing usable is not a partial answer: it must count against the breaker,
            # or a provider that always answers empty would never trip it.
            raise _Malformed("the response holds none of the inputs")
        cost = embedding_cost_usd(self.model, total)
        return BatchResult(vectors, missing, total, cost, request_id)

    def _vector(self, index: int, embedding: object) -> list[float]:
        """One item's vector, checked: base64 float32 (or, from a compatible server, floats)."""
        expected = self.vector_dimensions
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except binascii.Error:
                raise _Malformed(f"item {index}: the embedding is not base64") from None
            if len(raw) != 4 * expected:
                raise _Malformed(f"item {index}: {len(raw)} bytes, expected {4 * expected}")
            values = array.array("f", raw)
            if sys.byteorder == "big":
                values.byteswap()
            vector = values.tolist()
        elif isinstance(embedding, list) and all(
            isinstance(v, float | int) and not isinstance(v, bool) for v in embedding
        ):
            vector = [float(v) for v in embedding]
            if len(vector) != expected:
                raise _Malformed(f"item {index}: {len(vector)} dimensions, expected {expected}")
        else:
            raise _Malformed(f"item {index}: the embedding is neither base64 nor numbers")
        # One sum finds any NaN or infinity: either makes it non-finite, and
        # float32-range values cannot overflow a float64 sum of this length.
        if not math.isfinite(sum(vector)):
            raise _Malformed(f"item {index}: the embedding holds NaN or infinity")
        return vector

    # -- a whole list, through the router -------------------------------------

    async def embed(
        self,
        texts: Sequence[str],
        router: Router,
        *,
        capability: str = "embed",
        correlation_id: str | None = None,
    ) -> Embeddings:
        """Embed `texts` through `router`'s `capability`, one vector per input, in order.

        Every batch, and every re-send of inputs a response left out, is routed
        with the one correlation id: the caller's, else the bound one, else a
        new one. A split input's vector is the token-weighted
        mean of its pieces' vectors, scaled back to unit length as OpenAI's
        vectors are (the method of OpenAI's cookbook for long inputs).
        """
        cid = (
            correlation_id or correlation.current() or router.guard(capability).new_correlation_id()
        )
        [result] = await self.embed_groups([Group(cid, texts)], router, capability=capability)
        if isinstance(result, Exception):
            raise result
        return result

    async def embed_groups(
        self, groups: Sequence[Group], router: Router, *, capability: str = "embed"
    ) -> list[Embeddings | Exception]:
        """Embed several callers' inputs in shared requests: per group, its vectors or an error.

        All groups' inputs are planned as one list, so small groups fill
        requests together instead of each costing one. A request is routed
        under the correlation id of the group its first input belongs to, and
        one that carries several groups logs every group's id
        (`openai.shared_request`). A request that fails fails every group with
        an input in it, with its error; such groups' inputs are left out of
        the requests after it, and the other groups carry on; but a request the
        budget refused is sent again one group at a time, as the groups would
        have been alone. Budget and cost stay per request, as the guard
        reserves and settles each call.
        """
        owners: list[int] = []
        flat: list[str] = []
        for number, group in enumerate(groups):
            if isinstance(group.texts, str):
                raise TypeError("texts must be a sequence of strings, not one string")
            owners.extend([number] * len(group.texts))
            flat.extend(group.texts)
        starts = [0]
        for group in groups:
            starts.append(starts[-1] + len(group.texts))
        parts: dict[int, list[tuple[list[float], int]]] = {}
        paths: list[Path] = ["real"] * len(flat)
        reasons: list[str | None] = [None] * len(flat)
        errors: dict[int, Exception] = {}
        queue = deque(self.plan(flat))
        number = 0
        while queue:
            planned = queue.popleft()
            batch = self._without(planned, [owners[index] in errors for index in planned.indices])
            if not batch.texts:
                continue
            members = sorted({owners[index] for index in batch.indices})
            cid = groups[owners[batch.indices[0]]].correlation_id
            if len(members) > 1:
                emit(
                    "openai.shared_request",
                    provider=OPENAI,
                    batch=number,
                    inputs=len(batch),
                    correlation_id=cid,
                    correlation_ids=[groups[member].correlation_id for member in members],
                )
            try:
                served = await self._complete(batch, router, capability, cid, number)
            except Exception as exc:  # each group's caller decides what it means
                if isinstance(exc, BudgetExceeded) and len(members) > 1:
                    # Refused as a pack, each group may still fit on its own: without
                    # this, groups that fit a small budget one by one never would.
                    queue.extendleft(
                        self._without(batch, [owners[index] != member for index in batch.indices])
                        for member in reversed(members)
                    )
                else:
                    errors.update((member, exc) for member in members)
                continue
            finally:
                number += 1
            for position, (vector, path, reason) in served.items():
                index = batch.indices[position]
                parts.setdefault(index, []).append((vector, batch.token_counts[position]))
                if path == "mock":
                    paths[index] = "mock"
                    reasons[index] = reasons[index] or reason
        results: list[Embeddings | Exception] = []
        for number in range(len(groups)):
            span = range(starts[number], starts[number + 1])
            if number in errors:
                results.append(errors[number])
            else:
                results.append(
                    Embeddings(
                        [_mean(parts[index]) for index in span],
                        [paths[index] for index in span],
                        [reasons[index] for index in span],
                    )
                )
        return results

    def _without(self, batch: Batch, dropped: Sequence[bool]) -> Batch:
        """`batch` less the positions `dropped` marks; `batch` itself if it marks none."""
        if not any(dropped):
            return batch
        kept = zip(batch.indices, batch.texts, batch.token_counts, dropped, strict=True)
        return self._batch([_Piece(i, text, tokens) for i, text, tokens, drop in kept if not drop])

    async def _complete(
        self, batch: Batch, router: Router, capability: str, cid: str, number: int
    ) -> dict[int, _Served]:
        """Every position of `batch` served, re-sending only what a response left out."""
        served: dict[int, _Served] = {}
        pending, positions = batch, list(range(len(batch)))
        for attempt in range(MISSING_RETRIES + 1):
            routed = await router.call(
                capability,
                pending,
                units=pending.tokens,
                cost=pending.estimated_cost_usd,
                correlation_id=cid,
            )
            result: BatchResult = routed.value
            for position, vector in result.vectors.items():
                self._check_length(vector, capability)
                served[positions[position]] = _Served(vector, routed.path, routed.reason)
            if not result.missing:
                return served
            positions = [positions[position] for position in result.missing]
            if attempt < MISSING_RETRIES:
                self.stats.retried_missing += len(positions)
                emit(
                    "openai.partial_batch",
                    level="WARNING",
                    provider=OPENAI,
                    missing=len(positions),
                    batch=number,
                    retry=attempt + 1,
                    correlation_id=cid,
                )
                pending = self._batch(
                    [
                        _Piece(pending.indices[p], pending.texts[p], pending.token_counts[p])
                        for p in result.missing
                    ]
                )
        raise ProviderError(
            f"openai: {len(positions)} inputs still missing after {MISSING_RETRIES} re-sends",
            status=502,
            code="partial_batch",
        )

    def _check_length(self, vector: list[float], capability: str) -> None:
        """A mock registered with another model or size would corrupt the averages silently."""
        if len(vector) != self.vector_dimensions:
            raise ValueError(
                f"capability {capability!r} returned a {len(vector)}-dimension vector where "
                f"{self.model} gives {self.vector_dimensions}: register a mock with the same "
                "model and dimensions"
            )


def _headers(config: OpenAIConfig) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {config.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if config.organization:
        headers["OpenAI-Organization"] = config.organization
    if config.project:
        headers["OpenAI-Project"] = config.project
    return headers


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mean(parts: list[tuple[list[float], int]]) -> list[float]:
    """The token-weighted mean of the pieces' vectors, at unit length; one piece as it is."""
    if len(parts) == 1:
        return parts[0][0]
    total = sum(tokens for _, tokens in parts)
    weights = [tokens / total for _, tokens in parts]
    columns = zip(*(vector for vector, _ in parts), strict=True)
    mean = [sum(v * w for v, w in zip(column, weights, strict=True)) for column in columns]
    norm = math.hypot(*mean) or 1.0
    return [v / norm for v in mean]
