"""Webhooks relayed between processes through Redis (`providers.llamaparse.relay`).

Two `SharedInbox`es on separate connections stand for the server's process
and a worker's; a real Redis (tests/redis_server.py) carries the events.
"""

from __future__ import annotations

import asyncio

import pytest

from providers.llamaparse.relay import SharedInbox
from providers.llamaparse.webhooks import WebhookEvent
from resilience.shared.gate import connect

pytestmark = pytest.mark.redis

DONE = WebhookEvent("llama-1", "parse.success", "SUCCESS", {"md": "# Parsed"})


async def pair(url: str) -> tuple[SharedInbox, SharedInbox]:
    server, worker = SharedInbox(connect(url)), SharedInbox(connect(url))
    for inbox in (server, worker):
        inbox.start()
        await asyncio.wait_for(inbox.subscribed(), 5)
    return server, worker


async def close(*inboxes: SharedInbox) -> None:
    for inbox in inboxes:
        await inbox.close()
        await inbox.client.aclose()


def test_a_delivery_to_the_server_wakes_the_parse_in_another_process(redis_url: str) -> None:
    async def body() -> None:
        server, worker = await pair(redis_url)
        assert not await server.known("llama-1")
        waiting = asyncio.create_task(worker.wait("llama-1", 10))
        await asyncio.sleep(0.1)
        assert await server.known("llama-1")  # so the delivery gets 200, not 404
        assert server.accept(DONE)
        assert await asyncio.wait_for(waiting, 5) == DONE
        assert not await server.known("llama-1")  # the parse stopped waiting
        assert not server.accept(DONE)  # a redelivery is a duplicate
        await close(server, worker)

    asyncio.run(body())


def test_a_parse_that_starts_waiting_late_still_gets_the_event(redis_url: str) -> None:
    async def body() -> None:
        server, worker = await pair(redis_url)
        server.accept(DONE)
        await asyncio.sleep(0.1)
        late = SharedInbox(connect(redis_url))  # a process that was not listening then
        assert await late.wait("llama-1", 1) == DONE
        await close(server, worker, late)

    asyncio.run(body())


def test_without_redis_the_inbox_works_for_its_own_process() -> None:
    async def body() -> None:
        inbox = SharedInbox(connect("redis://127.0.0.1:1/0"))
        assert not await inbox.known("llama-1")
        waiting = asyncio.create_task(inbox.wait("llama-1", 5))
        await asyncio.sleep(0.05)
        assert inbox.accept(DONE)
        assert await asyncio.wait_for(waiting, 5) == DONE
        await close(inbox)

    asyncio.run(body())
