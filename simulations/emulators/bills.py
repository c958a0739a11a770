"""What the emulated OpenAI billed, and how much of each answer reached its client.

A simulation must judge our budget and our stored vectors by what the
provider did, not by what our code says it did. So the emulator keeps one
`OpenAIBill` per request its embeddings handler admitted (a 200 on its way
back: what OpenAI charges for), whatever became of the answer after:

* `answered`: the 200 left intact; every input's vector was delivered;
* `malformed`: garbled on the way back (the plan's `malformed_rate`); only a
  `missing_item` answer still delivers the items it kept, intact;
* `lost`: the plan's `lost_answer_rate` struck after the work was done and
  billed, and the request hung until its client gave up.

A bill keeps the inputs, not the vectors: a served vector is the
deterministic `vectors.embedding` of (model, input, dimensions), so
`OpenAIBill.vector` recomputes it exactly, and a long run keeps a few
hundred bytes a request instead of 6 KB an input. The dollars are on the
emulator's own price list (`openai_requests.MODELS`), never ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from simulations.emulators.openai_requests import EmbeddingRequest
from simulations.emulators.vectors import EmbeddingInput, embedding

Outcome = Literal["answered", "malformed", "lost"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("answered", "malformed", "lost")


@dataclass(slots=True)
class OpenAIBill:
    """One billed embeddings request. `at` is the loop time the handler ran (and billed);
    `delivered` holds the positions of the inputs whose vectors reached the client intact."""

    at: float
    correlation_id: str
    request_id: str
    model: str
    dimensions: int
    native_dims: int
    inputs: tuple[EmbeddingInput, ...]
    tokens: int
    usd: float
    outcome: Outcome
    delivered: frozenset[int]

    def vector(self, position: int) -> list[float]:
        """The vector this request's answer carried for input `position`."""
        return embedding(self.model, self.inputs[position], self.native_dims, self.dimensions)

    def served(self) -> Iterator[tuple[int, EmbeddingInput]]:
        """(position, input) of each input whose vector the client received intact."""
        return ((n, self.inputs[n]) for n in sorted(self.delivered))


class BillBook:
    """The bills of one emulator, by the `x-request-id` each answer carries."""

    def __init__(self) -> None:
        self._bills: dict[str, OpenAIBill] = {}

    def bill(
        self, request: EmbeddingRequest, *, at: float, correlation_id: str, request_id: str
    ) -> OpenAIBill:
        """Record an admitted request as answered in full; later faults may say otherwise."""
        inputs = tuple(item if isinstance(item, str) else tuple(item) for item in request.inputs)
        bill = OpenAIBill(
            at=at,
            correlation_id=correlation_id,
            request_id=request_id,
            model=request.model,
            dimensions=request.dimensions,
            native_dims=request.native_dims,
            inputs=inputs,
            tokens=request.total_tokens,
            usd=request.usd,
            outcome="answered",
            delivered=frozenset(range(len(inputs))),
        )
        self._bills[request_id] = bill
        return bill

    def lost(self, bill: OpenAIBill) -> None:
        bill.outcome, bill.delivered = "lost", frozenset()

    def malformed(self, request_id: str | None, kept: frozenset[int]) -> None:
        """The answer to `request_id` was garbled; only the positions in `kept` survived."""
        bill = self._bills.get(request_id or "")
        if bill is not None:
            bill.outcome, bill.delivered = "malformed", kept & bill.delivered

    def bills(self) -> tuple[OpenAIBill, ...]:
        """Every bill, in the order the handler ran."""
        return tuple(self._bills.values())

    def clear(self) -> None:
        self._bills.clear()


__all__ = ["OUTCOMES", "BillBook", "OpenAIBill", "Outcome"]
