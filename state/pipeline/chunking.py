"""Cutting parsed documents into token-measured chunks for embedding.

Chunks are measured in cl100k_base tokens (`providers.tokens`), the unit the
embedder's window and price are counted in, so a chunk that fits here fits
there. Consecutive chunks overlap, so a passage cut by a chunk boundary is
still seen whole by one of them. Cuts prefer the document's own structure,
paragraphs then sentences, so a chunk tends to hold whole thoughts.

The rules, applied in this order:

1. Line endings are normalised: CRLF and lone CR become LF. The tokens are
   `providers.tokens.encode` of the normalised text, and `Chunk.start_token`
   indexes that sequence.
2. Empty or whitespace-only input gives no chunks.
3. A *cut* is a boundary between two of the text's tokens that is also a
   boundary between two characters (code points): a few tokens hold part of a
   multi-byte character, and the boundaries inside it are not cuts. Chunks
   begin and end only at cuts, so no token and no character is ever split, and
   a chunk's text is exactly the text between its two cuts. (A grapheme made
   of several code points, such as an emoji ZWJ sequence, can be split
   between them.)
4. Every cut has a rank, the first of these that applies. A cut *touches* a
   run of whitespace when it lies inside it or at either edge of it.
   - It touches a run holding a newline that ends a markdown heading line (up
     to 3 spaces, 1 to 6 `#`, then a space or the line's end): *line*, blank
     line or not, because a heading belongs with the text under it rather
     than at the end of a chunk.
   - It touches a run holding a blank line (two or more newlines), or it is
     the end of the text: *paragraph*.
   - It touches a run that follows a sentence end: `.`, `!`, `?` or a CJK
     full stop, exclamation or question mark (U+3002, U+FF01, U+FF1F), then
     any closing quotes or brackets; or it directly follows a CJK sentence
     end, since CJK text puts no space after a sentence: *sentence*.
   - It touches a run holding a newline: *line*.
   - It touches any other run: *word*.
   - Otherwise: *token*.
   From best to worst: paragraph, sentence, line, word, token.
5. A chunk starting at token `s`, after a chunk that ended at token `p` (for
   the first chunk `s = p = 0`), ends at the first cut `k` with
   `p < k <= s + size_tokens` whose text, encoded on its own, counts at most
   `size_tokens` tokens, trying the cuts in this order: those with
   `k >= s + size_tokens // 2` before the earlier ones (a chunk is not cut
   when less than half full just to end on a paragraph); within each group,
   best rank first; within a rank, latest first. The text is recounted
   because a piece encoded on its own can take more tokens than its slice of
   the whole text's tokens, and it is the piece that the embedder counts.
6. If no such cut fits, which in practice happens only when the overlap is a
   few tokens short of the size, the chunk ends at the first cut after `p` and
   starts at the earliest cut from `s` on that lets it fit: the overlap gives
   way, the size never does. (At worst it starts at `p`: a piece between two
   adjacent cuts is one token, or a few sharing one character, far below the
   16-token minimum size.)
7. The next chunk starts at the latest cut at or before `e - overlap_tokens`,
   `e` being where this chunk ended, or at the first cut after `s` if that is
   not past `s`. So consecutive chunks share exactly `overlap_tokens` tokens,
   a few more when that point falls inside a character.
8. The chunk that reaches the end of the text is the last. A chunk whose text
   is only whitespace is dropped (an embedding of nothing is refused), so
   every token outside such runs is in some chunk; `Chunk.index` counts the
   chunks kept.
9. Nothing else is consulted (no randomness, clock, hashing or set order):
   the same text and policy always give the same chunks.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from providers.tokens import count_tokens, encode, encoding

MIN_SIZE_TOKENS: Final = 16
"""Below this a chunk holds a few words, too little to embed usefully (and rule 6 needs room)."""

_CLOSERS: Final = "\"'\u201d\u2019)\\]\u300d\u300f\uff09"
"""Closing quotes and brackets that may follow a sentence end: ASCII, typographic and CJK."""

_GAPS: Final = re.compile(
    rf"(?P<end>[.!?\u3002\uff01\uff1f][{_CLOSERS}]*)?(?P<space>\s+)"
    rf"|[\u3002\uff01\uff1f][{_CLOSERS}]*"
)
"""A run of whitespace, with the sentence end before it if any; or a CJK sentence end."""

_HEADING: Final = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
"""An ATX heading's opening, matched at a line's start."""


class _Rank(IntEnum):
    """How good a place a cut is to end a chunk: lower is better (rule 4)."""

    PARAGRAPH = 0
    SENTENCE = 1
    LINE = 2
    WORD = 3
    TOKEN = 4


@dataclass(frozen=True, slots=True)
class ChunkingPolicy:
    """How big chunks are and how much consecutive ones share, both in tokens.

    The defaults suit retrieval: 512 tokens is a few paragraphs, far below the
    embedding models' 8,191-token limit, and a 64-token overlap carries a
    sentence or two across each cut.
    """

    size_tokens: int = 512
    overlap_tokens: int = 64

    def __post_init__(self) -> None:
        if self.size_tokens < MIN_SIZE_TOKENS:
            raise ValueError(
                f"ChunkingPolicy.size_tokens must be at least {MIN_SIZE_TOKENS}, "
                f"got {self.size_tokens}"
            )
        if not 0 <= self.overlap_tokens < self.size_tokens:
            raise ValueError(
                "ChunkingPolicy.overlap_tokens must be at least 0 and less than "
                f"size_tokens ({self.size_tokens}), got {self.overlap_tokens}"
            )


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk: `text` is exactly the normalised text between two cuts.

    `tokens` is `count_tokens(text)`, what the embedder will count (at most
    the policy's size). `start_token` is the index of the chunk's first token
    among the whole normalised text's tokens.
    """

    index: int
    text: str
    tokens: int
    start_token: int


