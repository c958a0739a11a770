"""Jobs as tests make and count them: the bundled samples uploaded straight into a
store, as `POST /documents` would, and the jobs a store holds by state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from resilience.clock import Clock, wall_time
from simulations.samples import SAMPLES, Sample
from state.store.open import open_store
from state.store.protocol import JobStore


async def upload_samples(
    store: JobStore, samples: Sequence[Sample] = SAMPLES, *, clock: Clock = wall_time
) -> list[str]:
    """One job per sample, in order; their ids."""
    ids = []
    for sample in samples:
        created = await store.create_job(
            sample.path.read_bytes(),
            filename=sample.name,
            mime_type=sample.mime_type,
            now=clock(),
        )
        ids.append(created.job.id)
    return ids


async def job_states(store: str | Path) -> dict[str, int]:
    """{state: jobs in it, empty states left out} of the store `store` names, as --db would."""
    async with await open_store(store) as opened:
        counts = await opened.jobs_by_state()
    return {state.value: n for state, n in counts.items() if n}
