"""What the emulated LlamaParse "parses" out of an uploaded file.

Text files (`text/*`, or a .md/.markdown/.txt name) come back as their own
UTF-8 text, as one page. Anything else gets deterministic placeholder
markdown, one section per page. The pages of a PDF (a file starting
`%PDF`) are counted crudely, by its `/Type /Page` objects (not `/Type
/Pages`, the page tree); any other binary file is one page. `max_pages` caps
the count, as it does upstream.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from simulations.emulators.multipart import UploadedFile

PAGE_SEPARATOR: Final = "\n---\n"
"""LlamaParse's default separator between pages in markdown and text results."""

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_TEXT_SUFFIXES: Final = (".md", ".markdown", ".txt")


@dataclass(frozen=True, slots=True)
class Document:
    markdown: str
    text: str
    pages: int


def count_pdf_pages(data: bytes) -> int:
    """Page objects in a PDF, at least 1. Crude: compressed object streams hide pages."""
    return max(1, len(_PDF_PAGE.findall(data)))


def _is_text(upload: UploadedFile) -> bool:
    return upload.content_type.startswith("text/") or upload.filename.lower().endswith(
        _TEXT_SUFFIXES
    )


def render_document(upload: UploadedFile, max_pages: int | None = None) -> Document:
    if _is_text(upload):
        content = upload.data.decode("utf-8", "replace")
        return Document(markdown=content, text=content, pages=1)
    pages = count_pdf_pages(upload.data) if upload.data.startswith(b"%PDF") else 1
    if max_pages is not None:
        pages = max(1, min(pages, max_pages))
    digest = hashlib.sha256(upload.data).hexdigest()[:12]
    bodies = [
        f"Emulated LlamaParse output for page {page} of {pages} of {upload.filename} "
        f"(sha256 {digest})."
        for page in range(1, pages + 1)
    ]
    markdown = PAGE_SEPARATOR.join(
        f"# {upload.filename}, page {page}\n\n{body}" for page, body in enumerate(bodies, 1)
    )
    return Document(markdown=markdown, text=PAGE_SEPARATOR.join(bodies), pages=pages)