def chunk(markdown: str, policy: ChunkingPolicy) -> list[Chunk]:
    """The chunks of `markdown` under `policy`, by the rules in this module's docstring."""
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    document = _Document(text)
    chunks: list[Chunk] = []
    start = end = 0
    while True:
        start, end = _window(document, policy.size_tokens, start, end)
        piece = document.text(start, end)
        if piece.strip():
            chunks.append(Chunk(len(chunks), piece, count_tokens(piece), start))
        if end == document.length:
            return chunks
        start = _restart(document, policy.overlap_tokens, start, end)


class _Document:
    """The normalised text's tokens, with its cuts (rule 3) and their ranks (rule 4)."""

    def __init__(self, text: str) -> None:
        self._data = text.encode()
        tokens = encode(text)
        self.length = len(tokens)
        token_bytes = encoding().decode_single_token_bytes
        self._offsets = list(
            itertools.accumulate((len(token_bytes(token)) for token in tokens), initial=0)
        )
        self.cuts = [
            index
            for index, offset in enumerate(self._offsets)
            if offset == len(self._data) or self._data[offset] & 0xC0 != 0x80  # not a UTF-8 tail
        ]
        ranks = _ranks_by_byte(text)
        self.rank = {index: ranks.get(self._offsets[index], _Rank.TOKEN) for index in self.cuts}
        self.rank[self.length] = _Rank.PARAGRAPH

    def text(self, start: int, end: int) -> str:
        return self._data[self._offsets[start] : self._offsets[end]].decode()

    def fits(self, start: int, end: int, size: int) -> bool:
        return count_tokens(self.text(start, end)) <= size

    def cuts_in(self, after: int, through: int) -> list[int]:
        """The cuts `k` with `after < k <= through`, in order."""
        low = bisect.bisect_right(self.cuts, after)
        return self.cuts[low : bisect.bisect_right(self.cuts, through, lo=low)]

    def next_cut(self, after: int) -> int:
        return self.cuts[bisect.bisect_right(self.cuts, after)]


def _ranks_by_byte(text: str) -> dict[int, _Rank]:
    """The rank of every byte offset that a whitespace run or a CJK sentence end touches."""
    ranks: dict[int, _Rank] = {}
    char = byte = 0  # walks forward: matches come in order, so converting is linear

    def byte_at(position: int) -> int:
        nonlocal char, byte
        byte += len(text[char:position].encode())
        char = position
        return byte

    for match in _GAPS.finditer(text):
        space = match["space"]
        if space is None:  # a CJK sentence end with no space after it
            ranks[byte_at(match.end())] = _Rank.SENTENCE
            continue
        newlines = space.count("\n")
        if newlines and _after_heading(text, match.start("space")):
            rank = _Rank.LINE
        elif newlines >= 2:
            rank = _Rank.PARAGRAPH
        elif match["end"] is not None:
            rank = _Rank.SENTENCE
        elif newlines:
            rank = _Rank.LINE
        else:
            rank = _Rank.WORD
        for position in range(match.start("space"), match.end()):
            ranks[byte_at(position)] = rank
        ranks[byte_at(match.end())] = rank
    return ranks


def _after_heading(text: str, position: int) -> bool:
    """Is the line that ends at `position` a markdown heading?"""
    return _HEADING.match(text, text.rfind("\n", 0, position) + 1, position) is not None


def _window(document: _Document, size: int, start: int, previous_end: int) -> tuple[int, int]:
    """Where the chunk after `previous_end` starts and ends (rules 5 and 6)."""
    half = start + size // 2
    candidates = sorted(
        document.cuts_in(previous_end, start + size),
        key=lambda cut: (cut < half, document.rank[cut], -cut),
    )
    for end in candidates:
        if document.fits(start, end, size):
            return start, end
    end = document.next_cut(previous_end)
    starts = document.cuts_in(start - 1, previous_end)
    return next((cut for cut in starts if document.fits(cut, end, size)), previous_end), end


def _restart(document: _Document, overlap: int, start: int, end: int) -> int:
    """Where the chunk after [start, end) starts (rule 7)."""
    target = end - overlap
    if target > start:
        restart = document.cuts[bisect.bisect_right(document.cuts, target) - 1]
        if restart > start:
            return restart
    return document.next_cut(start)
