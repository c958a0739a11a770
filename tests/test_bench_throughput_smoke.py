"""The throughput benchmark runs both clients over a small corpus; speed is never asserted."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from simulations.bench.throughput import (
    LABELS,
    OURS,
    SDK,
    SDK_SEQUENTIAL,
    main,
    make_corpus,
    measure,
    render,
)

TOKENS = 60_000
TPM = 30_000


def test_the_corpus_is_deterministic_and_reaches_its_size() -> None:
    first, again = make_corpus(5_000, seed=3), make_corpus(5_000, seed=3)
    assert first.texts == again.texts
    assert first.tokens >= 5_000
    assert all(text.strip() for text in first.texts)
    assert make_corpus(5_000, seed=4).texts != first.texts


def test_measure_runs_both_clients_over_the_whole_corpus() -> None:
    results = measure(TOKENS, tpm=TPM, rpm=3_000, workers=2, seed=1)
    corpus, minimum = results["corpus"], results["minimum"]
    assert corpus["tokens"] >= TOKENS
    assert minimum["token_cap"] == TPM  # a smaller TPM caps each request
    assert minimum["requests"] == max(minimum["by_inputs"], minimum["by_tokens"])
    assert results["batches_planned"] >= minimum["requests"]
    assert set(results["results"]) == {OURS, SDK, SDK_SEQUENTIAL}
    for name, run in results["results"].items():
        assert run["requests"] >= minimum["requests"], name
        assert run["requests"] == run["succeeded"] + run["rate_limited"], name
        assert isinstance(run["rate_limited"], int), name
        assert run["rate_limited"] >= 0, name
        assert 0 <= run["inputs_failed"] <= corpus["inputs"], name
        # Every input was embedded, or the failures were reported with their errors.
        assert (run["inputs_failed"] == 0) == (not run["errors"]), name
        if run["inputs_failed"] == 0:
            assert run["tokens_accepted"] >= corpus["tokens"], name
            assert run["succeeded"] >= results["batches_planned"], name
    assert set(results["targets"]) == {
        "achieved_tpm_ratio",
        "rate_limited_fraction",
        "requests_over_minimum",
    }
    table = render(results)
    assert all(label in table for label in LABELS.values())
    assert table.count("met") + table.count("MISSED") >= 3


def test_main_prints_the_table_writes_json_and_returns_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "throughput.json"
    argv = ["--tokens", "20000", "--tpm", "15000", "--workers", "1", "--json", str(path)]
    assert main(argv) == 0
    assert "targets for breakwater:" in capsys.readouterr().out
    document = orjson.loads(path.read_bytes())
    assert set(document["results"]) == {OURS, SDK}  # one worker: no context row
    assert document["settings"]["tpm"] == 15_000
