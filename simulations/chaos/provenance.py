"""Where each stored parse and vector came from, judged by the providers and the mocks.

Our store labels every parse and vector `real` or `mock` (`path`) and marks
a job `degraded` when a mock served it; all three are written by the code
under test. Here each output is traced instead:

* a parse is LlamaParse's when the emulator has a COMPLETED job for that
  document (by file name) under the parse's `parser_job_id`, and the text,
  page count and failed pages are exactly what that job serves
  (`Document.joined`, the `markdown_full` of its result); it is the mock's
  when it equals what `MockParser` makes of the document's bytes (the mock
  is a pure function, so it is run again here);
* a vector is OpenAI's when the emulator delivered that chunk's text intact
  in some answer (`Emulator.openai_bills`) and the bytes equal what it
  served for it (`OpenAIBill.vector`, recomputed); it is the mock's when it
  equals `MockEmbedder.vector` of the text.

Anything else is a problem. So is a label that disagrees with the source, a
job holding mock output that is not `degraded`, and, after a backfill with
the providers healthy, any mock output left at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from providers.llamaparse.client import Document, ParsedDocument
from providers.llamaparse.mock import MockParser
from providers.openai.mock import MockEmbedder
from resilience import ProviderError
from simulations.chaos.ground_truth import document_of
from simulations.emulators.bills import OpenAIBill
from simulations.emulators.llamaparse_v2 import ParseJob
from simulations.emulators.vectors import embedding
from state.store.vectors import pack_f32

if TYPE_CHECKING:
    from simulations.chaos.world import World

Source = Literal["real", "mock"]
PROVENANCE: Final = "ground truth: provenance: "
BACKFILL: Final = "ground truth: backfill: "


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A complete job and its parse as the store holds them (`complete_parses`' row)."""

    id: str
    version: int
    sha256: str
    filename: str
    mime_type: str
    degraded: bool
    parse: tuple[str, int, list[int], str] | None
    """(markdown, pages, failed pages, parser job id), or None without a parse."""
    path: str | None

    @classmethod
    def from_row(cls, row: Sequence[object]) -> StoredJob:
        job_id, version, sha256, filename, mime, degraded, markdown, pages, failed, parser, path = (
            row
        )
        parse = None
        if markdown is not None:
            failed_pages = [int(page) for page in json.loads(str(failed))]
            parse = (str(markdown), int(str(pages)), failed_pages, str(parser))
        return cls(
            str(job_id),
            int(str(version)),
            str(sha256),
            str(filename),
            str(mime),
            bool(degraded),
            parse,
            None if path is None else str(path),
        )


class Provenance:
    """The record of what OpenAI delivered intact, and the mocks' outputs, kept per run.

    Both grow only: bills are read once each (a bill is final when the
    request's `handle` returns, and no step stops one in between), and a
    recomputed output is kept for the next check, so a check after every
    step costs a comparison of bytes per stored output.
    """

    def __init__(self, model: str, dimensions: int) -> None:
        self.model = model
        self.dimensions = dimensions
        self._mock_embedder = MockEmbedder(model, dimensions)
        self._delivered: dict[str, int] = {}
        """Chunk text -> native dimensions, for each input of (model, dimensions) some
        answer delivered intact."""
        self._bills_read = 0
        self._real_vectors: dict[str, bytes] = {}
        self._mock_vectors: dict[str, bytes] = {}
        self._mock_parses: dict[str, ParsedDocument | None] = {}
        self._sound: dict[str, int] = {}
        """Job id -> the version at which its outputs were found sound."""

    def read(self, bills: Sequence[OpenAIBill]) -> None:
        """Note the inputs delivered intact by the bills not read yet."""
        for bill in bills[self._bills_read :]:
            if (bill.model, bill.dimensions) != (self.model, self.dimensions):
                continue
            for _, item in bill.served():
                if isinstance(item, str):
                    self._delivered[item] = bill.native_dims
        self._bills_read = len(bills)

    def vector_source(self, text: str, vector: bytes) -> Source | None:
        native = self._delivered.get(text)
        if native is not None:
            real = self._real_vectors.get(text)
            if real is None:
                real = pack_f32(embedding(self.model, text, native, self.dimensions))
                self._real_vectors[text] = real
            if vector == real:
                return "real"
        mock = self._mock_vectors.get(text)
        if mock is None:
            mock = self._mock_vectors[text] = pack_f32(self._mock_embedder.vector(text))
        return "mock" if vector == mock else None

    def sound(self, job: StoredJob) -> bool:
        """Was this job, at this version, found sound already?"""
        return self._sound.get(job.id) == job.version

    def found_sound(self, jobs: Iterable[StoredJob]) -> None:
        self._sound.update((job.id, job.version) for job in jobs)

    def knows_mock_parse(self, sha256: str) -> bool:
        return sha256 in self._mock_parses

    async def mock_parse(self, sha256: str, document: Document) -> None:
        """Run the mock parser on `document` once; its output is kept for `parse_source`."""
        try:
            parsed: ParsedDocument | None = await MockParser().parse(document)
        except ProviderError:
            parsed = None
        self._mock_parses[sha256] = parsed

    def parse_source(
        self, job: StoredJob, made: Mapping[str, ParseJob], now: float
    ) -> Source | None:
        assert job.parse is not None
        markdown, pages, failed, parser_job_id = job.parse
        remote = made.get(parser_job_id)
        if (
            remote is not None
            and remote.status(now) == "COMPLETED"
            and document_of(remote.name) == job.filename
            and markdown == remote.document.joined(remote.failed_pages)
            and pages == remote.document.page_count
            and failed == sorted(remote.failed_pages)
        ):
            return "real"
        mock = self._mock_parses.get(job.sha256)
        if mock is not None and (markdown, pages, failed, parser_job_id) == (
            mock.markdown,
            mock.pages,
            sorted(mock.failed_pages),
            mock.job_id,
        ):
            return "mock"
        return None


