"""The API server over a real SQLite file, through aiohttp's TestServer and TestClient.

Each test runs in `asyncio.run`; nothing of ours is mocked. Guards, budgets,
the usage log, the inbox and the store are the real ones. Rejected requests
are checked for what they did not do: the store's rows, the job's history
and the webhook inbox are compared before and after.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from providers.llamaparse.webhooks import (
    LC_SIGNATURE_HEADER,
    WebhookInbox,
    sign_lc,
    sign_standard_webhook,
)
from resilience import (
    BreakerPolicy,
    Budget,
    ConfigError,
    Guard,
    Router,
    ServiceMode,
    TokenBucket,
)
from resilience.usage import UsageLog
from state import JobState, SqliteJobStore, Trigger
from state.app.metrics import Family, Metrics, render
from state.app.server import create_app

SECRET = "whk-test-signing-secret-do-not-leak"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MAX_UPLOAD = 4096
MAX_WEBHOOK = 2048
LP_JOB = "lp-0b4a6f3e"


def event_body(job_id: str = LP_JOB, event: str = "parse.success") -> bytes:
    return orjson.dumps(
        {"event_type": event, "job_id": job_id, "status": "SUCCESS", "data": {"md": "# Hi\n"}}
    )


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {LC_SIGNATURE_HEADER: sign_lc(secret, body), "Content-Type": "application/json"}


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    store: SqliteJobStore
    guards: dict[str, Guard]
    metrics: Metrics
    usage: UsageLog
    inbox: WebhookInbox
    known: set[str]

    async def upload(
        self, content: bytes, filename: str = "notes.md", field: str = "file"
    ) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field(field, content, filename=filename, content_type="text/markdown")
        return await self.client.post("/documents", data=form)


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        store = await SqliteJobStore.open(tmp_path / "jobs.db")
        usage = UsageLog(clock=lambda: NOW)
        guards = {
            "llamaparse": Guard(
                "llamaparse",
                BreakerPolicy(failure_threshold=1, cooldown_s=30),
                requests=TokenBucket(10, 1),
                budget=Budget(daily_usd=5.0, scope="llamaparse", clock=lambda: NOW, usage=usage),
            ),
            "openai": Guard(
                "openai",
                requests=TokenBucket(50, 50 / 60),
                tokens=TokenBucket(1000, 1000 / 60),
                budget=Budget(daily_usd=5.0, scope="openai", clock=lambda: NOW, usage=usage),
            ),
        }
        metrics = Metrics()
        inbox = WebhookInbox()
        known = {LP_JOB}

        async def known_job(job_id: str) -> bool:
            return job_id in known

        app = create_app(
            store,
            guards=guards,
            metrics=metrics,
            webhook_secret=SECRET,
            known_job=known_job,
            inbox=inbox,
            usage=usage,
            max_upload_bytes=MAX_UPLOAD,
            max_webhook_bytes=MAX_WEBHOOK,
            clock=lambda: NOW,
            **options,
        )
        try:
            async with TestClient(TestServer(app)) as client:
                await scenario(Harness(client, store, guards, metrics, usage, inbox, known))
        finally:
            await store.close()

    asyncio.run(main())


BOUNDARY = "breakwater-test-boundary"


def multipart_body(content: bytes, field: str = "file") -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


async def error_of(response: aiohttp.ClientResponse, status: int) -> dict[str, str]:
    """The JSON error body of a response with `status`; it must never quote the secret."""
    assert response.status == status
    assert response.content_type == "application/json"
    text = await response.text()
    assert SECRET not in text
    body = orjson.loads(text)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return dict(body["error"])


# -- uploads -------------------------------------------------------------------


def test_upload_creates_a_job_and_identical_content_gets_the_same_one(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        first = await h.upload(b"# Minutes\n\nhello\n")
        assert first.status == 201
        created = await first.json()
        assert created["created"] is True
        assert created["job_id"].startswith("job-")
        assert first.headers["Location"] == f"/jobs/{created['job_id']}"

        again = await h.upload(b"# Minutes\n\nhello\n", filename="renamed.md")
        assert again.status == 200
        assert await again.json() == {**created, "created": False}
        assert (await h.store.row_counts())["jobs"] == 1

        other = await h.upload(b"something else")
        assert other.status == 201
        assert (await other.json())["job_id"] != created["job_id"]

    run(tmp_path, scenario)


def test_upload_over_the_limit_is_413_and_writes_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        before = await h.store.row_counts()
        # Under the Content-Length slack, so the streamed count is what refuses it.
        error = await error_of(await h.upload(b"x" * (MAX_UPLOAD + 1)), 413)
        assert error["code"] == "too_large"
        # Chunked, with no Content-Length at all.
        body = multipart_body(b"y" * (MAX_UPLOAD * 3))

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        response = await h.client.post(
            "/documents",
            data=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        await error_of(response, 413)
        # Far over the limit by its Content-Length: refused before reading.
        await error_of(await h.upload(b"z" * (MAX_UPLOAD + 70_000)), 413)
        assert await h.store.row_counts() == before
        # The limit itself is fine.
        assert (await h.upload(b"w" * MAX_UPLOAD)).status == 201

    run(tmp_path, scenario)


def test_bad_uploads_are_400_and_write_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        before = await h.store.row_counts()
        missing = await error_of(await h.upload(b"content", field="document"), 400)
        assert missing["code"] == "missing_file"
        await error_of(await h.upload(b""), 400)
        not_multipart = await h.client.post(
            "/documents", data=b"raw", headers={"Content-Type": "application/octet-stream"}
        )
        await error_of(not_multipart, 400)
        for content_type, body in (
            ("multipart/form-data; boundary=abc", b"this is not multipart at all"),
            ("multipart/form-data; boundary=abc", b"--abc\r\nno-colon-header\r\n\r\nx\r\n"),
            ("multipart/form-data", b"--abc\r\n\r\n"),
            (f"multipart/form-data; boundary={BOUNDARY}", multipart_body(b"cut")[:-10]),
            (f"multipart/form-data; boundary={BOUNDARY}", multipart_body(b"cut" * 99)[:-50]),
        ):
            response = await h.client.post(
                "/documents", data=body, headers={"Content-Type": content_type}
            )
            await error_of(response, 400)
        assert await h.store.row_counts() == before

    run(tmp_path, scenario)


# -- jobs ----------------------------------------------------------------------


def test_job_shows_state_history_and_degraded(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        job_id = (await (await h.upload(b"# Doc\n")).json())["job_id"]
        response = await h.client.get(f"/jobs/{job_id}")
        assert response.status == 200
        body = await response.json()
        assert body["job"]["id"] == job_id
        assert body["job"]["state"] == "uploaded"
        assert body["job"]["degraded"] is False
        assert body["job"]["filename"] == "notes.md"
        assert [(e["from"], e["to"], e["trigger"]) for e in body["history"]] == [
            (None, "uploaded", "create")
        ]

        await h.store.transition(
            job_id,
            expected_state=JobState.UPLOADED,
            expected_version=1,
            owner=None,
            trigger=Trigger.START_PARSE,
            reason="parse started",
            correlation_id="c-1",
            now=NOW + 1,
            degraded=True,
        )
        body = await (await h.client.get(f"/jobs/{job_id}")).json()
        assert body["job"]["state"] == "parsing"
        assert body["job"]["degraded"] is True
        assert body["history"][-1]["from"] == "uploaded"
        assert body["history"][-1]["to"] == "parsing"
        assert body["history"][-1]["correlation_id"] == "c-1"
        assert len(body["history"]) == 2

        await error_of(await h.client.get("/jobs/job-nope"), 404)

    run(tmp_path, scenario)


def test_framework_errors_are_json_too(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        response = await h.client.get("/documents")
        error = await error_of(response, 405)
        assert error["code"] == "method_not_allowed"
        assert "POST" in response.headers["Allow"]
        await error_of(await h.client.get("/no/such/route"), 404)

    run(tmp_path, scenario)


def test_a_500_says_nothing_of_its_cause(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        job_id = (await (await h.upload(b"# Doc\n")).json())["job_id"]
        await h.store.close()
        error = await error_of(await h.client.get(f"/jobs/{job_id}"), 500)
        assert error == {"code": "internal_error", "message": "internal error"}

    run(tmp_path, scenario)


# -- webhooks ------------------------------------------------------------------


def test_valid_webhook_wakes_the_waiter_and_a_duplicate_is_200_idempotent(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        job_id = (await (await h.upload(b"# Doc\n")).json())["job_id"]
        before = (await h.store.row_counts(), await h.store.history(job_id))
        waiter = asyncio.create_task(h.inbox.wait(LP_JOB, 5.0))
        await asyncio.sleep(0)
        body = event_body()
        response = await h.client.post("/webhooks/llamaparse", data=body, headers=signed(body))
        assert response.status == 200
        assert await response.json() == {
            "status": "accepted",
            "job_id": LP_JOB,
            "event": "parse.success",
        }
        event = await asyncio.wait_for(waiter, 1.0)
        assert event is not None
        assert event.data == {"md": "# Hi\n"}
        assert len(h.inbox) == 1

        again = await h.client.post("/webhooks/llamaparse", data=body, headers=signed(body))
        assert again.status == 200
        assert (await again.json())["status"] == "duplicate"
        assert len(h.inbox) == 1
        # The handler writes nothing: the parse step moves the job.
        assert (await h.store.row_counts(), await h.store.history(job_id)) == before

    run(tmp_path, scenario)


def test_rejected_webhooks_change_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        job_id = (await (await h.upload(b"# Doc\n")).json())["job_id"]
        before = (await h.store.row_counts(), await h.store.history(job_id), len(h.inbox))
        body = event_body()
        url = "/webhooks/llamaparse"
        cases: list[tuple[int, str, bytes, dict[str, str]]] = [
            (401, "bad_signature", body, {"Content-Type": "application/json"}),
            (401, "bad_signature", body, signed(body, secret="wrong-secret")),
            (401, "bad_signature", body, {LC_SIGNATURE_HEADER: "sha256=" + "0" * 64}),
            (401, "bad_signature", body + b" ", signed(body)),
            (400, "malformed_body", b"{not json", signed(b"{not json")),
            (400, "malformed_body", b'{"job_id": 3}', signed(b'{"job_id": 3}')),
            (404, "job_not_found", event_body("lp-unknown"), signed(event_body("lp-unknown"))),
        ]
        big = orjson.dumps({"event_type": "parse.success", "job_id": LP_JOB, "pad": "x" * 3000})
        cases.append((413, "too_large", big, signed(big)))
        for status, code, data, headers in cases:
            error = await error_of(await h.client.post(url, data=data, headers=headers), status)
            assert error["code"] == code, (status, data[:40])

        # Oversized and chunked: no Content-Length, refused by the streamed read.
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 500):
                yield big[start : start + 500]

        await error_of(await h.client.post(url, data=chunks(), headers=signed(big)), 413)

        assert (await h.store.row_counts(), await h.store.history(job_id), len(h.inbox)) == before
        assert await h.inbox.wait(LP_JOB, 0.01) is None
        assert await h.inbox.wait("lp-unknown", 0.01) is None
        # Still new: no rejected delivery was recorded.
        response = await h.client.post(url, data=body, headers=signed(body))
        assert (await response.json())["status"] == "accepted"
        # And a job that becomes known is accepted, not a duplicate of its 404.
        h.known.add("lp-unknown")
        late = event_body("lp-unknown")
        response = await h.client.post(url, data=late, headers=signed(late))
        assert (await response.json())["status"] == "accepted"

    run(tmp_path, scenario)


def test_standard_webhooks_when_configured(tmp_path: Path) -> None:
    standard = "whsec_" + base64.b64encode(b"standard-webhooks-test-key").decode()

    async def scenario(h: Harness) -> None:
        body = event_body()
        url = "/webhooks/llamaparse"
        # LC-Signature alone allows replays, so it is not enough here.
        await error_of(await h.client.post(url, data=body, headers=signed(body)), 401)
        stale = sign_standard_webhook(standard, "msg_1", int(NOW) - 301, body)
        await error_of(await h.client.post(url, data=body, headers=stale), 401)
        assert len(h.inbox) == 0
        fresh = sign_standard_webhook(standard, "msg_1", int(NOW), body)
        response = await h.client.post(url, data=body, headers=fresh)
        assert response.status == 200
        assert (await response.json())["status"] == "accepted"
        response = await h.client.post(url, data=body, headers=fresh)
        assert (await response.json())["status"] == "duplicate"
        assert standard not in await response.text()

    run(tmp_path, scenario, standard_secret=standard)


def test_create_app_refuses_an_unsigned_configuration(tmp_path: Path) -> None:
    async def known(_job_id: str) -> bool:
        return True

    async def scenario() -> None:
        async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
            with pytest.raises(ValueError, match="webhook secret"):
                create_app(store, guards={}, metrics=Metrics(), webhook_secret="", known_job=known)
            with pytest.raises(ConfigError) as caught:
                create_app(
                    store,
                    guards={},
                    metrics=Metrics(),
                    webhook_secret=SECRET,
                    known_job=known,
                    standard_secret="not base64 !!",
                )
            assert "not base64" not in str(caught.value)

    asyncio.run(scenario())


# -- health, costs, metrics --------------------------------------------------------


def test_health_reports_breakers_and_503_once_the_store_is_gone(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        response = await h.client.get("/health")
        assert response.status == 200
        assert await response.json() == {
            "store": "ok",
            "providers": {"llamaparse": {"breaker": "closed"}, "openai": {"breaker": "closed"}},
        }
        h.guards["llamaparse"].breaker.force_open("test outage")
        await h.store.close()
        response = await h.client.get("/health")
        assert response.status == 503
        body = await response.json()
        assert body["store"] == "unreachable"
        assert body["providers"]["llamaparse"] == {"breaker": "open"}

    run(tmp_path, scenario)


def test_costs_are_the_usage_summary(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.usage.record("openai", tokens=1200, cost_usd=0.25, at=NOW)
        h.usage.record("llamaparse", cost_usd=0.5, error_class="failure", at=NOW)
        response = await h.client.get("/costs")
        assert response.status == 200
        body = await response.json()
        assert body == orjson.loads(h.usage.to_json())
        assert body["providers"]["openai"]["cost_usd"] == 0.25
        assert body["totals"]["cost_usd"] == 0.75

    run(tmp_path, scenario)


# A small parser of the text exposition format, strict enough to catch mistakes.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
Sample = tuple[str, frozenset[tuple[str, str]], float]


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars)
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
        else:
            out.append(char)
    return "".join(out)


def parse_exposition(text: str) -> tuple[dict[str, tuple[str, str]], list[Sample]]:
    """{family: (type, help)} and the samples; asserts every sample follows its HELP and TYPE."""
    assert text.endswith("\n")
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: list[Sample] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in helps, f"two HELP lines for {name}"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in {"counter", "gauge"}, line
            assert name in helps, f"TYPE of {name} before its HELP"
            assert name not in families, f"two TYPE lines for {name}"
            families[name] = (kind, helps[name])
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, raw_labels, value = match.groups()
            assert name in families, f"sample of {name} before its TYPE"
            labels: list[tuple[str, str]] = []
            rest = raw_labels or ""
            while rest:
                label = _LABEL.match(rest)
                assert label, f"bad labels in {line!r}"
                labels.append((label.group(1), _unescape(label.group(2))))
                rest = rest[label.end() :]
            samples.append((name, frozenset(labels), float(value)))
    return families, samples


def value_of(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and ls == frozenset(labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.upload(b"# One\n")
        await h.upload(b"# Two\n")
        h.guards["llamaparse"].breaker.force_open("test outage")
        h.metrics.record_call("openai", "ok", "real")
        h.metrics.record_call("openai", "ok", "real")
        h.metrics.record_call("llamaparse", "circuit_open", "mock")
        h.usage.record("openai", tokens=100, cost_usd=0.125, at=NOW)

        response = await h.client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        families, samples = parse_exposition(await response.text())
        assert families["breakwater_breaker_state"][0] == "gauge"
        assert families["breakwater_breaker_transitions_total"][0] == "counter"
        assert families["breakwater_calls_total"][0] == "counter"
        assert families["breakwater_cost_usd_total"][0] == "counter"
        assert families["breakwater_bucket_level"][0] == "gauge"
        assert families["breakwater_jobs"][0] == "gauge"

        state = "breakwater_breaker_state"
        assert value_of(samples, state, provider="llamaparse", state="open") == 1
        assert value_of(samples, state, provider="llamaparse", state="closed") == 0
        assert value_of(samples, state, provider="llamaparse", state="half_open") == 0
        assert value_of(samples, state, provider="openai", state="closed") == 1
        moves = "breakwater_breaker_transitions_total"
        opened = {"from": "closed", "to": "open"}
        assert value_of(samples, moves, provider="llamaparse", **opened) == 1
        assert not [ls for n, ls, _ in samples if n == moves and ("provider", "openai") in ls]
        calls = "breakwater_calls_total"
        assert value_of(samples, calls, provider="openai", outcome="ok", path="real") == 2
        refused = {"provider": "llamaparse", "outcome": "circuit_open", "path": "mock"}
        assert value_of(samples, calls, **refused) == 1
        assert value_of(samples, "breakwater_cost_usd_total", provider="openai") == 0.125
        level = "breakwater_bucket_level"
        assert value_of(samples, level, provider="llamaparse", bucket="requests") == 10
        assert value_of(samples, level, provider="openai", bucket="tokens") == 1000
        assert value_of(samples, "breakwater_jobs", state="uploaded") == 2
        assert value_of(samples, "breakwater_jobs", state="complete") == 0
        assert value_of(samples, "breakwater_store_up") == 1

        await h.store.close()
        families, samples = parse_exposition(await (await h.client.get("/metrics")).text())
        assert value_of(samples, "breakwater_store_up") == 0
        assert not [s for s in samples if s[0] == "breakwater_jobs"]

    run(tmp_path, scenario)


def test_transitions_are_counted_once_per_breaker() -> None:
    async def scenario() -> dict[tuple[str, str, str], int]:
        guard = Guard("p", BreakerPolicy(cooldown_s=30))
        metrics = Metrics()
        metrics.watch([guard.breaker])
        metrics.watch([guard.breaker])
        guard.breaker.force_open("one")
        guard.breaker.force_closed("two")
        return metrics.transitions()

    assert asyncio.run(scenario()) == {("p", "closed", "open"): 1, ("p", "open", "closed"): 1}


def test_routed_calls_are_counted_once_per_router() -> None:
    async def mock(text: str) -> str:
        return text

    async def scenario() -> dict[tuple[str, str, str], int]:
        router = Router(ServiceMode.MOCK)
        router.register("embed", real=mock, mock=mock, guard=Guard("p", BreakerPolicy()))
        metrics = Metrics()
        metrics.count_calls([router])
        metrics.count_calls([router])
        await router.call("embed", "a")
        await router.call("embed", "b")
        return metrics.calls()

    assert asyncio.run(scenario()) == {("p", "mode", "mock"): 2}


@pytest.mark.parametrize(
    "value", ["plain", 'quote " inside', "back\\slash", "new\nline", 'all \\" \n of them']
)
def test_label_values_and_help_are_escaped(value: str) -> None:
    family = Family("x_total", "counter", "help with \\ and\nnewline")
    family.add(1.5, provider=value)
    text = render([family])
    assert text.count("\n") == 3
    families, samples = parse_exposition(text)
    assert families["x_total"] == ("counter", "help with \\\\ and\\nnewline")
    assert samples == [("x_total", frozenset({("provider", value)}), 1.5)]


def test_costs_merge_the_guards_budget_logs_when_no_log_is_given(tmp_path: Path) -> None:
    async def known(_job_id: str) -> bool:
        return False

    async def scenario() -> dict[str, Any]:
        guards = {
            name: Guard(name, budget=Budget(daily_usd=5.0, scope=name, clock=lambda: NOW))
            for name in ("openai", "llamaparse")
        }
        for cost, guard in zip((0.25, 0.5), guards.values(), strict=True):
            assert guard.budget is not None
            guard.budget.usage.record(guard.name, tokens=10, cost_usd=cost, at=NOW)
        async with await SqliteJobStore.open(tmp_path / "jobs.db") as store:
            app = create_app(
                store, guards=guards, metrics=Metrics(), webhook_secret=SECRET, known_job=known
            )
            async with TestClient(TestServer(app)) as client:
                response = await client.get("/costs")
                assert response.status == 200
                body: dict[str, Any] = await response.json()
                return body

    body = asyncio.run(scenario())
    assert sorted(body["providers"]) == ["llamaparse", "openai"]
    assert body["providers"]["llamaparse"]["cost_usd"] == 0.5
    assert body["providers"]["openai"]["hours"][0]["cost_usd"] == 0.25
    assert body["totals"] == {"requests": 2, "tokens": 20, "cost_usd": 0.75, "errors": {}}
