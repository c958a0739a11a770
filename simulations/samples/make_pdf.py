"""Writes budgets.pdf, the PDF among the bundled samples, from the text in this file.

Run it from the repository root after changing the text:

    python simulations/samples/make_pdf.py

The demo ingests real documents with no network, and one of them must be a
PDF, so this file is its source. pypdf reads PDFs but cannot lay out text,
so this is a minimal PDF 1.4 writer: a catalog, a page tree, a page object
per page whose content stream draws lines with BT, Tf, Td, Tj and ET in the
standard fonts Helvetica and Helvetica-Bold (standard fonts need no embedding,
so every reader has them), an info dictionary and a cross-reference table
holding each object's byte offset. The output is the same bytes on every
run (no dates, no ids), so a test checks the committed file against
`build()` and reads its text back through pypdf.

The text must be ASCII: it is written as PDF strings in WinAnsiEncoding,
and `.encode("ascii")` refuses anything else rather than print mojibake.
Prose is wrapped by character count, which keeps 11-point Helvetica within
the margins.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Final

TITLE: Final = "Budgets for AI service calls"

SECTIONS: Final = (
    (
        "Why budgets",
        "Calls to hosted AI services are priced per unit of work: per thousand tokens "
        "embedded, per page parsed, per image generated. The price of one call is small, "
        "which is exactly why costs escape notice. A retry loop that never gives up, a "
        "batch job started twice, or a document that is parsed again on every deploy can "
        "multiply a monthly bill before anyone looks at a dashboard. A budget turns cost "
        "into a limit the program enforces itself, in the same place it enforces rate "
        "limits and circuit breakers, instead of a number someone reads after the fact.",
        "A budget answers one question before each call: may this call spend this much "
        "money now? If the answer is no, the call is not made. The caller can then wait "
        "for the next period, serve a cheaper fallback, or stop and tell a person.",
    ),
    (
        "Periods and limits",
        "Budgets are usually set per period. A daily limit caps the damage of a runaway "
        "process to one day of spending. An hourly limit catches the same problem sooner, "
        "and keeps one burst of work from using a whole day's allowance in ten minutes. "
        "Both can apply at once: a call must fit every limit that covers it.",
        "Periods should follow the calendar, in UTC, rather than slide. A sliding window "
        "of twenty-four hours is harder to explain and harder to reconcile with the "
        "provider's invoice, which is grouped by calendar day. With calendar periods, the "
        "usage for Tuesday is simply the sum of the calls made on Tuesday.",
        "Limits can be counted in money, in requests, or in both. Money is what the "
        "business cares about. Requests are useful when prices change or are unknown, and "
        "as a second safety net when a pricing table is wrong.",
    ),
    (
        "Reserve, then settle",
        "The cost of a call is often unknown until it returns. An embedding request is "
        "priced by the tokens the provider counts; a parsing job is priced by the pages it "
        "actually processed. A budget therefore works in two steps. Before the call, it "
        "reserves an estimate, and refuses the call if the estimate does not fit. After the "
        "call, it settles the reservation at the actual cost reported by the provider.",
        "The reservation must be atomic: checking the remaining budget and adding the "
        "estimate have to happen as one step. Otherwise two workers can both see room for "
        "one more call, both proceed, and together overspend. With a single process an "
        "in-memory ledger is enough. Several processes need a shared store that can check "
        "and add in one operation, such as a database transaction.",
        "What happens when the call fails depends on what is known. If the provider "
        "answered with an error, nothing was done and nothing was charged, so the "
        "reservation is released. If the outcome is unknown, because the connection "
        "dropped or the call timed out, the provider may have done the work and billed it. "
        "The safe choice is to keep the estimate charged. Refunding it would let a flaky "
        "network quietly spend more than the limit allows.",
    ),
    (
        "Estimating well",
        "An estimate that is too low lets a call through that the budget could not afford. "
        "An estimate that is too high refuses calls that would have fitted. Count what can "
        "be counted exactly before the call: tokens with the provider's tokenizer, pages by "
        "reading the document. Multiply by the published price, and keep the prices in one "
        "table with the date they were checked, because providers change them.",
        "When the actual cost comes back, compare it with the estimate. A consistent gap "
        "means the estimator or the price table is wrong, and is worth a log line of its "
        "own.",
    ),
    (
        "Alerts before refusals",
        "A budget that only refuses calls gives no warning. Alert at fixed levels of each "
        "limit, such as one half, four fifths and all of it, and send each alert once per "
        "period. The first tells someone that spending is unusual while there is still "
        "time to look. The last says that calls are now being refused, and why.",
    ),
    (
        "Reporting",
        "Keep usage per scope and per period, and make it easy to export: one row per "
        "period with the money reserved, the money settled, the number of requests and "
        "the number refused. That table answers the questions people actually ask. What "
        "did yesterday cost? Which service spent it? How often did the budget stop work, "
        "and was that the budget doing its job or a limit set too low?",
        "A budget is not a substitute for understanding costs. It is the guard rail that "
        "keeps a mistake small while someone finds it.",
    ),
)

FOOTER: Final = "Breakwater sample document: budgets, page {page} of {pages}"

PAGE_WIDTH, PAGE_HEIGHT = 612, 792  # US Letter, in points
MARGIN: Final = 72
TEXT_HEIGHT: Final = float(PAGE_HEIGHT - 2 * MARGIN)
WRAP_CHARS: Final = 86
FONTS: Final = {"body": ("F1", 11, 15), "heading": ("F2", 13, 20), "title": ("F2", 18, 26)}
"""Style: (font resource, size, leading in points)."""
PARAGRAPH_GAP: Final = 7

OUTPUT: Final = Path(__file__).with_name("budgets.pdf")

_Line = tuple[str, str, float]
"""(style, text, space above in points)."""


def pages() -> list[list[_Line]]:
    """The document's lines, page by page; a heading never ends a page."""
    blocks: list[list[_Line]] = [[("title", TITLE, 0.0)]]
    for heading, *paragraphs in SECTIONS:
        section: list[_Line] = [("heading", heading, 2 * PARAGRAPH_GAP)]
        for paragraph in paragraphs:
            lines = textwrap.wrap(paragraph, WRAP_CHARS, break_on_hyphens=False)
            above = [float(PARAGRAPH_GAP)] + [0.0] * (len(lines) - 1)
            section.extend(("body", line, gap) for line, gap in zip(lines, above, strict=True))
        blocks.append(section)
    result: list[list[_Line]] = [[]]
    room = TEXT_HEIGHT
    for block in blocks:
        for position, line in enumerate(block):
            height = _height(line)
            if position == 0 and len(block) > 1:
                height += _height(block[1])  # keep a heading with its first line
            if height > room and result[-1]:
                result.append([])
                room = TEXT_HEIGHT
            result[-1].append(line)
            room -= _height(line)
    return result


