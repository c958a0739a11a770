"""The pipeline benchmark runs every path over a tiny corpus; speed is never asserted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from simulations.bench.pipeline import (
    CONCURRENCIES,
    EMULATOR,
    LABELS,
    MOCK,
    RAW,
    RUNS,
    main,
    make_corpus,
    measure,
    render,
)

DOCS = 3


def test_the_corpus_is_deterministic_and_its_documents_distinct() -> None:
    first, again = make_corpus(6, seed=3), make_corpus(6, seed=3)
    assert first == again
    assert len({hashlib.sha256(doc.content).hexdigest() for doc in first}) == 6
    assert all(len(doc.content) > 1_000 for doc in first)
    assert make_corpus(6, seed=4) != first


def test_measure_completes_every_job_of_every_run() -> None:
    results = measure(DOCS, repeats=1, seed=2)
    rows = results["results"]
    assert [(r["run"], r["concurrency"]) for r in rows] == list(RUNS)
    assert {r["run"] for r in rows} == {MOCK, EMULATOR, RAW}
    chunks = results["corpus"]["chunks"]
    assert chunks >= DOCS
    for row in rows:
        assert row["docs"] == DOCS, row
        # Every run embeds every chunk of the same documents, once.
        assert row["embeddings"] == row["chunks"] == chunks, row
        assert row["wall_s"] > 0, row
        assert row["docs_per_s"] > 0, row
        assert row["embeddings_per_s"] > 0, row
        assert (row["virtual_s"] is not None) == (row["run"] == EMULATOR), row
    assert set(results["ratios"]) == {f"mock_c{c}/raw" for c in CONCURRENCIES}
    assert all(value > 0 for value in results["ratios"].values())
    assert isinstance(results["target"]["met"], bool)
    table = render(results)
    assert all(label in table for label in LABELS.values())
    assert table.count("met") + table.count("MISSED") >= 1


def test_main_prints_the_table_writes_json_and_returns_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipeline.json"
    assert main(["--docs", str(DOCS), "--repeats", "1", "--json", str(path)]) == 0
    assert "target <= 2.0" in capsys.readouterr().out
    document = orjson.loads(path.read_bytes())
    assert document["settings"] == {"docs": DOCS, "repeats": 1, "seed": 1}
    assert len(document["results"]) == len(RUNS)
