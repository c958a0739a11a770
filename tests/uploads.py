"""The bundled samples uploaded straight into a job store, as `POST /documents` would."""

from __future__ import annotations

from collections.abc import Sequence

from resilience.clock import Clock, wall_time
from simulations.samples import SAMPLES, Sample
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