def page_texts() -> list[str]:
    """What each page says, footer included, with lines joined by newlines."""
    laid_out = pages()
    return [
        "\n".join([*(text for _, text, _ in page), _footer(number, len(laid_out))])
        for number, page in enumerate(laid_out, start=1)
    ]


def build() -> bytes:
    """The whole PDF file."""
    laid_out = pages()
    count = len(laid_out)
    # Objects 1 to 5 are fixed; then each page is an object and its content stream the next.
    page_object = [6 + 2 * i for i in range(count)]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % number for number in page_object), count),
        _font("Helvetica"),
        _font("Helvetica-Bold"),
        b"<< /Title %s /Producer (breakwater simulations/samples/make_pdf.py) >>" % _string(TITLE),
    ]
    for number, (page, object_number) in enumerate(
        zip(laid_out, page_object, strict=True), start=1
    ):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, object_number + 1)
        )
        stream = _content(page, _footer(number, count))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    return serialize(objects, info=5)


def serialize(objects: list[bytes], *, info: int | None = None) -> bytes:
    """A PDF file of `objects` (numbered from 1; object 1 is the catalog), with its xref table.

    `info` is the object number of the document information dictionary, if any.
    """
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # the binary comment marks a binary file
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    info_entry = b" /Info %d 0 R" % info if info is not None else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info_entry,
        xref,
    )
    return bytes(out)


def _height(line: _Line) -> float:
    style, _, above = line
    return FONTS[style][2] + above


def _footer(number: int, count: int) -> str:
    return FOOTER.format(page=number, pages=count)


def _font(name: str) -> bytes:
    return b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % (
        name.encode()
    )


def _string(text: str) -> bytes:
    """A PDF literal string: backslashes and parentheses escaped."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(%s)" % escaped.encode("ascii")


def _content(page: list[_Line], footer: str) -> bytes:
    """The page's content stream: each line placed relative to the one before it."""
    ops = [b"BT"]
    y = float(PAGE_HEIGHT - MARGIN)
    previous_y: float | None = None
    for style, text, above in page:
        font, size, leading = FONTS[style]
        y -= leading + above
        move = b"%d %g Td" % (MARGIN, y) if previous_y is None else b"0 %g Td" % (y - previous_y)
        ops.append(b"/%s %d Tf %s %s Tj" % (font.encode(), size, move, _string(text)))
        previous_y = y
    ops.append(b"ET")
    ops.append(b"BT /F1 9 Tf %d %d Td %s Tj ET" % (MARGIN, MARGIN // 2, _string(footer)))
    return b"\n".join(ops)


if __name__ == "__main__":
    OUTPUT.write_bytes(build())
    print(f"wrote {OUTPUT} ({len(pages())} pages)")
