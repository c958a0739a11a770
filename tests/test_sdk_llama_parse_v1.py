"""The deprecated `llama-parse` SDK (LlamaParse API v1), unchanged, accepts the emulator.

`llama-parse` 0.5 and later depend on `llama-cloud-services`, which pins
`llama-cloud` 0.1.x and so cannot be installed beside the 2.x SDK the v2
tests use (both ship the `llama_cloud` package). 0.5.20 is the last release
that talks to the v1 API on its own, and is what the dev extra installs.

It calls `asyncio.run` itself and polls once a second (`check_interval` is
an integer), so the emulator runs on its own loop in a background thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from llama_parse import LlamaParse

from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan
from tests.loopback import served_in_thread
from tests.pdfs import make_pdf

PAGES = [
    "Harbour breakwaters\nThe north wall shelters the moorings.",
    "Tidal range\nSpring tides reach four metres.",
]
PDF = make_pdf(PAGES)
STATUS_ROUTE = "GET /api/parsing/job/{job_id}"


def plan(**options: Any) -> FaultPlan:
    return FaultPlan(llamaparse=LlamaParsePlan(**{"parse_time_s": (0.05, 0.05), **options}))


@contextmanager
def parser(
    faults: FaultPlan | None = None, **options: Any
) -> Iterator[tuple[LlamaParse, Emulator]]:
    emulator = Emulator(seed=3, faults=faults or plan())
    with served_in_thread(emulator) as running:
        yield (
            LlamaParse(api_key="llx-test", base_url=running.llamaparse_base_url, **options),
            emulator,
        )


@pytest.mark.parametrize("result_type", ["markdown", "text"])
def test_load_data_returns_each_pages_own_words(result_type: str) -> None:
    with parser(result_type=result_type) as (sdk, emulator):
        documents = sdk.load_data(PDF, extra_info={"file_name": "harbour.pdf"})
    assert len(documents) == len(PAGES)  # split_by_page, on the default separator
    for document, page in zip(documents, PAGES, strict=True):
        for line in page.split("\n"):
            assert line in document.text
    route = f"GET /api/parsing/job/{{job_id}}/result/{result_type}"
    assert emulator.stats().count(route, 200) == 1


def test_a_templated_page_separator_is_honoured() -> None:
    with parser(page_separator="\n=== page {page_number} ===\n") as (sdk, _):
        documents = sdk.load_data(PDF, extra_info={"file_name": "harbour.pdf"})
    (document,) = documents  # the SDK splits only on the literal template
    assert "\n=== page 2 ===\nTidal range" in document.text


def test_get_json_result_has_one_entry_per_page(tmp_path: Path) -> None:
    path = tmp_path / "harbour.pdf"
    path.write_bytes(PDF)
    with parser() as (sdk, _):
        (result,) = sdk.get_json_result(str(path))
    assert [page["page"] for page in result["pages"]] == [1, 2]
    assert "Spring tides reach four metres." in result["pages"][1]["text"]
    assert result["job_metadata"]["job_pages"] == 2


def test_a_failed_job_raises() -> None:
    failing = parser(plan(page_failure_rate=1.0), ignore_errors=False)
    with failing as (sdk, _), pytest.raises(Exception, match="status: ERROR"):
        sdk.load_data(PDF, extra_info={"file_name": "harbour.pdf"})


def test_a_partial_success_is_a_failure_to_this_sdk() -> None:
    # llama-parse (like llama-cloud-services after it) treats every status other
    # than SUCCESS and PENDING as a failure; PARTIAL_SUCCESS included.
    pages = [f"Bollard {n} holds forty tonnes." for n in range(1, 11)]
    with parser(plan(page_failure_rate=0.3), ignore_errors=False) as (sdk, _):
        with pytest.raises(Exception, match="status: PARTIAL_SUCCESS"):
            sdk.load_data(make_pdf(pages), extra_info={"file_name": "long.pdf"})
        sdk.ignore_errors = True
        assert sdk.load_data(make_pdf(pages), extra_info={"file_name": "long.pdf"}) == []


def test_a_429_while_polling_is_retried() -> None:
    # The upload at t=0 is answered; the first poll (t≈1 s) falls in the 429 window.
    faults = plan(outages=((0.5, 1.5),), outage_status=429)
    with parser(faults, ignore_errors=False) as (sdk, emulator):
        documents = sdk.load_data(PDF, extra_info={"file_name": "harbour.pdf"})
        stats = emulator.stats()
    assert "The north wall shelters the moorings." in documents[0].text
    assert stats.count(STATUS_ROUTE, 429) >= 1
    assert stats.count("POST /api/parsing/upload", 200) == 1