def problems(
    provenance: Provenance,
    jobs: Iterable[StoredJob],
    vectors: Iterable[tuple[str, int, str, bytes, str]],
    made: Sequence[ParseJob],
    now: float,
    *,
    after_backfill: bool = False,
) -> list[str]:
    """Each complete job's outputs traced to their source (module doc); the first few
    problems found. `vectors` are `CheckedStore.vectors_of`' rows."""
    by_id = {remote.id: remote for remote in made}
    found: list[str] = []
    mock_held: dict[str, list[str]] = {}
    complete = {job.sha256: job for job in jobs}
    for job in complete.values():
        if job.parse is None:
            continue  # `_check_outputs` reports a complete job without a parse
        source = provenance.parse_source(job, by_id, now)
        if source is None:
            found.append(
                f"{PROVENANCE}job {job.id}: its parse (parser job {job.parse[3]}) is neither "
                f"what LlamaParse served for {job.filename} nor the mock's"
            )
        elif source != job.path:
            found.append(
                f"{PROVENANCE}job {job.id}: its parse is the {source}'s, labelled {job.path}"
            )
        if source == "mock":
            mock_held.setdefault(job.id, []).append("parse")
    for sha256, index, text, vector, path in vectors:
        job = complete[sha256]
        source = provenance.vector_source(text, vector)
        if source is None:
            found.append(
                f"{PROVENANCE}job {job.id}: chunk {index}'s vector is neither one OpenAI "
                "delivered intact for its text nor the mock's"
            )
        elif source != path:
            found.append(
                f"{PROVENANCE}job {job.id}: chunk {index}'s vector is the {source}'s, "
                f"labelled {path}"
            )
        if source == "mock":
            mock_held.setdefault(job.id, []).append(f"chunk {index}'s vector")
    degraded = {job.id for job in complete.values() if job.degraded}
    for job_id, outputs in mock_held.items():
        if after_backfill:
            found.append(f"{BACKFILL}job {job_id} still holds the mock's {outputs[0]}")
        elif job_id not in degraded:
            found.append(f"{PROVENANCE}job {job_id} holds the mock's {outputs[0]}, not degraded")
    return found


def world_problems(
    world: World, provenance: Provenance, *, full: bool = False, after_backfill: bool = False
) -> list[str]:
    """`problems` of the world's complete jobs as they stand: of every one when `full` (or
    after a backfill), else of those not found sound yet as they are (new, or changed
    since: every change to a complete job's outputs that our code makes bumps its
    version). Teardown checks every job, so an output rewritten behind an unchanged
    version is still caught."""
    store = world.store
    jobs = [StoredJob.from_row(row) for row in world.run(store.complete_parses())]
    every = full or after_backfill
    todo = jobs if every else [job for job in jobs if not provenance.sound(job)]
    if not todo:
        return []
    for job in todo:
        if not provenance.knows_mock_parse(job.sha256):
            content = world.run(store.document(job.sha256))
            assert content is not None, f"job {job.id}: its document is gone"
            document = Document(job.filename, content, job.mime_type)
            world.run(provenance.mock_parse(job.sha256, document))
    provenance.read(world.emulator.openai_bills())
    vectors = world.run(
        store.vectors_of([job.sha256 for job in todo], provenance.model, provenance.dimensions)
    )
    made = world.emulator.llamaparse_jobs()
    found = problems(provenance, todo, vectors, made, world.now, after_backfill=after_backfill)
    if not found:
        provenance.found_sound(todo)
    return found


__all__ = [
    "BACKFILL",
    "PROVENANCE",
    "Provenance",
    "Source",
    "StoredJob",
    "problems",
    "world_problems",
]
