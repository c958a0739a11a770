"""Chunking: token-measured, overlapping, cut where the text has its own boundaries."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.tokens import count_tokens, encode, encoding
from simulations.samples import FOLDER
from state.pipeline.chunking import MIN_SIZE_TOKENS, Chunk, ChunkingPolicy, chunk

REPO = Path(__file__).resolve().parent.parent
SAMPLE = FOLDER / "circuit-breakers.md"
BANG, QUESTION = "\uff01", "\uff1f"
"""The full-width exclamation and question marks that end CJK sentences."""


class Layout:
    """The whole text's tokens, where each starts, and which boundaries are between characters."""

    def __init__(self, text: str) -> None:
        self.data = text.encode()
        self.tokens = encode(text)
        token_bytes = encoding().decode_single_token_bytes
        self.offsets = list(
            itertools.accumulate((len(token_bytes(t)) for t in self.tokens), initial=0)
        )
        self.cuts = [
            i
            for i, offset in enumerate(self.offsets)
            if offset == len(self.data) or self.data[offset] & 0xC0 != 0x80
        ]

    def text(self, start: int, end: int) -> str:
        return self.data[self.offsets[start] : self.offsets[end]].decode()

    def spans(self, chunks: list[Chunk]) -> list[tuple[int, int]]:
        """Each chunk's [start, end) in tokens, checking that its text is exactly that slice."""
        spans = []
        for piece in chunks:
            start = piece.start_token
            end = self.offsets.index(self.offsets[start] + len(piece.text.encode()), start)
            assert start in self.cuts
            assert end in self.cuts
            assert self.text(start, end) == piece.text
            spans.append((start, end))
        return spans


def chunk_layout(text: str, policy: ChunkingPolicy) -> tuple[list[Chunk], Layout]:
    return chunk(text, policy), Layout(text)


WORDS = ["breaker", "open", "budget", "retry", "jitter", "token", "a", "the", "of", "429"]
ODD = ["😀", "👨\u200d👩\u200d👧", "中文", "日本語の文", "한국어", "é", "\u0301", "𠀋", "\t", "  "]
ENDS = [" ", " ", " ", ". ", "! ", "? ", ", ", "\n", "\n\n", "。", "\n\n\n"]

prose = st.lists(
    st.tuples(st.sampled_from(WORDS + ODD), st.sampled_from(ENDS)), min_size=1, max_size=400
).map(lambda parts: "".join(word + end for word, end in parts))
"""Words, emoji, CJK and combining marks between spaces, sentence ends and blank lines."""

texts = st.one_of(prose, st.text(min_size=1, max_size=600))


