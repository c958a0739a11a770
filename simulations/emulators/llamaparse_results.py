"""What `GET /api/v2/parse/{id}?expand=...` adds to the job: the shapes of v2 results.

Only what `expand` names is returned (section 9.7 of the v2 reference):
`text` pages `{page_number, text}`; `markdown` and `items` pages carry
`success`, and a failed page is `{page_number, success: false, error}`;
`markdown_full` and `text_full` are plain strings; `<name>_content_metadata`
fills `result_content_metadata[<name>]` with its required `size_bytes`.
Items are the page markdown's blocks: `heading` (with `level`) or `text`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson

from simulations.emulators.documents import Document, Page
from simulations.emulators.llamaparse_shared import Rejected

EXPANDS: Final = frozenset(
    {"text", "markdown", "items", "metadata", "markdown_full", "text_full", "job_metadata"}
    | {"usage", "images_content_metadata"}
)
CONTENT_METADATA: Final = frozenset(
    {"text", "markdown", "items", "metadata", "raw_words", "xlsx", "output_pdf"}
    | {"stripped_markdown", "concatenated_stripped_markdown", "forms"}
)
PAGE_ERROR: Final = "The page could not be parsed"


def read_expand(raw: Iterable[str]) -> frozenset[str]:
    """The `expand` values, repeated or comma-separated; 422 for one not served."""
    names = frozenset(name.strip() for value in raw for name in value.split(",") if name.strip())
    for name in names:
        if name not in EXPANDS and name.removesuffix("_content_metadata") not in CONTENT_METADATA:
            raise Rejected(422, f"Unknown expand value: {name}")
    return names


def page_items(page: Page) -> list[dict[str, Any]]:
    """The page's markdown blocks as typed items: headings, and text for the rest."""
    items: list[dict[str, Any]] = []
    for block in filter(None, (piece.strip() for piece in page.markdown.split("\n\n"))):
        marks = len(block) - len(block.lstrip("#"))
        if 0 < marks <= 6 and block[marks:].startswith(" "):
            value = block[marks:].strip()
            items.append({"type": "heading", "level": marks, "md": block, "value": value})
        else:
            items.append({"type": "text", "md": block, "value": block})
    return items


def expanded(
    document: Document,
    failed: frozenset[int],
    expand: frozenset[str],
    job_metadata: dict[str, Any],
) -> dict[str, Any]:
    """The result fields `expand` asks for, of a COMPLETED job that parsed `document`
    with `failed` pages."""
    pages = document.pages

    def failed_page(page: Page) -> dict[str, Any]:
        return {"page_number": page.number, "success": False, "error": PAGE_ERROR}

    content: dict[str, Any] = {}
    if "text" in expand:
        content["text"] = {
            "pages": [
                {"page_number": p.number, "text": "" if p.number in failed else p.markdown}
                for p in pages
            ]
        }
    if "markdown" in expand:
        content["markdown"] = {
            "pages": [
                failed_page(p)
                if p.number in failed
                else {"page_number": p.number, "markdown": p.markdown, "success": True}
                for p in pages
            ]
        }
    if "items" in expand:
        content["items"] = {
            "pages": [
                failed_page(p)
                if p.number in failed
                else {
                    "page_number": p.number,
                    "page_width": p.width,
                    "page_height": p.height,
                    "success": True,
                    "items": page_items(p),
                }
                for p in pages
            ]
        }
    if "metadata" in expand:
        content["metadata"] = {
            "pages": [{"page_number": p.number} for p in pages],
            "document": {},
        }
    full = document.joined(failed)
    if "markdown_full" in expand:
        content["markdown_full"] = full
    if "text_full" in expand:
        content["text_full"] = full
    if "job_metadata" in expand:
        content["job_metadata"] = job_metadata
    if "images_content_metadata" in expand:
        content["images_content_metadata"] = {"total_count": 0, "images": []}
    sizes = {
        name: {"size_bytes": len(orjson.dumps(content.get(name, full))), "exists": True}
        for name in (n.removesuffix("_content_metadata") for n in expand)
        if name in CONTENT_METADATA
    }
    if sizes:
        content["result_content_metadata"] = sizes
    return content
