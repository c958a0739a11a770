"""Webhooks end to end: the emulator delivers to a receiver app built on `check_delivery`.

The receiver is a real aiohttp app on 127.0.0.1 that answers with the
verdict's status and JSON error body, as an API server would. The emulator
is configured the way a deployment is, through LLAMA_CLOUD_WEBHOOK_URL and
LLAMA_CLOUD_WEBHOOK_SECRET, and the client waits on the receiver's inbox.

Bad deliveries are driven two ways: the emulator's own `bad_signature_rate`
and `duplicate_rate`, and requests crafted by the test and POSTed straight
to the receiver. Each rejected delivery must change nothing: the inbox
records no event and a job's waiter is not woken, so a good delivery after
it is still new and still completes the wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from providers.llamaparse.client import Document, LlamaParse, LlamaParseConfig
from providers.llamaparse.webhooks import LC_SIGNATURE_HEADER, WebhookEvent, WebhookInbox, sign_lc
from providers.transport import Transport
from resilience import TokenBucket
from simulations.emulators import (
    Emulator,
    FaultPlan,
    LlamaParsePlan,
    RunningEmulator,
    WebhookPlan,
)
from tests.loopback import WebhookReceiver, receiving, serving, transport

KEY = "llx-e2e-test"
SECRET = "e2e-webhook-signing-secret"
STATUS = "GET /api/v1/parsing/job/{job_id}"
RESULT = "GET /api/v1/parsing/job/{job_id}/result/markdown"
PARSE_TIME_S = 0.05
DOCUMENT = Document("minutes.md", b"# Minutes\n\nThe webhook arrived first.\n", "text/markdown")
JOB = "0b4a6f3e-8d1c-4c52-9a77-3f0e2d1c5b6a"
DATA: dict[str, Any] = {"md": "# Hooked\n", "job_metadata": {"job_pages": 1, "credits_used": 3}}
EVENT: dict[str, Any] = {
    "event_type": "parse.success",
    "job_id": JOB,
    "status": "SUCCESS",
    "data": DATA,
}
BODY = orjson.dumps(EVENT)
SIGNED_BADLY = "missing or invalid webhook signature"


def plan(**webhook: Any) -> FaultPlan:
    return FaultPlan(
        llamaparse=LlamaParsePlan(
            parse_time_s=(PARSE_TIME_S, PARSE_TIME_S), webhook=WebhookPlan(**webhook)
        )
    )


def client(
    running: RunningEmulator, hook: str, sender: Transport, inbox: WebhookInbox, **timing: Any
) -> LlamaParse:
    """The client as a deployment configures it: from the LLAMA_CLOUD_* variables."""
    settings = LlamaParseConfig.from_env(
        {
            "LLAMA_CLOUD_API_KEY": KEY,
            "LLAMA_CLOUD_BASE_URL": running.llamaparse_base_url,
            "LLAMA_CLOUD_WEBHOOK_URL": hook,
            "LLAMA_CLOUD_WEBHOOK_SECRET": SECRET,
            "LLAMA_CLOUD_API_VERSION": "v1",  # v1's wire and routes; v2's in test_serve_webhooks
        }
    )
    settings = dataclasses.replace(settings, read_timeout_s=2.0, job_timeout_s=5.0, **timing)
    uploads = TokenBucket(15, 1.5, name="llamaparse-uploads")
    return LlamaParse(settings, sender, inbox=inbox, upload_bucket=uploads)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait for `condition`; the emulator's counters have no event to wait on, so poll."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- driven by the emulator ------------------------------------------------------------


def test_a_signed_delivery_is_accepted_and_completes_parse_without_polling() -> None:
    async def main() -> None:
        emulator = Emulator(seed=1, faults=plan(), webhook_secret=SECRET)
        receiver = WebhookReceiver(SECRET)
        loop = asyncio.get_running_loop()
        async with receiving(receiver) as hook, serving(emulator) as running, transport() as tx:
            parser = client(
                running, hook, tx, receiver.inbox, webhook_deadline_s=3.0, poll_initial_s=3.0
            )
            started = loop.time()
            parsed = await parser.parse(DOCUMENT)
            elapsed = loop.time() - started
        assert parsed.markdown == DOCUMENT.content.decode()
        assert PARSE_TIME_S <= elapsed < 3.0  # before the first poll was due
        stats = emulator.stats()
        assert (stats.count(STATUS), stats.count(RESULT)) == (0, 0)  # no poll at all
        assert stats.webhooks["delivered"] == 1
        [verdict] = receiver.verdicts
        assert (verdict.status, verdict.error, verdict.duplicate) == (200, None, False)
        assert [event.job_id for event in receiver.processed] == [parsed.job_id]

    asyncio.run(main())


def test_an_emulator_duplicate_is_acknowledged_once_and_ignored() -> None:
    async def main() -> None:
        emulator = Emulator(seed=2, faults=plan(duplicate_rate=1.0), webhook_secret=SECRET)
        receiver = WebhookReceiver(SECRET)
        async with receiving(receiver) as hook, serving(emulator) as running, transport() as tx:
            parser = client(
                running, hook, tx, receiver.inbox, webhook_deadline_s=3.0, poll_initial_s=3.0
            )
            parsed = await parser.parse(DOCUMENT)
            await until(lambda: len(receiver.verdicts) == 2)
        assert [(v.status, v.duplicate) for v in receiver.verdicts] == [(200, False), (200, True)]
        assert [event.job_id for event in receiver.processed] == [parsed.job_id]  # one event
        assert len(receiver.inbox) == 1
        stats = emulator.stats()
        assert (stats.webhooks["delivered"], stats.webhooks["duplicated"]) == (1, 1)
        assert stats.count(STATUS) == 0

    asyncio.run(main())


def test_an_emulator_bad_signature_is_refused_and_the_client_polls_instead() -> None:
    deadline_s = 0.4

    async def main() -> None:
        faults = plan(bad_signature_rate=1.0, retry_backoff_s=(0.05,))
        emulator = Emulator(seed=3, faults=faults, webhook_secret=SECRET)
        receiver = WebhookReceiver(SECRET)
        loop = asyncio.get_running_loop()
        async with receiving(receiver) as hook, serving(emulator) as running, transport() as tx:
            parser = client(
                running,
                hook,
                tx,
                receiver.inbox,
                webhook_deadline_s=deadline_s,
                poll_initial_s=0.05,
                poll_step_s=0.05,
                poll_max_s=0.1,
            )
            started = loop.time()
            parsed = await parser.parse(DOCUMENT)
            elapsed = loop.time() - started
            await until(lambda: emulator.stats().webhooks["failed"] == 1)
        assert parsed.markdown == DOCUMENT.content.decode()
        # The refused deliveries woke nobody: the client waited out its deadline, then polled.
        assert elapsed >= deadline_s
        assert [v.status for v in receiver.verdicts] == [401, 401]  # the try and its retry
        assert all(v.error == {"detail": SIGNED_BADLY} for v in receiver.verdicts)
        assert (len(receiver.inbox), receiver.processed) == (0, [])
        stats = emulator.stats()
        assert stats.count(STATUS, 200) >= 1
        assert stats.requests[RESULT] == {200: 1}
        assert (stats.webhooks["bad_signature"], stats.webhooks["delivered"]) == (1, 0)

    asyncio.run(main())


# -- crafted deliveries, POSTed to the receiver directly ------------------------------

NO_JOB_ID = b'{"event_type": "parse.success"}'
BAD_DELIVERIES: list[tuple[str, bytes, dict[str, str], int, str]] = [
    (
        "wrong secret",
        BODY,
        {LC_SIGNATURE_HEADER: sign_lc("not-" + SECRET, BODY)},
        401,
        SIGNED_BADLY,
    ),
    (
        "tampered body",
        BODY.replace(b"# Hooked", b"# Forged"),
        {LC_SIGNATURE_HEADER: sign_lc(SECRET, BODY)},
        401,
        SIGNED_BADLY,
    ),
    ("missing header", BODY, {}, 401, SIGNED_BADLY),
    (
        "malformed JSON",
        BODY[:-7],
        {LC_SIGNATURE_HEADER: sign_lc(SECRET, BODY[:-7])},
        400,
        "webhook body is not JSON",
    ),
    (
        "no job id",
        NO_JOB_ID,
        {LC_SIGNATURE_HEADER: sign_lc(SECRET, NO_JOB_ID)},
        400,
        "webhook body needs a non-empty string job_id",
    ),
    # The signature is checked first: unsigned garbage never reaches the JSON decoder.
    ("unsigned garbage", b"{not json", {}, 401, SIGNED_BADLY),
]


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as r,
    ):
        return r.status, await r.json()


def signed() -> dict[str, str]:
    return {LC_SIGNATURE_HEADER: sign_lc(SECRET, BODY)}


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "detail"),
    BAD_DELIVERIES,
    ids=[c[0] for c in BAD_DELIVERIES],
)
def test_a_bad_delivery_is_refused_and_changes_nothing(
    case: str, body: bytes, headers: dict[str, str], status: int, detail: str
) -> None:
    async def main() -> None:
        receiver = WebhookReceiver(SECRET)
        async with receiving(receiver) as hook:
            waiter = asyncio.ensure_future(receiver.inbox.wait(JOB, 2.0))
            answer_status, answer = await post(hook, body, headers)
            assert answer_status == status
            assert set(answer) == {"detail"}
            assert answer["detail"].startswith(detail)
            await asyncio.sleep(0.05)
            assert not waiter.done()  # the job's waiter slept through it
            assert (len(receiver.inbox), receiver.processed) == (0, [])
            # The good delivery is still new: the refused one left no trace in the dedup.
            assert await post(hook, BODY, signed()) == (200, {"received": True, "duplicate": False})
            event = await waiter
        assert event == WebhookEvent(JOB, "parse.success", "SUCCESS", DATA)
        assert [v.status for v in receiver.verdicts] == [status, 200]

    asyncio.run(main())


def test_a_duplicate_delivery_is_200_and_creates_no_second_event() -> None:
    async def main() -> None:
        receiver = WebhookReceiver(SECRET)
        async with receiving(receiver) as hook:
            waiter = asyncio.ensure_future(receiver.inbox.wait(JOB, 2.0))
            first = await post(hook, BODY, signed())
            event = await waiter
            second = await post(hook, BODY, signed())
            later = await receiver.inbox.wait(JOB, 0.1)
        assert first == (200, {"received": True, "duplicate": False})
        assert second == (200, {"received": True, "duplicate": True})
        assert [v.duplicate for v in receiver.verdicts] == [False, True]
        assert receiver.processed == [event]  # the app acted once
        assert later is event  # the job keeps the first event; the copy replaced nothing
        assert len(receiver.inbox) == 1

    asyncio.run(main())


def test_a_waiting_parse_is_not_completed_by_any_refused_delivery() -> None:
    # The emulator's one delivery is badly signed; its body tells the test the job id,
    # and the test forges every other bad kind for that job while the client waits.
    # None may complete the parse: the client waits out its deadline, then polls.
    deadline_s = 0.5

    async def main() -> None:
        faults = plan(bad_signature_rate=1.0, retry_backoff_s=())
        emulator = Emulator(seed=4, faults=faults, webhook_secret=SECRET)
        receiver = WebhookReceiver(SECRET)
        loop = asyncio.get_running_loop()
        async with receiving(receiver) as hook, serving(emulator) as running, transport() as tx:
            parser = client(
                running,
                hook,
                tx,
                receiver.inbox,
                webhook_deadline_s=deadline_s,
                poll_initial_s=0.05,
            )
            started = loop.time()
            parsing = asyncio.ensure_future(parser.parse(DOCUMENT))
            await until(lambda: len(receiver.bodies) == 1)
            job_id = orjson.loads(receiver.bodies[0])["job_id"]
            forged = orjson.dumps(
                {**EVENT, "job_id": job_id, "data": {"md": "# Forged\n", "job_metadata": {}}}
            )
            attempts = [
                (forged, {LC_SIGNATURE_HEADER: sign_lc("not-" + SECRET, forged)}),
                (forged, {LC_SIGNATURE_HEADER: sign_lc(SECRET, receiver.bodies[0])}),
                (forged, {}),
                (forged[:-3], {LC_SIGNATURE_HEADER: sign_lc(SECRET, forged[:-3])}),
            ]
            statuses = [(await post(hook, body, headers))[0] for body, headers in attempts]
            assert not parsing.done()
            parsed = await parsing
            elapsed = loop.time() - started
        assert statuses == [401, 401, 401, 400]
        assert parsed.markdown == DOCUMENT.content.decode()  # the service's, not the forgery
        assert parsed.job_id == job_id
        assert elapsed >= deadline_s
        assert [v.status for v in receiver.verdicts] == [401, 401, 401, 401, 400]
        assert (len(receiver.inbox), receiver.processed) == (0, [])
        assert emulator.stats().count(STATUS, 200) >= 1

    asyncio.run(main())