@st.composite
def policies(
    draw: st.DrawFn, min_size: int = MIN_SIZE_TOKENS, up_to_half: bool = False
) -> ChunkingPolicy:
    """Any valid policy; `up_to_half` keeps the overlap at most half the size."""
    size = draw(st.integers(min_size, 300))
    return ChunkingPolicy(size, draw(st.integers(0, size // 2 if up_to_half else size - 1)))


def test_policy_defaults() -> None:
    assert ChunkingPolicy() == ChunkingPolicy(size_tokens=512, overlap_tokens=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChunkingPolicy().size_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("size", "overlap", "field"),
    [
        (15, 0, "size_tokens"),
        (0, 0, "size_tokens"),
        (16, -1, "overlap_tokens"),
        (16, 16, "overlap_tokens"),
    ],
)
def test_policy_validation_names_the_field(size: int, overlap: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ChunkingPolicy(size, overlap)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \r\n", "\u3000\u00a0"])
def test_blank_input_gives_no_chunks(text: str) -> None:
    assert chunk(text, ChunkingPolicy()) == []


def test_short_text_is_one_chunk() -> None:
    text = "A breaker that opens\nstays open until its cooldown ends.\n"
    assert chunk(text, ChunkingPolicy()) == [Chunk(0, text, count_tokens(text), 0)]


@given(texts, policies())
def test_chunks_fit_cover_every_token_in_order(text: str, policy: ChunkingPolicy) -> None:
    text = text.replace("\r", "\n")  # the chunker normalises; the layout must see the same text
    chunks, layout = chunk_layout(text, policy)
    if not text.strip():
        assert chunks == []
        return
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for piece in chunks:
        assert piece.tokens == count_tokens(piece.text) <= policy.size_tokens
        assert piece.text.strip()
    spans = layout.spans(chunks)
    for (start, end), (next_start, next_end) in itertools.pairwise(spans):
        assert start < next_start
        assert end < next_end
        # Between two chunks only a dropped whitespace-only window may be left out.
        assert next_start <= end or not layout.text(end, next_start).strip()
    assert not layout.text(0, spans[0][0]).strip()
    assert not layout.text(spans[-1][1], len(layout.tokens)).strip()


@given(prose, policies(min_size=32, up_to_half=True))
def test_consecutive_chunks_overlap_by_the_policy(text: str, policy: ChunkingPolicy) -> None:
    chunks, layout = chunk_layout(text, policy)
    spans = layout.spans(chunks)
    for (first, second), ((previous_start, end), (start, _)) in zip(
        itertools.pairwise(chunks), itertools.pairwise(spans), strict=True
    ):
        # Rule 7: the latest boundary between characters at or before end - overlap,
        # or, when that is not past the previous start, the first boundary after it.
        latest = layout.cuts[bisect.bisect_right(layout.cuts, end - policy.overlap_tokens) - 1]
        if latest <= previous_start:
            latest = layout.cuts[bisect.bisect_right(layout.cuts, previous_start)]
        assert start == latest
        shared = layout.text(start, end)
        assert first.text.endswith(shared)
        assert second.text.startswith(shared)


def test_a_multi_token_character_at_the_start_moves_the_next_chunk_past_it() -> None:
    # Found by Hypothesis: the family emoji is several tokens, so end - overlap
    # falls inside it and the next chunk starts at the first cut after it.
    text = "\U0001f468\u200d\U0001f469\u200d\U0001f467 breaker breaker breaker\n\n" + (
        "breaker breaker breaker breaker breaker. breaker. breaker. \U0002000b. "
    )
    chunks, layout = chunk_layout(text, ChunkingPolicy(size_tokens=32, overlap_tokens=15))
    spans = layout.spans(chunks)
    assert spans[1][0] == layout.cuts[1] > spans[0][0]
    assert chunks[1].text.startswith("\u200d")


def test_long_text_overlaps_by_exactly_the_overlap() -> None:
    text = SAMPLE.read_text()
    policy = ChunkingPolicy(size_tokens=200, overlap_tokens=30)
    chunks, layout = chunk_layout(text, policy)
    assert len(chunks) > 5
    for (_, end), (start, _) in itertools.pairwise(layout.spans(chunks)):
        assert end - start == 30  # ASCII: every token boundary is between characters


@given(texts, policies())
def test_same_input_same_chunks(text: str, policy: ChunkingPolicy) -> None:
    assert chunk(text, policy) == chunk(text, policy)


def test_chunks_do_not_depend_on_hash_seed() -> None:
    """Another process with another string-hash seed cuts the sample identically."""
    script = (
        "import pathlib, sys; from state.pipeline.chunking import ChunkingPolicy, chunk; "
        "print(repr(chunk(pathlib.Path(sys.argv[1]).read_text(), ChunkingPolicy(96, 12))))"
    )
    here = repr(chunk(SAMPLE.read_text(), ChunkingPolicy(96, 12)))
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(SAMPLE)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.stdout.strip() == here


@given(prose, policies())
def test_line_endings_do_not_matter(text: str, policy: ChunkingPolicy) -> None:
    assert chunk(text.replace("\n", "\r\n"), policy) == chunk(text, policy)
    assert chunk(text.replace("\n", "\r"), policy) == chunk(text, policy)


def paragraphs(count: int) -> list[str]:
    return [
        f"Paragraph {n} says that a breaker opens. " + "It waits, then probes. " * (n % 4 + 1)
        for n in range(count)
    ]


def test_short_paragraphs_are_cut_at_blank_lines() -> None:
    text = "\n\n".join(paragraphs(40)) + "\n"
    chunks = chunk(text, ChunkingPolicy(size_tokens=120, overlap_tokens=0))
    assert len(chunks) > 5
    assert "".join(c.text for c in chunks) == text
    for piece in chunks:
        assert piece.text.startswith("Paragraph ")
        assert piece.text.endswith("\n\n") or piece is chunks[-1]


def test_overlap_does_not_move_the_end_off_a_blank_line() -> None:
    text = "\n\n".join(paragraphs(40))
    chunks = chunk(text, ChunkingPolicy(size_tokens=120, overlap_tokens=20))
    assert all(c.text.endswith("\n\n") for c in chunks[:-1])


def test_within_a_long_paragraph_cuts_fall_at_sentence_ends() -> None:
    text = " ".join(f"Sentence {n} is about retries and jitter, mostly." for n in range(200))
    chunks = chunk(text, ChunkingPolicy(size_tokens=64, overlap_tokens=8))
    assert len(chunks) > 10
    assert all(c.text.endswith("mostly.") for c in chunks[:-1])


def test_a_paragraph_break_early_in_the_window_is_passed_over() -> None:
    """Rule 5: a chunk is not ended before half full just to end on a blank line."""
    text = "A short opening.\n\n" + " ".join(f"Then sentence {n} follows." for n in range(100))
    first = chunk(text, ChunkingPolicy(size_tokens=64, overlap_tokens=0))[0]
    assert first.text.startswith("A short opening.\n\nThen sentence 0")
    assert first.text.endswith("follows.")
    assert first.tokens > 32


def test_a_heading_stays_with_the_text_under_it() -> None:
    body = "The cooldown grows after each failed probe, up to a ceiling. " * 6
    text = "\n\n".join(f"## Section {n}\n\n{body.strip()}" for n in range(12))
    chunks = chunk(text, ChunkingPolicy(size_tokens=150, overlap_tokens=0))
    assert len(chunks) > 4
    for piece in chunks:
        assert not piece.text.rstrip().splitlines()[-1].startswith("#")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("😀" * 300, 16),
        ("👨\u200d👩\u200d👧 family " * 80, 20),
        ("韧性系统需要断路器。" * 120, 24),
        ("e\u0301" * 400, 16),
        ("𠀋𡈽𡌛 " * 100, 17),
    ],
)
def test_unicode_is_never_split_inside_a_character(text: str, size: int) -> None:
    for overlap in (0, size // 4, size - 1):
        chunks, layout = chunk_layout(text, ChunkingPolicy(size, overlap))
        assert len(chunks) > 1
        for piece in chunks:
            assert "\ufffd" not in piece.text
            assert piece.text in text
            assert piece.tokens <= size
        spans = layout.spans(chunks)
        assert spans[0][0] == 0
        assert spans[-1][1] == len(layout.tokens)


def test_cjk_text_is_cut_after_its_full_stops() -> None:
    text = f"韧性系统需要断路器。限流保护上游服务{BANG}预算防止费用失控{QUESTION}" * 60
    chunks = chunk(text, ChunkingPolicy(size_tokens=48, overlap_tokens=0))
    assert len(chunks) > 5
    assert all(c.text.endswith(("。", BANG, QUESTION)) for c in chunks[:-1])


def test_overlap_gives_way_when_no_end_fits() -> None:
    """Rule 6: 𪛖 takes four tokens, so no cut may lie within `size - overlap` of an end."""
    policy = ChunkingPolicy(size_tokens=16, overlap_tokens=15)
    chunks, layout = chunk_layout("x𪛖𪛖😀" * 10, policy)
    spans = layout.spans(chunks)
    assert all(c.tokens <= 16 for c in chunks)
    assert spans[0][0] == 0
    assert spans[-1][1] == len(layout.tokens)
    shared = [end - start for (_, end), (start, _) in itertools.pairwise(spans)]
    assert all(0 < tokens < 15 for tokens in shared)  # the overlap gave way, the size did not


def test_whitespace_only_windows_are_dropped() -> None:
    text = "alpha" + " " * 3000 + "omega"
    chunks = chunk(text, ChunkingPolicy(size_tokens=16, overlap_tokens=4))
    assert chunks[0].text.startswith("alpha")
    assert chunks[-1].text.endswith("omega")
    assert all(c.text.strip() for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
