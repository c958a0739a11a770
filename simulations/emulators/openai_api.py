"""The emulated OpenAI Embeddings API: `POST /v1/embeddings`.

Order of checks: authentication, quota, the body (`openai_requests`), then
the per-model rate limits; only a request that passes all of them is
charged against the limits. Every answer carries `x-request-id`,
`openai-processing-ms`, `openai-version` and `openai-organization`;
successes and rate-limit 429s also carry the six `x-ratelimit-*` headers.

Limits are token buckets (see `ratelimit`), one pair per model as OpenAI's
limits are. A 429 says which limit ran out, in OpenAI's words, with
`retry-after-ms` and `Retry-After` (whole seconds, at least 1, rounded up);
a request larger than the whole TPM allowance and the quota-exhausted mode
get no Retry-After, because waiting cannot help.

With the plan's `shuffle_rate`, a 200's `data` items come in a random order
(each keeps its `index`), drawn from the emulator's own "openai:order"
generator, so the fault injector's draws are untouched.

Every admitted request is billed in the emulator's `BillBook` (see `bills`):
the ground truth of what OpenAI charged and which vectors reached the
client. With the plan's `lost_answer_rate` the handler bills and then
raises `AnswerLost`, so the core hangs the request: a timeout that cost
money. It is drawn from a generator of its own ("openai:lost_answers"),
once per admitted request whatever the rate.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from providers.transport import HttpResponse
from simulations.emulators.bills import BillBook
from simulations.emulators.faults import OpenAIPlan
from simulations.emulators.ids import Ids
from simulations.emulators.openai_requests import (
    EmbeddingRequest,
    OpenAIError,
    parse_embedding_request,
)
from simulations.emulators.ratelimit import MinuteBucket, go_duration
from simulations.emulators.routing import (
    AnswerLost,
    Incoming,
    Route,
    json_response,
    malform_generic,
    status_phrase,
)
from simulations.emulators.stats import CORRELATION_HEADER, UNCORRELATED, Stats
from simulations.emulators.vectors import embedding, to_base64

ORGANIZATION: Final = "org-emulator"
RATE_LIMIT_DOCS: Final = "Visit https://platform.openai.com/account/rate-limits to learn more."
NO_KEY: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)
QUOTA: Final = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
SERVER_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    ),
    502: ("Bad gateway.", "cf_bad_gateway"),
    503: ("The engine is currently overloaded, please try again later", "server_error"),
}


def _masked(key: str) -> str:
    """How OpenAI echoes a wrong key: enough to recognise it, not enough to use it."""
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}" if len(key) > 8 else "*" * len(key)


def _retry_headers(wait_s: float) -> dict[str, str]:
    return {
        "retry-after-ms": str(max(1, math.ceil(wait_s * 1000.0))),
        "Retry-After": str(max(1, math.ceil(wait_s))),
    }


class OpenAIApi:
    """OpenAI's embeddings endpoint, its limits and its error shapes."""

    name: Final = "openai"

    def __init__(self, ids: Ids, api_key: str | None, stats: Stats) -> None:
        self._ids = ids
        self._api_key = api_key
        self._stats = stats
        self._plan = OpenAIPlan()
        self._order = random.Random(0)
        self._lost = random.Random(0)
        self.bills = BillBook()
        self._buckets: dict[str, tuple[MinuteBucket, MinuteBucket]] = {}
        self._charged: dict[int, int] = {}
        self.routes: Sequence[Route] = (Route("POST", "/v1/embeddings", self._embeddings),)

    def configure(self, plan: OpenAIPlan, rng: random.Random, lost: random.Random) -> None:
        """Adopt `plan`'s limits (every model's buckets start full again); `rng` shuffles,
        `lost` draws the lost answers."""
        self._plan = plan
        self._order = rng
        self._lost = lost
        self._buckets.clear()

    # -- the endpoint -------------------------------------------------------

    async def _embeddings(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        now = asyncio.get_running_loop().time()
        headers = self._headers(incoming.received_at, now)
        try:
            self._authenticate(incoming)
            if self._plan.quota_exhausted:
                raise OpenAIError(429, QUOTA, "insufficient_quota", code="insufficient_quota")
            request = parse_embedding_request(incoming.body)
            headers.update(self._admit(request, now))
        except OpenAIError as error:
            return json_response(error.status, error.document(), {**headers, **error.headers})
        self._charged[id(incoming)] = request.total_tokens
        bill = self.bills.bill(
            request,
            at=now,
            correlation_id=incoming.headers.get(CORRELATION_HEADER, UNCORRELATED),
            request_id=headers["x-request-id"],
        )
        if self._lost.random() < self._plan.lost_answer_rate:
            self.bills.lost(bill)
            raise AnswerLost
        result = self._result(request)
        # One draw per 200 whatever the rate, so the same traffic replays the same orders.
        if self._order.random() < self._plan.shuffle_rate:
            self._order.shuffle(result["data"])
            self._stats.fault(self.name, "shuffled")
        return json_response(200, result, headers)

    def charged(self, incoming: Incoming) -> int:
        """The tokens `incoming` was charged to the rate limits (0 if none), then forgotten.

        The emulator asks once, when the request is over. A request is keyed by
        identity because it has no id of its own, and it is alive until then, so
        no other request can share its key.
        """
        return self._charged.pop(id(incoming), 0)

    def _authenticate(self, incoming: Incoming) -> None:
        scheme, _, key = incoming.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(401, NO_KEY)
        if self._api_key is not None and key.strip() != self._api_key:
            raise OpenAIError(
                401,
                f"Incorrect API key provided: {_masked(key.strip())}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _admit(self, request: EmbeddingRequest, now: float) -> dict[str, str]:
        """Charge the request to its model's limits; the x-ratelimit headers, or a 429."""
        plan, model, tokens = self._plan, request.model, request.total_tokens
        if model not in self._buckets:
            self._buckets[model] = (MinuteBucket(plan.rpm, now), MinuteBucket(plan.tpm, now))
        requests_bucket, tokens_bucket = self._buckets[model]
        where = f"for {model} in organization {ORGANIZATION}"
        if tokens > plan.tpm:
            raise OpenAIError(
                429,
                f"Request too large {where} on tokens per min (TPM): Limit {plan.tpm}, "
                f"Requested {tokens}. The input or output tokens must be reduced in order to "
                f"run successfully. {RATE_LIMIT_DOCS}",
                "tokens",
                code="rate_limit_exceeded",
                headers=self._limit_headers(model, now),
            )
        for bucket, units, unit, kind in (
            (requests_bucket, 1, "requests per min (RPM)", "requests"),
            (tokens_bucket, tokens, "tokens per min (TPM)", "tokens"),
        ):
            wait_s = bucket.wait_for(units, now)
            if wait_s > 0:
                used = round(bucket.limit - bucket.level(now))
                raise OpenAIError(
                    429,
                    f"Rate limit reached {where} on {unit}: Limit {bucket.limit}, Used {used}, "
                    f"Requested {units}. Please try again in {go_duration(wait_s)}. "
                    f"{RATE_LIMIT_DOCS}",
                    kind,
                    code="rate_limit_exceeded",
                    headers={**self._limit_headers(model, now), **_retry_headers(wait_s)},
                )
        requests_bucket.take(1, now)
        tokens_bucket.take(tokens, now)
        return self._limit_headers(model, now)

    def _limit_headers(self, model: str, now: float) -> dict[str, str]:
        headers = {}
        for bucket, unit in zip(self._buckets[model], ("requests", "tokens"), strict=True):
            headers[f"x-ratelimit-limit-{unit}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, math.floor(bucket.level(now))))
            headers[f"x-ratelimit-reset-{unit}"] = go_duration(bucket.reset_after(now))
        return headers

    def _headers(self, received_at: float, now: float) -> dict[str, str]:
        return {
            "x-request-id": self._ids.request_id(),
            "openai-processing-ms": str(round((now - received_at) * 1000.0)),
            "openai-version": "2020-10-01",
            "openai-organization": ORGANIZATION,
        }

    @staticmethod
    def _result(request: EmbeddingRequest) -> dict[str, Any]:
        data = []
        for index, item in enumerate(request.inputs):
            vector = embedding(request.model, item, request.native_dims, request.dimensions)
            encoded = to_base64(vector) if request.encoding_format == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = request.total_tokens
        return {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- faults -------------------------------------------------------------

    def fault_response(self, status: int, incoming: Incoming) -> HttpResponse:
        """An injected error in OpenAI's shape; an injected 429 asks for a 1 s wait."""
        headers = self._headers(incoming.received_at, asyncio.get_running_loop().time())
        extra: dict[str, str] = {}
        if status == 429:
            error = OpenAIError(
                429,
                f"Rate limit reached for requests. {RATE_LIMIT_DOCS}",
                "requests",
                code="rate_limit_exceeded",
            )
            extra = _retry_headers(1.0)
        elif status in SERVER_ERRORS:
            message, kind = SERVER_ERRORS[status]
            error = OpenAIError(status, message, kind)
        else:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            error = OpenAIError(status, status_phrase(status), kind)
        return json_response(status, error.document(), {**headers, **extra})

    def not_found(self, incoming: Incoming) -> HttpResponse:
        error = OpenAIError(404, f"Invalid URL ({incoming.method} {incoming.path})")
        now = asyncio.get_running_loop().time()
        return json_response(404, error.document(), self._headers(incoming.received_at, now))

    def malform(self, response: HttpResponse, kind: str) -> HttpResponse:
        """Also `wrong_dims` (each vector one value short) and `missing_item` (last one gone).

        The request's bill (found by the answer's `x-request-id`) notes which
        vectors still arrive intact: none, or a `missing_item` answer's others.
        """
        request_id = response.headers.get("x-request-id")
        if kind not in ("wrong_dims", "missing_item"):
            self.bills.malformed(request_id, frozenset())
            return malform_generic(response, kind)
        document = orjson.loads(response.body)
        if kind == "missing_item":
            document["data"] = document["data"][:-1]
        else:
            for item in document["data"]:
                vector = item["embedding"]
                item["embedding"] = (
                    base64.b64encode(base64.b64decode(vector)[:-4]).decode("ascii")
                    if isinstance(vector, str)
                    else vector[:-1]
                )
        kept = {item["index"] for item in document["data"]} if kind == "missing_item" else set()
        self.bills.malformed(request_id, frozenset(kept))
        return HttpResponse(response.status, response.headers, orjson.dumps(document))
