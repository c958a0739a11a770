"""The LlamaParse upload limit shared through Redis (`providers.llamaparse.uploads`).

Two clients on separate connections and worker ids stand for two worker
processes; a real Redis (tests/redis_server.py) holds their one bucket, and
a transport playing v2's upload endpoint records when each upload arrives.
"""

from __future__ import annotations

import asyncio

import pytest

from providers.llamaparse.client import Document, LlamaParse, LlamaParseConfig
from providers.llamaparse.uploads import SharedUploads
from resilience.shared.gate import connect
from resilience.shared.policy import SharedPolicy
from tests.test_llamaparse_settings import V2Uploads

pytestmark = pytest.mark.redis

LIMIT = 50
PER_WORKER = 6


def test_two_workers_share_one_upload_limit(redis_url: str) -> None:
    server = V2Uploads()

    async def main() -> None:
        config = LlamaParseConfig(api_key="llx-test", base_url="http://llamacloud.test")
        clients = [connect(redis_url) for _ in range(2)]
        try:
            workers = [
                LlamaParse(
                    config,
                    server,
                    upload_bucket=SharedUploads(
                        client, LIMIT, policy=SharedPolicy(), worker_id=f"worker-{n}"
                    ),
                )
                for n, client in enumerate(clients)
            ]
            await asyncio.gather(
                *(
                    worker.submit(Document(f"w{n}-{i}.txt", f"{n}/{i}".encode(), "text/plain"))
                    for n, worker in enumerate(workers)
                    for i in range(PER_WORKER)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(main())
    times = sorted(server.times)
    assert len(times) == 2 * PER_WORKER
    # One bucket of one upload refilling at (50 - 1/6) per 10 s serves both workers:
    # 11 uploads after the first take 11 refills. Two private buckets would take 5.
    refill_s = 10 / (LIMIT - 1 / 6)
    assert times[-1] - times[0] >= 11 * refill_s * 0.95
