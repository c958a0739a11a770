"""Webhook verification, decoding, dedup and the endpoint's accept/reject decision."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from providers.llamaparse.webhooks import (
    WebhookEvent,
    WebhookInbox,
    check_delivery,
    parse_webhook_body,
    sign_lc,
    sign_standard_webhook,
    verify_lc_signature,
    verify_standard_webhook,
)
from resilience import ConfigError
from resilience.testing import run_virtual

SECRET = "lc-webhook-secret"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()
NOW = 1_767_225_600.0


def body_for(job_id: str = "job-1", event: str = "parse.success", **extra: object) -> bytes:
    document: dict[str, object] = {
        "event_type": event,
        "job_id": job_id,
        "status": event.rpartition(".")[2].upper(),
        "data": {"md": "# Title\n", "job_metadata": {"job_pages": 1}},
    }
    document.update(extra)
    return orjson.dumps(document)


# -- LC-Signature ----------------------------------------------------------


def test_a_body_signed_with_the_secret_verifies() -> None:
    body = body_for()
    header = sign_lc(SECRET, body)
    assert header.startswith("sha256=")
    assert verify_lc_signature(SECRET, body, header)


def test_the_hex_digest_is_compared_case_insensitively() -> None:
    body = body_for()
    assert verify_lc_signature(SECRET, body, sign_lc(SECRET, body).upper().replace("SHA", "sha"))


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("another-secret", body_for(), sign_lc(SECRET, body_for())),
        (SECRET, body_for(job_id="job-2"), sign_lc(SECRET, body_for())),
        (SECRET, body_for(), None),
        (SECRET, body_for(), ""),
        (SECRET, body_for(), sign_lc(SECRET, body_for()).removeprefix("sha256=")),
        (SECRET, body_for(), "sha1=" + sign_lc(SECRET, body_for()).removeprefix("sha256=")),
        (SECRET, body_for(), "sha256="),
        (SECRET, body_for(), "sha256=zz\u00e9"),
        ("", body_for(), sign_lc("", body_for())),
    ],
    ids=[
        "wrong-secret",
        "tampered-body",
        "missing",
        "empty",
        "no-scheme",
        "wrong-scheme",
        "no-digest",
        "non-hex",
        "empty-secret",
    ],
)
def test_bad_lc_signatures_are_rejected(secret: str, body: bytes, header: str | None) -> None:
    assert not verify_lc_signature(secret, body, header)


# -- Standard Webhooks -----------------------------------------------------


def test_a_fresh_standard_webhook_verifies() -> None:
    body = body_for()
    headers = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW), body)
    assert verify_standard_webhook(STANDARD_SECRET, headers, body, now=NOW + 10)


def test_standard_header_names_are_case_insensitive_and_any_signature_may_match() -> None:
    body = body_for()
    headers = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW), body)
    rotated = {
        "Webhook-Id": headers["webhook-id"],
        "Webhook-Timestamp": headers["webhook-timestamp"],
        "Webhook-Signature": "v1,b2xkLXNpZ25hdHVyZQ== " + headers["webhook-signature"],
    }
    assert verify_standard_webhook(STANDARD_SECRET, rotated, body, now=NOW)


def test_the_standard_secret_works_without_its_whsec_prefix() -> None:
    body = body_for()
    headers = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW), body)
    bare = STANDARD_SECRET.removeprefix("whsec_")
    assert verify_standard_webhook(bare, headers, body, now=NOW)


@pytest.mark.parametrize("offset_s", [-301.0, 301.0], ids=["expired", "future"])
def test_standard_webhooks_outside_the_tolerance_are_rejected(offset_s: float) -> None:
    body = body_for()
    headers = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW + offset_s), body)
    assert not verify_standard_webhook(STANDARD_SECRET, headers, body, now=NOW)
    assert verify_standard_webhook(STANDARD_SECRET, headers, body, now=NOW, tolerance_s=302)


def test_tampered_or_incomplete_standard_webhooks_are_rejected() -> None:
    body = body_for()
    headers = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW), body)
    assert not verify_standard_webhook(STANDARD_SECRET, headers, body_for("job-2"), now=NOW)
    assert not verify_standard_webhook(
        STANDARD_SECRET, {**headers, "webhook-id": "msg_2"}, body, now=NOW
    )
    for missing in headers:
        partial = {k: v for k, v in headers.items() if k != missing}
        assert not verify_standard_webhook(STANDARD_SECRET, partial, body, now=NOW)
    not_a_number = {**headers, "webhook-timestamp": "soon"}
    assert not verify_standard_webhook(STANDARD_SECRET, not_a_number, body, now=NOW)
    other_key = "whsec_" + base64.b64encode(b"some-other-key").decode()
    assert not verify_standard_webhook(other_key, headers, body, now=NOW)


def test_a_standard_secret_that_is_not_base64_is_a_config_error_that_hides_it() -> None:
    with pytest.raises(ConfigError) as raised:
        sign_standard_webhook("whsec_not*base64!", "msg_1", int(NOW), b"{}")
    assert "not*base64!" not in str(raised.value)


# -- the body ----------------------------------------------------------------


def test_the_body_decodes_to_an_event() -> None:
    event = parse_webhook_body(body_for(event="parse.partial_success"))
    assert event == WebhookEvent(
        job_id="job-1",
        event="parse.partial_success",
        status="PARTIAL_SUCCESS",
        data={"md": "# Title\n", "job_metadata": {"job_pages": 1}},
    )
    assert event.terminal


def test_a_double_encoded_string_body_is_decoded_twice() -> None:
    inner = body_for().decode()
    assert parse_webhook_body(orjson.dumps(inner)) == parse_webhook_body(body_for())


def test_a_missing_status_comes_from_the_event_name() -> None:
    body = orjson.dumps({"event_type": "parse.running", "job_id": "job-1"})
    event = parse_webhook_body(body)
    assert (event.status, event.data, event.terminal) == ("RUNNING", {}, False)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps("not an object either"),
        orjson.dumps({"event_type": "parse.success"}),
        orjson.dumps({"job_id": "job-1"}),
        orjson.dumps({"job_id": "", "event_type": "parse.success"}),
        orjson.dumps({"job_id": "job-1", "event_type": "parse.success", "data": [1]}),
        orjson.dumps({"job_id": "job-1", "event_type": "parse.success", "status": 1}),
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="webhook"):
        parse_webhook_body(body)


# -- the inbox ---------------------------------------------------------------


def test_the_inbox_accepts_each_job_event_once() -> None:
    inbox = WebhookInbox()
    success = parse_webhook_body(body_for())
    assert inbox.accept(parse_webhook_body(body_for(event="parse.pending")))
    assert inbox.accept(success)
    assert not inbox.accept(success)
    assert inbox.accept(parse_webhook_body(body_for(job_id="job-2")))


def test_the_inbox_forgets_the_least_recently_seen_jobs_beyond_its_bound() -> None:
    inbox = WebhookInbox(max_jobs=2)
    for job in ("a", "b", "c"):
        assert inbox.accept(parse_webhook_body(body_for(job_id=job)))
    assert len(inbox) == 2
    assert not inbox.accept(parse_webhook_body(body_for(job_id="c")))
    assert inbox.accept(parse_webhook_body(body_for(job_id="a")))  # forgotten, so new again


def test_a_waiter_wakes_on_the_first_terminal_event() -> None:
    async def main() -> tuple[WebhookEvent | None, float]:
        loop = asyncio.get_running_loop()
        inbox = WebhookInbox()
        loop.call_later(2.0, inbox.accept, parse_webhook_body(body_for(event="parse.running")))
        loop.call_later(7.0, inbox.accept, parse_webhook_body(body_for()))
        event = await inbox.wait("job-1", timeout_s=60)
        return event, loop.time()

    event, woke_at = run_virtual(main())
    assert event is not None
    assert (event.status, woke_at) == ("SUCCESS", 7.0)


def test_a_delivery_that_came_before_the_wait_is_returned_at_once() -> None:
    async def main() -> WebhookEvent | None:
        inbox = WebhookInbox()
        inbox.accept(parse_webhook_body(body_for(event="parse.error")))
        return await inbox.wait("job-1", timeout_s=1)

    event = run_virtual(main())
    assert event is not None
    assert event.status == "ERROR"


def test_a_wait_times_out_on_the_loop_clock() -> None:
    async def main() -> tuple[WebhookEvent | None, float]:
        inbox = WebhookInbox()
        inbox.accept(parse_webhook_body(body_for(job_id="other")))
        event = await inbox.wait("job-1", timeout_s=60)
        return event, asyncio.get_running_loop().time()

    assert run_virtual(main()) == (None, 60.0)


# -- check_delivery ----------------------------------------------------------


def deliver(
    body: bytes, headers: dict[str, str], inbox: WebhookInbox, standard_secret: str | None = None
) -> tuple[int, dict[str, str] | None, bool]:
    verdict = check_delivery(
        SECRET,
        headers,
        body,
        max_bytes=10_000,
        inbox=inbox,
        now=NOW,
        standard_secret=standard_secret,
    )
    if verdict.event is not None:
        inbox.accept(verdict.event)  # as a receiver does once it takes the event
    return verdict.status, verdict.error, verdict.duplicate


def test_a_signed_delivery_is_accepted_then_reported_as_duplicate() -> None:
    inbox = WebhookInbox()
    body = body_for()
    headers = {"LC-Signature": sign_lc(SECRET, body)}
    verdict = check_delivery(SECRET, headers, body, max_bytes=10_000, inbox=inbox, now=NOW)
    assert (verdict.status, verdict.error, verdict.duplicate) == (200, None, False)
    assert verdict.event == parse_webhook_body(body)
    assert len(inbox) == 0  # the verdict records nothing: the receiver does
    assert inbox.accept(verdict.event)
    assert deliver(body, {"lc-signature": sign_lc(SECRET, body)}, inbox) == (200, None, True)


def test_an_unsigned_or_badly_signed_delivery_is_401_and_not_recorded() -> None:
    inbox = WebhookInbox()
    body = body_for()
    assert deliver(body, {}, inbox)[0] == 401
    assert deliver(body, {"LC-Signature": sign_lc("wrong", body)}, inbox)[0] == 401
    assert len(inbox) == 0


def test_a_signed_but_malformed_body_is_400() -> None:
    body = b'{"job_id": 3}'
    status, error, _ = deliver(body, {"LC-Signature": sign_lc(SECRET, body)}, WebhookInbox())
    assert status == 400
    assert error is not None
    assert "job_id" in error["detail"]


def test_an_oversized_body_is_413_before_anything_else() -> None:
    body = body_for(padding="x" * 20_000)
    assert deliver(body, {}, WebhookInbox())[0] == 413


def test_with_standard_webhooks_configured_its_headers_are_required() -> None:
    inbox = WebhookInbox()
    body = body_for()
    lc_only = {"LC-Signature": sign_lc(SECRET, body)}
    assert deliver(body, lc_only, inbox, standard_secret=STANDARD_SECRET)[0] == 401
    stale = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW) - 3600, body)
    assert deliver(body, stale, inbox, standard_secret=STANDARD_SECRET)[0] == 401
    fresh = sign_standard_webhook(STANDARD_SECRET, "msg_1", int(NOW), body)
    assert deliver(body, fresh, inbox, standard_secret=STANDARD_SECRET) == (200, None, False)
