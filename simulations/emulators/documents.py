"""What the emulated LlamaParse "parses" out of an uploaded file: the file's own words.

* A PDF pypdf can open gives one page per PDF page, each page's extracted
  text as both its markdown and its text. A page whose extraction raises is
  recorded as unreadable: the API reports it as a failed page.
* Text and markdown (`text/plain`, `text/markdown`, or a .md/.markdown/.txt
  name) come back as they are, as one page.
* HTML (`text/html`, or a .html/.htm name) becomes markdown headings,
  paragraphs and lists, by the mock parser's `html_to_markdown`; one page.
* Anything else (images, office files, a damaged PDF) gets deterministic
  placeholder markdown, one section per page, since LlamaParse reads far
  more formats than pypdf and the standard library do. The pages of a file
  starting `%PDF` are then counted crudely, by its `/Type /Page` objects.

`max_pages` caps the pages, as it does upstream; `target_pages` (a 1-based
set) keeps only those pages, numbered as in the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from io import BytesIO
from typing import Final

from pypdf import PdfReader

from providers.llamaparse.mock import html_to_markdown
from simulations.emulators.multipart import UploadedFile

PAGE_SEPARATOR: Final = "\n---\n"
"""LlamaParse's default separator between pages in v1 markdown and text results."""

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_TEXT_SUFFIXES: Final = (".md", ".markdown", ".txt")
_HTML_SUFFIXES: Final = (".html", ".htm")
LETTER: Final = (612.0, 792.0)
"""Page width and height in points when the file gives none (US Letter)."""


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    """1-based, as in the file (a `target_pages` selection keeps the numbers)."""
    markdown: str
    width: float = LETTER[0]
    height: float = LETTER[1]
    readable: bool = True


@dataclass(frozen=True, slots=True)
class Document:
    pages: tuple[Page, ...]

    @property
    def page_count(self) -> int:
        return len(self.pages)

    def joined(self, failed: Collection[int] = (), separator: str = PAGE_SEPARATOR) -> str:
        """The pages that did not fail, as one string. `separator` may hold
        `{page_number}`, the number of the page it introduces (v1's `page_separator`)."""
        kept = [page for page in self.pages if page.number not in failed]
        if not kept:
            return ""
        parts = [kept[0].markdown]
        for page in kept[1:]:
            parts += [separator.replace("{page_number}", str(page.number)), page.markdown]
        return "".join(parts)

    @property
    def unreadable(self) -> frozenset[int]:
        return frozenset(p.number for p in self.pages if not p.readable)


def count_pdf_pages(data: bytes) -> int:
    """Page objects in a PDF, at least 1. Crude: compressed object streams hide pages."""
    return max(1, len(_PDF_PAGE.findall(data)))


def _named(upload: UploadedFile, media_type: str, suffixes: tuple[str, ...]) -> bool:
    return upload.content_type == media_type or upload.filename.lower().endswith(suffixes)


def _pdf_pages(data: bytes) -> list[Page] | None:
    """Each page's text, or None when pypdf cannot open the file."""
    try:
        reader = PdfReader(BytesIO(data))
        pdf_pages = list(reader.pages)
    except Exception:  # pypdf raises many types for damaged files
        return None
    pages = []
    for number, pdf_page in enumerate(pdf_pages, start=1):
        box = pdf_page.mediabox
        size = float(box.width), float(box.height)
        try:
            text = pdf_page.extract_text().strip()
        except Exception:  # one damaged page must not lose the others
            pages.append(Page(number, "", *size, readable=False))
            continue
        pages.append(Page(number, text, *size))
    return pages or None


def _placeholder_pages(upload: UploadedFile, max_pages: int | None) -> list[Page]:
    count = count_pdf_pages(upload.data) if upload.data.startswith(b"%PDF") else 1
    if max_pages is not None:
        count = max(1, min(count, max_pages))
    digest = hashlib.sha256(upload.data).hexdigest()[:12]
    return [
        Page(
            number,
            f"# {upload.filename}, page {number}\n\nEmulated LlamaParse output for page "
            f"{number} of {count} of {upload.filename} (sha256 {digest}).",
        )
        for number in range(1, count + 1)
    ]


def render_document(
    upload: UploadedFile,
    max_pages: int | None = None,
    target_pages: frozenset[int] | None = None,
) -> Document:
    if _named(upload, "text/html", _HTML_SUFFIXES):
        pages = [Page(1, html_to_markdown(upload.data.decode("utf-8", "replace")))]
    elif upload.content_type.startswith("text/") or upload.filename.lower().endswith(
        _TEXT_SUFFIXES
    ):
        pages = [Page(1, upload.data.decode("utf-8", "replace"))]
    else:
        pdf = _pdf_pages(upload.data) if upload.data.startswith(b"%PDF") else None
        pages = pdf if pdf is not None else _placeholder_pages(upload, max_pages)
    if target_pages is not None:
        pages = [page for page in pages if page.number in target_pages] or pages[:1]
    if max_pages is not None:
        pages = pages[: max(1, max_pages)]
    return Document(tuple(pages))
