"""The official `llama-cloud` 2.x SDK (LlamaParse API v2), unchanged, accepts the emulator.

The SDK runs over real loopback HTTP against an emulator served from a
background thread, with strict response validation on, so every answer is
checked against the SDK's own pydantic models. Only `base_url`, `api_key`
and the SDK's own documented knobs (polling interval, retries) are set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from llama_cloud import LlamaCloud
from llama_cloud._polling import PollingError

from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan
from tests.loopback import served_in_thread
from tests.pdfs import make_pdf

PAGES = [
    "Harbour breakwaters\nThe north wall shelters the moorings.",
    "Tidal range\nSpring tides reach four metres.",
    "Maintenance\nArmour stones are checked every winter.",
]
FAST = 0.05


def plan(**options: Any) -> FaultPlan:
    return FaultPlan(llamaparse=LlamaParsePlan(**{"parse_time_s": (FAST, FAST), **options}))


@contextmanager
def sdk(faults: FaultPlan | None = None) -> Iterator[tuple[LlamaCloud, Emulator]]:
    emulator = Emulator(seed=5, faults=faults or plan())
    with served_in_thread(emulator) as running:
        client = LlamaCloud(
            api_key="llx-test",
            base_url=running.llamaparse_base_url,
            _strict_response_validation=True,
        )
        try:
            yield client, emulator
        finally:
            client.close()


def parse(client: LlamaCloud, upload: tuple[str, bytes, str], **options: Any) -> Any:
    return client.parsing.parse(
        tier="cost_effective",
        version="latest",
        upload_file=upload,
        polling_interval=FAST,
        max_interval=FAST,
        **options,
    )


def test_parse_returns_each_pdf_pages_own_words() -> None:
    with sdk() as (client, emulator):
        result = parse(
            client,
            ("harbour.pdf", make_pdf(PAGES), "application/pdf"),
            expand=["markdown", "text", "items", "markdown_full", "text_full", "usage"],
        )
    assert result.job.status == "COMPLETED"
    assert result.job.usage is not None
    assert result.job.usage.credits == 3 * len(PAGES)
    assert result.markdown is not None
    assert result.text is not None
    assert result.items is not None
    for number, (page, markdown, text, items) in enumerate(
        zip(PAGES, result.markdown.pages, result.text.pages, result.items.pages, strict=True), 1
    ):
        assert markdown.success is True
        assert markdown.page_number == number
        assert text.page_number == number
        for line in page.split("\n"):
            assert line in markdown.markdown
            assert line in text.text
        assert items.success is True
        assert items.items
    assert result.markdown_full is not None
    assert "Armour stones" in result.markdown_full
    assert result.text_full is not None
    assert "Spring tides" in result.text_full
    assert emulator.stats().count("POST /api/v2/parse/upload", 200) == 1


@pytest.mark.parametrize(
    ("name", "content", "media_type", "words"),
    [
        ("notes.md", b"# Moorings\n\nBuoys are inspected monthly.\n", "text/markdown", "Buoys"),
        ("notes.txt", b"Quay depth is nine metres.\n", "text/plain", "Quay depth"),
        (
            "page.html",
            b"<html><head><style>p{}</style></head><body><h1>Lighthouse</h1>"
            b"<p>The lamp turns <b>twice</b> a minute.</p></body></html>",
            "text/html",
            "The lamp turns twice a minute.",
        ),
    ],
)
def test_text_markdown_and_html_come_back_as_their_words(
    name: str, content: bytes, media_type: str, words: str
) -> None:
    with sdk() as (client, _):
        result = parse(client, (name, content, media_type), expand=["markdown", "items"])
    assert result.markdown is not None
    assert result.items is not None
    (page,) = result.markdown.pages
    assert page.success is True
    assert words in page.markdown
    assert "<" not in page.markdown
    (items,) = result.items.pages
    assert items.success is True
    assert any(words in item.md for item in items.items)


def test_a_failed_job_raises_polling_error_with_its_message() -> None:
    failed = r"status: FAILED \| Error: 3 of 3 pages failed"
    with sdk(plan(page_failure_rate=1.0)) as (client, _), pytest.raises(PollingError, match=failed):
        parse(client, ("harbour.pdf", make_pdf(PAGES), "application/pdf"), expand=["text"])


def test_a_partially_failed_job_completes_with_failed_pages() -> None:
    pages = [f"Section {n}\nBollard {n} holds forty tonnes." for n in range(1, 11)]
    with sdk(plan(page_failure_rate=0.3)) as (client, emulator):
        result = parse(
            client,
            ("long.pdf", make_pdf(pages), "application/pdf"),
            expand=["markdown", "items"],
            processing_control={"job_failure_conditions": {"allowed_page_failure_ratio": 0.6}},
        )
        with pytest.raises(PollingError, match="status: FAILED"):  # the default ratio, 0.05
            parse(client, ("long.pdf", make_pdf(pages), "application/pdf"), expand=["text"])
    assert result.job.status == "COMPLETED"
    assert result.markdown is not None
    assert result.items is not None
    failed = [page.page_number for page in result.markdown.pages if page.success is False]
    assert 0 < len(failed) < len(pages)
    for page, items in zip(result.markdown.pages, result.items.pages, strict=True):
        if page.success is False:
            assert page.error
            assert items.success is False
        else:
            assert f"Bollard {page.page_number} holds" in page.markdown
    assert emulator.stats().jobs_created == 2


def test_a_429_is_retried_after_retry_after() -> None:
    faults = plan(v2_upload_limit=1, upload_window_s=1.0)
    with sdk(faults) as (client, emulator):
        upload = ("notes.md", b"Pier lights are green.\n", "text/markdown")
        started = time.monotonic()
        first = client.parsing.create(tier="fast", version="latest", upload_file=upload)
        second = client.parsing.create(tier="fast", version="latest", upload_file=upload)
        elapsed = time.monotonic() - started
        stats = emulator.stats()
    assert first.id != second.id
    assert second.status == "PENDING"
    assert stats.count("POST /api/v2/parse/upload", 429) >= 1
    assert stats.count("POST /api/v2/parse/upload", 200) == 2
    assert elapsed >= 0.7  # Retry-After: 1, less the SDK's jitter of at most a quarter


def test_files_api_then_parse_by_file_id_and_list_by_creation_time() -> None:
    with sdk() as (client, _):
        before = datetime.now(UTC) - timedelta(seconds=5)
        file = client.files.create(
            file=("quay.md", b"# Quay\n\nCranes lift containers.\n", "text/markdown"),
            purpose="parse",
        )
        assert client.files.retrieve(file.id).name == "quay.md"
        assert [listed.id for listed in client.files.list()] == [file.id]
        job = client.parsing.create(tier="agentic", version="latest", file_id=file.id)
        client.parsing.wait_for_completion(job.id, polling_interval=FAST, max_interval=FAST)
        result = client.parsing.get(job.id, expand=["text_full", "usage"])
        listed = list(client.parsing.list(created_at_on_or_after=before, page_size=1))
        versions = client.parsing.list_versions()
        client.files.delete(file.id)
        assert list(client.files.list()) == []
    assert result.text_full is not None
    assert "Cranes lift containers." in result.text_full
    assert result.job.usage is not None
    assert result.job.usage.credits == 10
    assert [entry.id for entry in listed] == [job.id]
    assert listed[0].name == "quay.md"
    assert listed[0].status == "COMPLETED"
    assert versions.latest.cost_effective in versions.cost_effective


def test_cancel_and_delete() -> None:
    with sdk(plan(parse_time_s=(30.0, 30.0))) as (client, _):
        upload = ("notes.md", b"Tugs wait at the pier.\n", "text/markdown")
        job = client.parsing.create(tier="fast", version="latest", upload_file=upload)
        assert client.parsing.get(job.id).job.status == "PENDING"
        cancelled = client.parsing.cancel(job.id)
        with pytest.raises(PollingError, match="status: CANCELLED"):
            client.parsing.wait_for_completion(job.id, polling_interval=FAST)
        deleted = client.parsing.delete(job.id)
    assert cancelled.status == "CANCELLED"
    assert deleted.id == job.id
