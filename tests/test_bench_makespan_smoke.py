"""The makespan benchmarks measure real runs against a bound they compute; speed is never timed.

The virtual-time run is deterministic (no wall clock reaches its figures),
so its ratio is checked against the target; the loopback run is checked
only for what it did: every job complete, each document uploaded once.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from simulations.bench.makespan import (
    TARGET,
    Run,
    bound,
    main,
    makespan_plan,
    virtual,
)
from simulations.bench.makespan_loopback import loopback
from simulations.emulators import FaultPlan, LlamaParsePlan, OpenAIPlan


def test_the_bound_counts_uploads_at_a_plain_rate_beside_the_embeddings_tpm() -> None:
    # The bound: 10 s + 16 / (50 per 10 s).
    assert bound(16, makespan_plan(10.0), tokens=0).seconds == pytest.approx(13.2)
    # The issue's own example: 16 uploads at 15 per 10 s count 10.7 s, with no burst credit.
    v1_rate = FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(0.0, 0.0), v2_upload_limit=15))
    assert bound(16, v1_rate, tokens=0).upload_s == pytest.approx(10.67, abs=0.01)
    # One minute's allowance of tokens is free; beyond it, the TPM's rate binds.
    tight = FaultPlan(
        openai=OpenAIPlan(tpm=60_000), llamaparse=LlamaParsePlan(parse_time_s=(10.0, 10.0))
    )
    assert bound(16, tight, tokens=60_000).embed_s == 0.0
    binding = bound(16, tight, tokens=120_000)
    assert binding.embed_s == pytest.approx(60.0)
    assert binding.seconds == pytest.approx(60.0)
    assert binding.binding == "embedding TPM"
    assert bound(16, tight, tokens=0).binding == "uploads"


def _check(run: Run, docs: int, parse_s: float) -> None:
    assert run.docs == docs
    assert run.uploads == docs  # one upload per document: nothing refused, nothing sent twice
    assert run.tokens > 0  # every document was embedded by the emulator
    assert run.bound.parse_s == parse_s
    assert run.bound.upload_s == pytest.approx(docs / 5)
    assert run.jobs_s > parse_s  # no job completes before its parse has run
    assert run.makespan_s >= run.jobs_s
    assert math.isclose(run.ratio, run.makespan_s / run.bound.seconds)


def test_a_virtual_run_completes_every_job_within_the_target() -> None:
    run = virtual(20, parse_s=60.0)
    _check(run, 20, 60.0)
    assert run.makespan_s == run.jobs_s
    assert 1.0 < run.ratio <= TARGET, run


def test_main_prints_the_verdict_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "makespan.json"
    assert main(["--docs", "3", "--parse-s", "5", "--json", str(path)]) == 0
    assert f"(target <= {TARGET}: " in capsys.readouterr().out
    document = orjson.loads(path.read_bytes())
    [run] = document["runs"]
    assert (run["where"], run["docs"], run["uploads"]) == ("virtual", 3, 3)
    assert run["ratio"] == run["makespan_s"] / run["bound_s"]


def test_breakwater_ingest_over_loopback_uploads_each_document_once() -> None:
    run = loopback(16, parse_s=1.0)
    _check(run, 16, 1.0)
    assert run.where == "loopback"
