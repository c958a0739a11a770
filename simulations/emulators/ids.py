"""Identifiers from a seeded generator, never from `uuid4`, so runs repeat exactly."""

from __future__ import annotations

import random
import uuid


class Ids:
    """Request ids (`req_` + 32 hex, as OpenAI's) and job ids (UUID-shaped, as LlamaCloud's)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def request_id(self) -> str:
        return f"req_{self._rng.getrandbits(128):032x}"

    def job_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
