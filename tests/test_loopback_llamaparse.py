"""The LlamaParse client against the emulator over real loopback HTTP, through Router + Guard.

Parse times are tens of milliseconds and polls are short, so each run takes
well under a second of real time; timing claims are made on the loop clock.
The webhook's security outcomes are in `test_webhook_e2e`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import pytest

from providers.llamaparse.client import (
    Document,
    LlamaParse,
    LlamaParseConfig,
    ParsedDocument,
    estimate_cost_usd,
)
from providers.llamaparse.mock import MockParser
from providers.pricing import USD_PER_CREDIT
from providers.transport import Transport
from resilience import (
    BreakerPolicy,
    Guard,
    ProviderError,
    RetryPolicy,
    Router,
    ServiceMode,
    TokenBucket,
)
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, RunningEmulator
from tests.events import Events
from tests.loopback import WebhookReceiver, receiving, serving, transport

KEY = "llx-loopback-test"
UPLOAD = "POST /api/v1/parsing/upload"
STATUS = "GET /api/v1/parsing/job/{job_id}"
RESULT = "GET /api/v1/parsing/job/{job_id}/result/markdown"
PARSE_TIME_S = 0.05
TEXT = Document("notes.txt", "Quarterly notes\nCafé revenue rose ✓\n".encode(), "text/plain")
MARKDOWN = Document(
    "readme.md", b"# Title\n\nSome *markdown* body.\n\n- one\n- two\n", "text/markdown"
)


def fast(**options: Any) -> FaultPlan:
    return FaultPlan(
        llamaparse=LlamaParsePlan(**{"parse_time_s": (PARSE_TIME_S, PARSE_TIME_S), **options})
    )


def config(running: RunningEmulator, **overrides: Any) -> LlamaParseConfig:
    base = LlamaParseConfig(
        api_key=KEY,
        base_url=running.llamaparse_base_url,
        read_timeout_s=2.0,
        job_timeout_s=5.0,
        poll_initial_s=0.05,
        poll_step_s=0.05,
        poll_max_s=0.1,
        api_version="v1",  # this file counts v1's routes; v2 is in test_loopback_llamaparse_v2
    )
    return dataclasses.replace(base, **overrides)


def client(running: RunningEmulator, sender: Transport, **options: Any) -> LlamaParse:
    """The client; its upload bucket allows a burst, so no test waits on our own throttle."""
    inbox = options.pop("inbox", None)
    uploads = TokenBucket(15, 1.5, name="llamaparse-uploads")
    return LlamaParse(config(running, **options), sender, inbox=inbox, upload_bucket=uploads)


def routed(client: LlamaParse, mode: ServiceMode = ServiceMode.HYBRID) -> Router:
    guard = Guard(
        "llamaparse",
        BreakerPolicy(failure_threshold=3, cooldown_s=30.0),
        retry=RetryPolicy(max_attempts=1, rng=random.Random(1)),
    )
    router = Router(mode)
    router.register("parse", real=client.parse, mock=MockParser().parse, guard=guard)
    return router


async def parse(router: Router, document: Document) -> ParsedDocument:
    routed_call = await router.call("parse", document, cost=estimate_cost_usd(document))
    assert routed_call.path == "real", routed_call.reason
    parsed: ParsedDocument = routed_call.value
    return parsed


@pytest.mark.parametrize("document", [TEXT, MARKDOWN], ids=["text", "markdown"])
def test_a_document_is_uploaded_polled_to_success_and_fetched(document: Document) -> None:
    async def main() -> tuple[ParsedDocument, float, Emulator]:
        emulator = Emulator(seed=1, faults=fast())
        loop = asyncio.get_running_loop()
        async with serving(emulator) as running, transport() as sender:
            router = routed(client(running, sender))
            started = loop.time()
            parsed = await parse(router, document)
            return parsed, loop.time() - started, emulator

    parsed, elapsed, emulator = asyncio.run(main())
    assert parsed.markdown == document.content.decode()
    assert (parsed.pages, parsed.failed_pages, parsed.sha256) == (1, [], document.sha256)
    assert parsed.cost_usd == pytest.approx(3 * USD_PER_CREDIT)  # the emulator's credits
    assert elapsed >= PARSE_TIME_S
    stats = emulator.stats()
    assert stats.requests[UPLOAD] == {200: 1}
    assert stats.count(STATUS, 200) >= 1  # it polled
    assert stats.requests[RESULT] == {200: 1}
    assert stats.jobs_created == 1


def test_the_same_content_is_uploaded_once_in_turn_and_at_once() -> None:
    async def main() -> tuple[list[ParsedDocument], Emulator]:
        emulator = Emulator(seed=2, faults=fast())
        async with serving(emulator) as running, transport() as sender:
            router = routed(client(running, sender))
            first = await parse(router, TEXT)
            renamed = dataclasses.replace(TEXT, name="copy-of-notes.txt")
            again = await parse(router, renamed)
            together = await asyncio.gather(parse(router, MARKDOWN), parse(router, MARKDOWN))
            return [first, again, *together], emulator

    (first, again, one, other), emulator = asyncio.run(main())
    assert again.job_id == first.job_id
    assert again.markdown == first.markdown
    assert (first.cost_usd > 0, again.cost_usd) == (True, 0.0)
    assert one.job_id == other.job_id != first.job_id
    assert sorted([one.cost_usd, other.cost_usd]) == [0.0, pytest.approx(3 * USD_PER_CREDIT)]
    stats = emulator.stats()
    assert stats.requests[UPLOAD] == {200: 2}  # one per distinct content
    assert stats.jobs_created == 2


def test_a_wrong_key_is_a_401_naming_the_variable_never_the_key(events: Events) -> None:
    wrong = "llx-WRONG-0123456789abcdef"

    async def main() -> tuple[ProviderError, Router, Emulator]:
        emulator = Emulator(seed=3, faults=fast(), llamaparse_api_key="llx-the-right-one")
        async with serving(emulator) as running, transport() as sender:
            router = routed(client(running, sender, api_key=wrong))
            with pytest.raises(ProviderError) as raised:
                await router.call("parse", TEXT)  # HYBRID: a bad key is raised, not mocked
            return raised.value, router, emulator

    error, router, emulator = asyncio.run(main())
    assert type(error) is ProviderError
    assert error.status == 401
    assert "LLAMA_CLOUD_API_KEY" in error.message
    assert "Invalid API key" in error.message  # the service's own words
    for shown in (str(error), repr(error), repr(events.records)):
        assert wrong not in shown
    breaker = router.guard("parse").breaker
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 0)
    assert emulator.stats().requests == {UPLOAD: {401: 1}}
    assert emulator.stats().jobs_created == 0


def test_a_signed_webhook_completes_the_parse_instead_of_polling() -> None:
    secret = "loopback-webhook-secret"

    async def main() -> tuple[ParsedDocument, float, WebhookReceiver, Emulator]:
        emulator = Emulator(seed=4, faults=fast(), webhook_secret=secret)
        receiver = WebhookReceiver(secret)
        loop = asyncio.get_running_loop()
        async with receiving(receiver) as hook, serving(emulator) as running, transport() as tx:
            parser = client(
                running,
                tx,
                inbox=receiver.inbox,
                webhook_url=hook,
                webhook_secret=secret,
                webhook_deadline_s=3.0,
                poll_initial_s=3.0,  # a poll, had there been one, would come this late
            )
            router = routed(parser)
            started = loop.time()
            parsed = await parse(router, MARKDOWN)
            return parsed, loop.time() - started, receiver, emulator

    parsed, elapsed, receiver, emulator = asyncio.run(main())
    assert parsed.markdown == MARKDOWN.content.decode()
    assert parsed.cost_usd == pytest.approx(3 * USD_PER_CREDIT)
    assert PARSE_TIME_S <= elapsed < 1.0
    assert [event.job_id for event in receiver.processed] == [parsed.job_id]
    stats = emulator.stats()
    assert (stats.count(STATUS), stats.count(RESULT)) == (0, 0)
    assert stats.webhooks["delivered"] == 1
