"""The chaos simulation's chunk oracle: it passes the chunker's output and flags slips in it.

The oracle (`simulations.chaos.chunk_oracle`) judges stored chunks from the
documented rules alone. Both directions matter: a false alarm would fail the
simulation on correct code, and an oracle that passes everything proves
nothing, so each slip below is made by hand from correct chunks.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulations.chaos.chunk_oracle import chunk_problem
from simulations.samples import FOLDER
from state.pipeline.chunking import ChunkingPolicy, chunk

SAMPLE = (FOLDER / "circuit-breakers.md").read_text()
WORDS = [
    "breaker",
    "budget",
    "token",
    "retry",
    "provider",
    "outage",
    "ledger",
    "lease.",
    "webhook\n\nprobe",
]
PIECES = st.sampled_from([*WORDS, " ", "  \n", "\r\n", "# Heading\n", "日本語。", "😀", " " * 40])


def _judge(text: str, chunks: list[tuple[int, str]], policy: ChunkingPolicy) -> str | None:
    return chunk_problem(
        text, chunks, size_tokens=policy.size_tokens, overlap_tokens=policy.overlap_tokens
    )


def _pairs(text: str, policy: ChunkingPolicy) -> list[tuple[int, str]]:
    return [(c.index, c.text) for c in chunk(text, policy)]


@given(
    text=st.lists(PIECES, max_size=200).map(" ".join),
    size=st.integers(16, 48),
    data=st.data(),
)
def test_the_chunkers_output_passes(text: str, size: int, data: st.DataObject) -> None:
    policy = ChunkingPolicy(size, data.draw(st.integers(0, size - 1)))
    assert _judge(text, _pairs(text, policy), policy) is None


def test_a_sample_document_passes_at_the_default_and_the_simulations_size() -> None:
    for policy in (ChunkingPolicy(), ChunkingPolicy(64, 8)):
        pairs = _pairs(SAMPLE, policy)
        assert len(pairs) > 3
        assert _judge(SAMPLE, pairs, policy) is None


def test_an_overlap_one_token_short_or_long_is_flagged() -> None:
    policy = ChunkingPolicy(64, 8)
    for overlap in (7, 9):
        wrong = _pairs(SAMPLE, ChunkingPolicy(64, overlap))
        problem = _judge(SAMPLE, wrong, policy)
        assert problem is not None
        assert "rule 7" in problem


def test_a_lost_tail_an_oversized_chunk_and_bad_indexes_are_flagged() -> None:
    policy = ChunkingPolicy(64, 8)
    pairs = _pairs(SAMPLE, policy)
    assert "is in none" in (_judge(SAMPLE, pairs[:-1], policy) or "")
    bigger = _pairs(SAMPLE, ChunkingPolicy(80, 8))
    assert "over the size" in (_judge(SAMPLE, bigger, policy) or "")
    shifted = [(index + 1, text) for index, text in pairs]
    assert "indexes" in (_judge(SAMPLE, shifted, policy) or "")
    assert "blank" in (_judge(" \n", [(0, "x")], policy) or "")
    assert _judge("", [], policy) is None


def test_a_chunk_cut_short_of_half_though_more_fits_is_flagged() -> None:
    policy = ChunkingPolicy(64, 8)
    text = " ".join(["word"] * 200)
    small = _pairs(text, ChunkingPolicy(20, 0))
    problem = _judge(text, small, policy)
    assert problem is not None
    assert "more fits" in problem


def test_crlf_is_judged_as_lf() -> None:
    policy = ChunkingPolicy(64, 8)
    text = SAMPLE.replace("\n", "\r\n")
    assert _judge(text, _pairs(text, policy), policy) is None
    unnormalised = [(0, text[:50])]
    assert _judge(text, unnormalised, policy) is not None
