"""A deterministic, offline stand-in for LlamaParse.

`MockParser.parse` has the real client's signature and result shape, costs
nothing, and gives the same markdown for the same bytes every time, so the
router can serve it in MOCK mode or as HYBRID's fallback, and a degraded
result can be told apart (and redone) only by its `path`. It reads what the
standard library and pypdf can: plain text, markdown, HTML and PDF text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from html.parser import HTMLParser
from io import BytesIO

from pypdf import PdfReader

from providers.llamaparse.client import Document, ParsedDocument, estimate_pages
from resilience import ProviderError

PAGE_SEPARATOR = "\n\n---\n\n"
"""Between PDF pages: a markdown thematic break, as LlamaParse's own separator is."""

SUPPORTED_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf")


class MockParser:
    """Parses locally. `failures` maps a document name to the error parsing it raises.

    `failures` lets a simulation make particular documents fail
    deterministically; `latency_s` is slept on the loop clock per parse.
    """

    def __init__(
        self, *, latency_s: float = 0.0, failures: Mapping[str, Exception] | None = None
    ) -> None:
        self.latency_s = latency_s
        self.failures = dict(failures or {})

    def __repr__(self) -> str:
        return f"MockParser(latency_s={self.latency_s:g}, failures={len(self.failures)})"

    async def parse(self, document: Document) -> ParsedDocument:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        failure = self.failures.get(document.name)
        if failure is not None:
            raise failure
        media_type = document.media_type
        failed_pages: list[int] = []
        if media_type == "application/pdf":
            markdown, pages, failed_pages = _pdf_to_markdown(document.content)
        elif media_type in ("text/plain", "text/markdown"):
            markdown, pages = _normalize(_decode(document)), estimate_pages(document)
        elif media_type == "text/html":
            markdown, pages = html_to_markdown(_decode(document)), estimate_pages(document)
        else:
            raise ProviderError(
                f"mock parser: unsupported media type {media_type!r} "
                f"(supported: {', '.join(SUPPORTED_TYPES)})",
                status=415,
                code="unsupported_media_type",
            )
        sha256 = document.sha256
        return ParsedDocument(
            markdown=markdown,
            pages=pages,
            job_id=f"mock-{sha256[:16]}",
            sha256=sha256,
            failed_pages=failed_pages,
        )


def _decode(document: Document) -> str:
    """The text in the MIME type's charset (UTF-8 if none or unknown); bad bytes become U+FFFD."""
    charset = "utf-8"
    for parameter in document.mime_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        return document.content.decode(charset, errors="replace")
    except LookupError:
        return document.content.decode("utf-8", errors="replace")


def _normalize(text: str) -> str:
    """Unix newlines, no trailing spaces, no runs of blank lines, one final newline.

    Nothing is re-wrapped or escaped: plain text is already valid markdown
    in all that matters to a reader or an embedding.
    """
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _pdf_to_markdown(content: bytes) -> tuple[str, int, list[int]]:
    """Each page's text, joined by `PAGE_SEPARATOR`; pages pypdf cannot read are failed."""
    try:
        reader = PdfReader(BytesIO(content))
        pages = list(reader.pages)
    except Exception as exc:  # pypdf raises many types for damaged files
        raise ProviderError(
            f"mock parser: unreadable PDF ({type(exc).__name__})", 422, code="unreadable_document"
        ) from None
    texts: list[str] = []
    failed: list[int] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(_normalize(page.extract_text()).strip("\n"))
        except Exception:  # one damaged page must not lose the others
            texts.append("")
            failed.append(number)
    return PAGE_SEPARATOR.join(texts) + "\n", max(1, len(pages)), failed


_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    {"p", "div", "section", "article", "blockquote", "pre", "table", "tr", "br", "hr"}
    | {"header", "footer", "main", "nav", "aside", "figure", "figcaption", "dl", "dt", "dd"}
)
_SKIPPED = frozenset({"head", "script", "style", "template", "noscript", "svg"})


class _MarkdownWriter(HTMLParser):
    """Collects blocks of text: headings, paragraphs and list items; links keep their text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, bool]] = []  # (markdown, is a list item)
        self._text: list[str] = []
        self._prefix = ""
        self._item = False
        self._lists: list[list[int]] = []  # per open list: [next number], or [] if unordered
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag in _HEADINGS:
            self._flush()
            self._prefix = "#" * _HEADINGS[tag] + " "
        elif tag in ("ul", "ol"):
            self._flush()
            self._lists.append([1] if tag == "ol" else [])
        elif tag == "li":
            self._flush()
            indent = "  " * max(0, len(self._lists) - 1)
            counter = self._lists[-1] if self._lists else []
            if counter:
                self._prefix = f"{indent}{counter[0]}. "
                counter[0] += 1
            else:
                self._prefix = f"{indent}- "
            self._item = True
        elif tag in _BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in ("ul", "ol"):
            self._flush()
            if self._lists:
                self._lists.pop()
        elif tag in _HEADINGS or tag == "li" or tag in _BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = " ".join("".join(self._text).split())
        if text:
            self.blocks.append((self._prefix + text, self._item))
        self._text, self._prefix, self._item = [], "", False


def html_to_markdown(html: str) -> str:
    """Simple markdown for an HTML document: `#` headings, paragraphs, `-`/`1.` lists.

    Links become their text and other inline markup disappears; the head,
    scripts and styles are dropped. Consecutive list items stay on adjacent
    lines, other blocks are separated by a blank line.
    """
    writer = _MarkdownWriter()
    writer.feed(html)
    writer.close()
    out: list[str] = []
    previous_item = False
    for block, item in writer.blocks:
        if out:
            out.append("\n" if item and previous_item else "\n\n")
        out.append(block)
        previous_item = item
    return "".join(out) + "\n"
