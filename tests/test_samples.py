"""The bundled sample documents: real files the demo can ingest with no network."""

from __future__ import annotations

from io import BytesIO

import pytest
from pypdf import PdfReader

from providers.llamaparse.client import Document
from providers.llamaparse.mock import PAGE_SEPARATOR, MockParser
from resilience.testing import run_virtual
from simulations.samples import FOLDER, SAMPLES, Sample, make_pdf
from state.pipeline.chunking import ChunkingPolicy, chunk


def words(text: str) -> str:
    return " ".join(text.split())


def test_budgets_pdf_is_what_make_pdf_writes() -> None:
    """The committed file is current: edit the text in make_pdf.py, then run it."""
    assert (FOLDER / "budgets.pdf").read_bytes() == make_pdf.build()


def test_pypdf_extracts_every_page_of_budgets_pdf() -> None:
    reader = PdfReader(BytesIO((FOLDER / "budgets.pdf").read_bytes()), strict=True)
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


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.name)
def test_mock_parser_reads_each_sample(sample: Sample) -> None:
    content = sample.path.read_bytes()
    parsed = run_virtual(MockParser().parse(Document(sample.name, content, sample.mime_type)))
    assert parsed.markdown.strip()
    assert not parsed.failed_pages
    if sample.mime_type == "application/pdf":
        assert parsed.markdown.count(PAGE_SEPARATOR) == parsed.pages - 1
    else:
        assert words(parsed.markdown) == words(content.decode())
    chunks = chunk(parsed.markdown, ChunkingPolicy())
    assert len(chunks) > 1
    assert all(c.tokens <= 512 for c in chunks)


def test_the_sample_list_names_every_bundled_document() -> None:
    """`SAMPLES` is the one list of them: a file added to the folder must be added there."""
    documents = {p.name for p in FOLDER.iterdir() if p.is_file() and p.suffix != ".py"}
    assert documents == {sample.name for sample in SAMPLES}
