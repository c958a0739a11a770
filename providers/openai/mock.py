"""A deterministic stand-in for `OpenAIEmbeddings.embed_batch`, at zero cost.

The router serves it in MOCK mode and as HYBRID's fallback, so it answers
exactly like the real client: a `BatchResult` with one unit vector per
input, of the model's dimension. The same text always gives the same vector
(seeded from the text's SHA-256), on any machine and in any process, so a
degraded run is reproducible and a test can predict it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import struct
from collections.abc import Iterable, Iterator

from providers.openai.client import DEFAULT_MODEL, Batch, BatchResult
from providers.pricing import output_dimensions


class MockEmbedder:
    """Unit vectors from each text's hash; optional latency and scripted failures.

    `failures` is consumed one entry per call: an exception is raised, None
    lets the call succeed; once it runs out every call succeeds.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        dimensions: int | None = None,
        *,
        latency_s: float = 0.0,
        failures: Iterable[BaseException | None] | None = None,
    ) -> None:
        self.model = model
        self.vector_dimensions = output_dimensions(model, dimensions)
        self.latency_s = latency_s
        self.calls = 0
        self._failures: Iterator[BaseException | None] = iter(failures or ())

    def __repr__(self) -> str:
        return f"MockEmbedder(model={self.model!r}, dimensions={self.vector_dimensions})"

    def vector(self, text: str) -> list[float]:
        """The unit vector `text` always gets: uniform int32s from its hash, normalised."""
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
        raw = random.Random(seed).randbytes(4 * self.vector_dimensions)
        values = struct.unpack(f"<{self.vector_dimensions}i", raw)
        norm = math.hypot(*values) or 1.0
        return [value / norm for value in values]

    async def embed_batch(self, batch: Batch) -> BatchResult:
        """Embed `batch` as the real client would, billing nothing.

        `tokens` is what the batch holds (what was embedded); `cost_usd` is 0.
        """
        self.calls += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        failure = next(self._failures, None)
        if failure is not None:
            raise failure
        vectors = {position: self.vector(text) for position, text in enumerate(batch.texts)}
        return BatchResult(vectors, [], batch.tokens, 0.0)
