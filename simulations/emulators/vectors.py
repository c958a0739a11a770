"""Deterministic stand-in embeddings, exact in both wire formats.

A vector depends only on (model, input): its bytes are SHAKE-256 output
seeded with the SHA-256 of the model name and the text (or token ids), read
as int16 and scaled to unit length. A `dimensions` request takes the first
n values of the model's native vector and rescales them, which is how
OpenAI's text-embedding-3 shortening behaves. Values are rounded to float32
before they are sent, so the `float` and `base64` formats carry identical
numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence

EmbeddingInput = str | Sequence[int]
"""One input: text, or pre-tokenized ids."""


def _seed(model: str, item: EmbeddingInput) -> bytes:
    if isinstance(item, str):
        payload = b"text\0" + item.encode("utf-8")
    else:
        payload = b"tokens\0" + b",".join(str(token).encode() for token in item)
    return hashlib.sha256(model.encode() + b"\0" + payload).digest()


def embedding(model: str, item: EmbeddingInput, native_dims: int, dims: int) -> list[float]:
    """The unit-length float32 vector for `item`, `dims` long (`dims <= native_dims`)."""
    raw = hashlib.shake_256(_seed(model, item)).digest(2 * native_dims)
    values = struct.unpack(f"<{dims}h", raw[: 2 * dims])
    norm = math.hypot(*values) or 1.0
    scaled = [value / norm for value in values]
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *scaled)))


def to_base64(vector: Sequence[float]) -> str:
    """Little-endian float32, base64: what OpenAI sends for `encoding_format: base64`."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
