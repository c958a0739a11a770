"""The bundled sample documents: real files the demo can ingest with no network."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pypdf import PdfReader

import simulations
from providers.llamaparse.client import Document
from providers.llamaparse.mock import PAGE_SEPARATOR, MockParser
from resilience.testing import run_virtual
from simulations.samples import make_pdf
from state.pipeline.chunking import ChunkingPolicy, chunk

SAMPLES = Path(simulations.__file__).resolve().parent / "samples"
DOCUMENTS = [
    ("circuit-breakers.md", "text/markdown"),
    ("rate-limits.txt", "text/plain"),
    ("budgets.pdf", "application/pdf"),
]


def words(text: str) -> str:
    return " ".join(text.split())


def test_budgets_pdf_is_what_make_pdf_writes() -> None:
    """The committed file is current: edit the text in make_pdf.py, then run it."""
    assert (SAMPLES / "budgets.pdf").read_bytes() == make_pdf.build()


def test_pypdf_extracts_every_page_of_budgets_pdf() -> None:
    reader = PdfReader(BytesIO((SAMPLES / "budgets.pdf").read_bytes()), strict=True)
    expected = make_pdf.page_texts()
    assert 2 <= len(reader.pages) == len(expected) <= 3
    for page, text in zip(reader.pages, expected, strict=True):
        assert words(page.extract_text()) == words(text)
    assert reader.metadata is not None
    assert reader.metadata.title == "Budgets for AI service calls"
    first, last = (words(reader.pages[i].extract_text()) for i in (0, -1))
    assert first.startswith("Budgets for AI service calls Why budgets Calls to hosted AI services")
    count = len(expected)
    assert last.endswith(
        f"someone finds it. Breakwater sample document: budgets, page {count} of {count}"
    )


@pytest.mark.parametrize(("name", "mime_type"), DOCUMENTS)
def test_mock_parser_reads_each_sample(name: str, mime_type: str) -> None:
    content = (SAMPLES / name).read_bytes()
    parsed = run_virtual(MockParser().parse(Document(name, content, mime_type)))
    assert parsed.markdown.strip()
    assert not parsed.failed_pages
    if mime_type == "application/pdf":
        assert parsed.markdown.count(PAGE_SEPARATOR) == parsed.pages - 1
    else:
        assert words(parsed.markdown) == words(content.decode())
    chunks = chunk(parsed.markdown, ChunkingPolicy())
    assert len(chunks) > 1
    assert all(c.tokens <= 512 for c in chunks)
