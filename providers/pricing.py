"""The one table of provider prices, and the embedding models' shapes.

Estimates reserved against a budget and actual costs settled from a
response both come from here, so the two can never disagree on a price.
These are list (pay-as-you-go) prices, not OpenAI Batch API prices: the
research notes on the provider protocols (sections 1.4 and 2.6) give sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """One OpenAI embedding model: its price and the vectors it returns."""

    name: str
    usd_per_million_tokens: float
    native_dimensions: int
    dimensions_allowed: bool
    """Whether the request may ask for shorter vectors (`dimensions`)."""


EMBEDDING_MODELS: Final[Mapping[str, EmbeddingModel]] = MappingProxyType(
    {
        model.name: model
        for model in (
            EmbeddingModel("text-embedding-3-small", 0.02, 1536, True),
            EmbeddingModel("text-embedding-3-large", 0.13, 3072, True),
            EmbeddingModel("text-embedding-ada-002", 0.10, 1536, False),
        )
    }
)

USD_PER_CREDIT: Final = 1.25 / 1000
"""LlamaParse pay-as-you-go: $1.25 per 1,000 credits."""

CREDITS_PER_PAGE: Final[Mapping[str, int]] = MappingProxyType(
    {"fast": 1, "cost_effective": 3, "agentic": 10, "agentic_plus": 45}
)
"""LlamaParse credits per page by parse tier (third-party figures: the official table
was not found; LLAMA_CLOUD_CREDITS_PER_PAGE overrides them)."""

DEFAULT_PARSE_TIER: Final = "cost_effective"
"""The tier estimates assume unless told otherwise; a parse on another tier passes its own."""


def embedding_model(model: str) -> EmbeddingModel:
    """The table row for `model`; ValueError naming the known models if there is none."""
    try:
        return EMBEDDING_MODELS[model]
    except KeyError:
        known = ", ".join(EMBEDDING_MODELS)
        raise ValueError(f"unknown embedding model {model!r} (known: {known})") from None


def output_dimensions(model: str, dimensions: int | None) -> int:
    """The length of the vectors `model` returns when asked for `dimensions` (None: native).

    Raises ValueError, before any request, for what the API would refuse:
    `dimensions` on a model that does not take it, or outside 1..native.
    """
    row = embedding_model(model)
    if dimensions is None:
        return row.native_dimensions
    if not row.dimensions_allowed:
        raise ValueError(f"{model} does not accept dimensions; leave it unset")
    if not 1 <= dimensions <= row.native_dimensions:
        raise ValueError(
            f"dimensions for {model} must be 1..{row.native_dimensions}, got {dimensions}"
        )
    return dimensions


def embedding_cost_usd(model: str, tokens: int) -> float:
    """What embedding `tokens` tokens with `model` costs at list price."""
    return tokens * embedding_model(model).usd_per_million_tokens / 1_000_000


def parse_cost_usd(
    pages: int,
    credits_per_page: float | None = None,
    tier: str = DEFAULT_PARSE_TIER,
    *,
    usd_per_credit: float = USD_PER_CREDIT,
) -> float:
    """What parsing `pages` pages costs: at `credits_per_page` if given, else at `tier`'s rate.

    `usd_per_credit` is the plan's price (LLAMA_CLOUD_USD_PER_CREDIT); the
    default is pay-as-you-go.
    """
    if pages < 0:
        raise ValueError(f"pages must be at least 0, got {pages}")
    if credits_per_page is None:
        try:
            credits_per_page = CREDITS_PER_PAGE[tier]
        except KeyError:
            known = ", ".join(CREDITS_PER_PAGE)
            raise ValueError(f"unknown LlamaParse tier {tier!r} (known: {known})") from None
    return pages * credits_per_page * usd_per_credit
