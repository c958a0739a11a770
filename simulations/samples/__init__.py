"""The bundled sample documents: real files the demo ingests with no network.

`SAMPLES` is the one list of them, in the order the demo ingests them, used
by the demo, the pipeline benchmark and the tests alike, so a sample added
or renamed here reaches every one. `make_pdf.py` writes budgets.pdf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, NamedTuple

FOLDER: Final = Path(__file__).resolve().parent
"""Where the samples are, in a checkout and in an installed wheel alike."""


class Sample(NamedTuple):
    """A bundled file and the media type it is uploaded with."""

    name: str
    mime_type: str

    @property
    def path(self) -> Path:
        return FOLDER / self.name


SAMPLES: Final = (
    Sample("circuit-breakers.md", "text/markdown"),
    Sample("rate-limits.txt", "text/plain"),
    Sample("budgets.pdf", "application/pdf"),
)
"""Every bundled sample, in the order the demo ingests them."""

TEXT_SAMPLES: Final = tuple(s for s in SAMPLES if s.mime_type.startswith("text/"))
"""The samples whose bytes are text, which a test or benchmark may vary or copy as text."""
