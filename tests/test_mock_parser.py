"""The mock parser: same shape as LlamaParse, deterministic, offline, free."""

from __future__ import annotations

import asyncio

import pytest

from providers.llamaparse.client import Document, ParsedDocument
from providers.llamaparse.mock import PAGE_SEPARATOR, MockParser, html_to_markdown
from resilience import ErrorClass, ProviderError, classify
from resilience.testing import run_virtual
from tests.pdfs import make_pdf


def parse(document: Document, parser: MockParser | None = None) -> ParsedDocument:
    return run_virtual((parser or MockParser()).parse(document))


def test_plain_text_comes_back_as_markdown_with_tidy_lines() -> None:
    text = "Title\r\n\r\n\r\n\r\nFirst line   \r\nsecond line\r\n\r\n"
    parsed = parse(Document("notes.txt", text.encode(), "text/plain"))
    assert parsed.markdown == "Title\n\nFirst line\nsecond line\n"
    assert (parsed.pages, parsed.failed_pages, parsed.cost_usd, parsed.tokens) == (1, [], 0.0, 0)


def test_markdown_is_kept_as_written() -> None:
    source = "# Heading\n\n- one\n- two\n\n```\ncode  block\n```\n"
    assert parse(Document("a.md", source.encode(), "text/markdown")).markdown == source


def test_the_charset_parameter_decodes_the_text() -> None:
    document = Document("latin.txt", "café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert parse(document).markdown == "café\n"
    unknown = Document("x.txt", "café".encode(), "text/plain; charset=no-such-codec")
    assert parse(unknown).markdown == "café\n"


def test_long_text_counts_a_page_per_3000_bytes() -> None:
    parsed = parse(Document("long.txt", b"word " * 1300, "text/plain"))
    assert parsed.pages == 3


def test_html_becomes_headings_paragraphs_lists_and_link_text() -> None:
    html = """<!doctype html><html><head><title>Ignored</title>
    <style>p { color: red }</style></head><body>
    <h1>Report</h1><p>See <a href="https://example.com">the   site</a> for <b>more</b>.</p>
    <script>alert("no")</script>
    <ul><li>alpha</li><li>beta<ol><li>first</li><li>second</li></ol></li></ul>
    <h3>Notes&amp;Ends</h3><div>last<br>line</div></body></html>"""
    assert html_to_markdown(html) == (
        "# Report\n\n"
        "See the site for more.\n\n"
        "- alpha\n"
        "- beta\n"
        "  1. first\n"
        "  2. second\n\n"
        "### Notes&Ends\n\n"
        "last\n\n"
        "line\n"
    )
    parsed = parse(Document("r.html", html.encode(), "text/html; charset=utf-8"))
    assert parsed.markdown == html_to_markdown(html)


def test_pdf_pages_are_extracted_and_joined_with_separators() -> None:
    pdf = make_pdf(["Page one text", "Second page\nwith two lines"])
    parsed = parse(Document("doc.pdf", pdf, "application/pdf"))
    assert parsed.pages == 2
    assert parsed.failed_pages == []
    first, second = parsed.markdown.split(PAGE_SEPARATOR)
    assert first == "Page one text"
    assert "Second page" in second
    assert "with two lines" in second


def test_a_damaged_pdf_is_a_422_document_error() -> None:
    with pytest.raises(ProviderError) as raised:
        parse(Document("bad.pdf", b"%PDF-1.4 this is not a pdf", "application/pdf"))
    assert (raised.value.status, raised.value.code) == (422, "unreadable_document")
    assert classify(raised.value) is ErrorClass.CALLER


def test_unsupported_types_are_415() -> None:
    with pytest.raises(ProviderError) as raised:
        parse(Document("pic.png", b"\x89PNG", "image/png"))
    assert raised.value.status == 415
    assert "image/png" in raised.value.message
    assert classify(raised.value) is ErrorClass.CALLER


def test_results_are_deterministic_and_keyed_by_content() -> None:
    document = Document("a.txt", b"same bytes", "text/plain")
    first, second = parse(document), parse(Document("b.txt", b"same bytes", "text/plain"))
    assert first == second
    assert first.sha256 == document.sha256
    assert first.job_id == f"mock-{document.sha256[:16]}"


def test_latency_is_slept_on_the_loop_clock() -> None:
    async def main() -> float:
        await MockParser(latency_s=2.5).parse(Document("a.txt", b"x", "text/plain"))
        return asyncio.get_running_loop().time()

    assert run_virtual(main()) == 2.5


def test_configured_failures_are_raised_for_their_documents_only() -> None:
    failure = ProviderError("injected", status=503)
    parser = MockParser(failures={"broken.txt": failure})
    with pytest.raises(ProviderError) as raised:
        parse(Document("broken.txt", b"x", "text/plain"), parser)
    assert raised.value is failure
    assert parse(Document("fine.txt", b"x", "text/plain"), parser).markdown == "x\n"
