"""The LlamaParse client on API v2 against the emulator over real loopback HTTP.

What v2 changes for the client: the upload's `configuration` part (tier,
version, page ranges), `GET /api/v2/parse/{id}` with `expand`, v2's
statuses (COMPLETED with failed pages is a partial success, FAILED a
document error), the cost from `usage.credits`, and the three primitives
(`submit`, `status`, `result`) a durable worker will call one at a time.
The signed v2 webhook through the API server is in `test_serve_webhooks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import orjson
import pytest

from providers.llamaparse.client import (
    Document,
    LlamaParse,
    LlamaParseConfig,
    ParsedDocument,
    RemoteParse,
    RemoteStatus,
)
from providers.pricing import USD_PER_CREDIT
from providers.transport import HttpRequest, Transport
from resilience import (
    BreakerPolicy,
    ErrorClass,
    Guard,
    ProviderError,
    RetryPolicy,
    TokenBucket,
    classify,
)
from resilience.clock import wall_time
from simulations.emulators import Emulator, FaultPlan, LlamaParsePlan, RunningEmulator
from tests.loopback import Wire, serving, transport
from tests.pdfs import make_pdf

KEY = "llx-loopback-v2"
UPLOAD = "POST /api/v2/parse/upload"
JOB = "GET /api/v2/parse/{job_id}"
PARSE_TIME_S = 0.05
NOTES = Document("notes.md", b"# Notes\n\nThe v2 parse keeps these words.\n", "text/markdown")
PAGES = [f"Page {n} says something of its own" for n in range(1, 21)]
DECK = Document("deck.pdf", make_pdf(PAGES), "application/pdf")


def fast(**options: Any) -> FaultPlan:
    return FaultPlan(
        llamaparse=LlamaParsePlan(**{"parse_time_s": (PARSE_TIME_S, PARSE_TIME_S), **options})
    )


def client(running: RunningEmulator, sender: Transport, **overrides: Any) -> LlamaParse:
    """A v2 client (the default); its upload bucket allows a burst, so the emulator limits."""
    config = LlamaParseConfig(
        api_key=KEY,
        base_url=running.llamaparse_base_url,
        read_timeout_s=2.0,
        job_timeout_s=5.0,
        poll_initial_s=0.05,
        poll_step_s=0.05,
        poll_max_s=0.1,
    )
    uploads = TokenBucket(15, 1.5, name="llamaparse-uploads")
    return LlamaParse(dataclasses.replace(config, **overrides), sender, upload_bucket=uploads)


def guard(max_attempts: int = 1) -> Guard:
    return Guard(
        "llamaparse",
        BreakerPolicy(failure_threshold=2, cooldown_s=30.0),
        retry=RetryPolicy(max_attempts=max_attempts, rng=random.Random(1)),
    )


def test_a_v2_parse_sends_its_configuration_and_settles_from_usage_credits() -> None:
    async def main() -> tuple[ParsedDocument, Wire, Emulator]:
        emulator = Emulator(seed=1, faults=fast())
        wire = Wire()
        async with serving(emulator) as running, transport(wire) as sender:
            parsed = await client(running, sender).parse(NOTES)
        return parsed, wire, emulator

    parsed, wire, emulator = asyncio.run(main())
    assert parsed.markdown == NOTES.content.decode()
    assert (parsed.pages, parsed.failed_pages, parsed.sha256) == (1, [], NOTES.sha256)
    assert parsed.cost_usd == pytest.approx(3 * USD_PER_CREDIT)  # cost_effective: 3 a page
    upload = wire.exchanges[0]
    assert (upload.method, upload.url.endswith("/api/v2/parse/upload")) == ("POST", True)
    assert b'name="configuration"' in upload.body
    assert b'{"tier":"cost_effective","version":"latest"}' in upload.body
    polls = wire.exchanges[1:]
    assert polls
    assert all(p.url.endswith(f"/{parsed.job_id}?expand=markdown&expand=usage") for p in polls)
    stats = emulator.stats()
    assert stats.requests[UPLOAD] == {200: 1}
    assert stats.count(JOB, 200) == len(polls)  # the result came with the COMPLETED answer


def test_tier_page_ranges_and_expand_are_settings_and_price_the_parse() -> None:
    async def main() -> tuple[ParsedDocument, float, Wire]:
        emulator = Emulator(seed=2, faults=fast())
        wire = Wire()
        async with serving(emulator) as running, transport(wire) as sender:
            parser = client(
                running, sender, tier="agentic", target_pages="1,3", expand=("text", "items")
            )
            estimate = parser.estimate_cost_usd(DECK)
            parsed = await parser.parse(DECK)
        return parsed, estimate, wire

    parsed, estimate, wire = asyncio.run(main())
    assert estimate == pytest.approx(20 * 10 * USD_PER_CREDIT)  # 20 pages at agentic's 10
    assert parsed.pages == 2
    assert parsed.markdown == f"{PAGES[0]}\n---\n{PAGES[2]}"
    assert parsed.cost_usd == pytest.approx(2 * 10 * USD_PER_CREDIT)
    configuration = b'"tier":"agentic","version":"latest","page_ranges":{"target_pages":"1,3"}'
    assert configuration in wire.exchanges[0].body
    assert wire.exchanges[-1].url.endswith("expand=markdown&expand=usage&expand=text&expand=items")
    assert [p["text"] for p in parsed.extras["text"]["pages"]] == [PAGES[0], PAGES[2]]
    assert [p["success"] for p in parsed.extras["items"]["pages"]] == [True, True]


def test_a_failed_v2_job_is_a_422_with_its_message_that_never_trips_the_breaker() -> None:
    async def main() -> tuple[ProviderError, Guard]:
        emulator = Emulator(seed=3, faults=fast(page_failure_rate=1.0))
        checked = guard()
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            with pytest.raises(ProviderError) as raised:
                await checked.call(parser.parse, NOTES)
        return raised.value, checked

    error, checked = asyncio.run(main())
    assert (error.status, error.code) == (422, "parse_error")
    assert "1 of 1 pages failed to parse" in error.message
    assert classify(error) is ErrorClass.CALLER
    assert (checked.breaker.state, checked.breaker.consecutive_failures) == ("closed", 0)


def test_completed_with_a_failed_page_is_a_partial_success() -> None:
    async def main() -> ParsedDocument:
        # Seed 2 fails exactly one page of twenty: within the default 5% allowed.
        emulator = Emulator(seed=2, faults=fast(page_failure_rate=0.05))
        async with serving(emulator) as running, transport() as sender:
            return await client(running, sender).parse(DECK)

    parsed = asyncio.run(main())
    assert parsed.failed_pages == [8]
    assert parsed.pages == 20
    assert parsed.markdown == "\n---\n".join(text for n, text in enumerate(PAGES, 1) if n != 8)
    assert parsed.cost_usd == pytest.approx(20 * 3 * USD_PER_CREDIT)  # failed pages billed too


def test_a_429_on_upload_is_retried_by_the_guard_after_its_retry_after() -> None:
    async def main() -> tuple[list[ParsedDocument], float, Emulator]:
        plan = fast(v2_upload_limit=1, upload_window_s=1.0)
        emulator = Emulator(seed=4, faults=plan)
        checked = guard(max_attempts=2)
        loop = asyncio.get_running_loop()
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            started = loop.time()
            first = await checked.call(parser.parse, NOTES)
            other = dataclasses.replace(NOTES, content=b"# Other\n\nA second document.\n")
            second = await checked.call(parser.parse, other)
            return [first, second], loop.time() - started, emulator

    (first, second), elapsed, emulator = asyncio.run(main())
    assert second.markdown == "# Other\n\nA second document.\n"
    assert first.job_id != second.job_id
    assert emulator.stats().requests[UPLOAD] == {200: 2, 429: 1}
    assert elapsed >= 1.0  # the 429's Retry-After: 1 (whole seconds)


def test_the_primitives_submit_look_and_fetch_one_request_each() -> None:
    async def main() -> tuple[RemoteParse, list[RemoteStatus], ParsedDocument, Any, Guard]:
        emulator = Emulator(seed=5, faults=fast(parse_time_s=(0.3, 0.3)))
        checked = guard()
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            handle = await checked.call(parser.submit, NOTES, name="job-42")
            looks = [await checked.call(parser.status, handle)]
            while not looks[-1].completed:
                await asyncio.sleep(0.05)
                looks.append(await checked.call(parser.status, handle))
            fetched = await checked.call(parser.result, handle)
            # What recovery after a crash would read: the job list, by name.
            url = f"{running.llamaparse_base_url}/api/v2/parse"
            auth = {"Authorization": f"Bearer {KEY}"}
            listed = (await sender.send(HttpRequest("GET", url, auth))).json()
        return handle, looks, fetched, listed, checked

    handle, looks, fetched, listed, checked = asyncio.run(main())
    assert (handle.api_version, handle.name, handle.sha256) == (
        "v2",
        "job-42--notes.md",
        NOTES.sha256,
    )
    assert handle.options == {"tier": "cost_effective", "version": "latest"}
    assert (handle.estimated_pages, handle.estimated_cost_usd) == (
        1,
        pytest.approx(3 * USD_PER_CREDIT),
    )
    assert looks[0].state in ("PENDING", "RUNNING")
    assert looks[0].result is None
    assert looks[-1].result == fetched
    assert fetched.markdown == NOTES.content.decode()
    # Many looks at a running job, and the breaker saw only successes.
    assert (checked.breaker.state, checked.breaker.consecutive_failures) == ("closed", 0)
    assert [item["name"] for item in listed["items"]] == ["job-42--notes.md"]


def test_v2_webhook_configuration_asks_for_the_parse_events_signed() -> None:
    async def main() -> Wire:
        emulator = Emulator(seed=6, faults=fast())
        wire = Wire()
        async with serving(emulator) as running, transport(wire) as sender:
            parser = client(
                running,
                sender,
                webhook_url="http://127.0.0.1:9/webhooks/llamaparse",
                webhook_secret="v2-hook-secret",
            )
            await parser.submit(NOTES)
        return wire

    body = asyncio.run(main()).exchanges[0].body
    start = body.index(b'{"tier"')
    configuration = orjson.loads(body[start : body.index(b"\r\n", start)])
    (hook,) = configuration["webhook_configurations"]
    assert hook == {
        "webhook_url": "http://127.0.0.1:9/webhooks/llamaparse",
        "webhook_events": [
            "parse.success",
            "parse.partial_success",
            "parse.error",
            "parse.cancelled",
        ],
        "webhook_output_format": "json",
        "webhook_signing_secret": "v2-hook-secret",
    }


def test_a_file_type_the_service_cannot_parse_is_refused_at_upload_as_on_v1() -> None:
    async def main() -> tuple[ProviderError, Emulator]:
        emulator = Emulator(seed=7, faults=fast())
        async with serving(emulator) as running, transport() as sender:
            with pytest.raises(ProviderError) as raised:
                await client(running, sender).submit(
                    Document("tool.exe", b"MZ\x90\x00", "application/octet-stream")
                )
        return raised.value, emulator

    error, emulator = asyncio.run(main())
    assert (error.status, classify(error)) == (400, ErrorClass.CALLER)
    assert "Unsupported file type: exe" in error.message
    assert emulator.stats().jobs_created == 0


def notes(n: int) -> Document:
    return dataclasses.replace(NOTES, content=f"# Note {n}\n\nWords {n}.\n".encode())


def test_statuses_asks_many_jobs_in_one_request_without_their_results() -> None:
    async def main() -> tuple[list[dict[str, RemoteStatus]], list[RemoteParse], Emulator]:
        emulator = Emulator(seed=6, faults=fast(parse_time_s=(0.2, 0.2)))
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            handles = [await parser.submit(notes(n), name=f"job-{n}") for n in range(3)]
            early = await parser.statuses(handles)
            await asyncio.sleep(0.3)
            late = await parser.statuses(handles)
        return [early, late], handles, emulator

    (early, late), handles, emulator = asyncio.run(main())
    requests = emulator.stats().requests
    assert requests["GET /api/v2/parse"] == {200: 2}  # one list request per look, not three
    assert JOB not in requests  # no per-job GET: a status carries no result
    assert sorted(early) == sorted(late) == sorted(h.job_id for h in handles)
    assert {status.state for status in early.values()} <= {"PENDING", "RUNNING"}
    assert all(status.completed and status.result is None for status in late.values())
    assert all(status.error is None for status in [*early.values(), *late.values()])


def test_statuses_reports_a_failed_job_with_the_error_status_would_raise() -> None:
    async def main() -> tuple[RemoteStatus, ProviderError]:
        emulator = Emulator(seed=3, faults=fast(page_failure_rate=1.0))
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            handle = await parser.submit(NOTES, name="job-bad")
            await asyncio.sleep(0.2)
            [status] = (await parser.statuses([handle])).values()
            with pytest.raises(ProviderError) as raised:
                await parser.status(handle)
        return status, raised.value

    status, raised = asyncio.run(main())
    assert status.state == "FAILED"
    assert status.error is not None
    assert (status.error.status, status.error.code, status.error.message) == (
        raised.status,
        raised.code,
        raised.message,
    )


def test_find_looks_a_job_up_by_its_upload_name_in_the_job_list() -> None:
    async def main() -> tuple[list[str | None], list[RemoteParse]]:
        emulator = Emulator(seed=7, faults=fast())
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            since = wall_time()
            handles = [await parser.submit(notes(n), name=f"job-{n}-v2") for n in range(3)]
            found = [
                await parser.find(handles[1].name, since=since),
                await parser.find("job-9-v2--notes.md", since=since),
                # Created before `since` (beyond the slack for clock skew): not looked at.
                await parser.find(handles[1].name, since=since + 3600),
            ]
        return found, handles

    found, handles = asyncio.run(main())
    assert handles[1].name == "job-1-v2--notes.md"
    assert found == [handles[1].job_id, None, None]


def test_find_never_takes_a_garbled_job_list_for_an_empty_one() -> None:
    """A job list answer without its items is no answer, not "no such upload": taken for the
    latter, a caller recovering an unanswered upload uploaded the document again."""

    async def main() -> tuple[str, str | None, ProviderError]:
        emulator = Emulator(seed=8, faults=fast())
        async with serving(emulator) as running, transport() as sender:
            parser = client(running, sender)
            since = wall_time()
            handle = await parser.submit(NOTES, name="job-43")
            found = await parser.find(handle.name, since=since)
            emulator.set_faults(fast(malformed_rate=1.0, malformed_kinds=("wrong_shape",)))
            with pytest.raises(ProviderError) as raised:
                await parser.find(handle.name, since=since)
        return handle.job_id, found, raised.value

    job_id, found, error = asyncio.run(main())
    assert found == job_id
    assert (error.status, error.code, classify(error)) == (None, "bad_response", ErrorClass.FAILURE)
