"""Vectors as little-endian float32 bytes: 4 bytes a dimension instead of ~20 as JSON.

float32 is what the providers send (OpenAI's base64 encoding is exactly this
layout), so storing it loses nothing they gave us. `struct`'s "<f" fixes the
size and byte order on every platform, so a file moves between machines.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence


def pack_f32(vector: Sequence[float]) -> bytes:
    """The vector as float32 little-endian bytes; values round to the nearest float32.

    Raises `OverflowError` for a value beyond float32's range.
    """
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_f32(blob: bytes) -> list[float]:
    """The inverse of `pack_f32`."""
    if len(blob) % 4:
        raise ValueError(f"a float32 vector needs a multiple of 4 bytes, got {len(blob)}")
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))
