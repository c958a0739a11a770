"""The shared HTTP reading and the aiohttp transport, over real loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from providers.http import (
    RateLimits,
    error_from_response,
    parse_duration,
    rate_limits,
    redact,
    retry_after_s,
)
from providers.transport import AiohttpTransport, HttpRequest, HttpResponse, TransportError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0s", 0.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "5", "1s2", "-1s"])
def test_unreadable_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_retry_after_prefers_milliseconds_then_seconds_then_dates() -> None:
    both = {"retry-after-ms": "250", "retry-after": "3"}
    assert retry_after_s(both, 0.0) == 0.25
    assert retry_after_s({"retry-after": "3"}, 0.0) == 3.0
    date = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after_s(date, 1_445_412_470.0) == pytest.approx(10.0)
    assert retry_after_s({"retry-after": "0"}, 0.0) is None
    assert retry_after_s({"retry-after-ms": "junk", "retry-after": "2"}, 0.0) == 2.0
    assert retry_after_s({}, 0.0) is None


def test_rate_limit_headers_ignore_missing_and_minus_one() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert rate_limits(headers) == RateLimits(59, None, 1.0, 360.0)
    assert rate_limits({}) == RateLimits()


def test_errors_read_both_shapes_and_redact_secrets() -> None:
    openai_body = (
        b'{"error":{"message":"Incorrect API key provided: sk-live-123","type":'
        b'"invalid_request_error","param":null,"code":"invalid_api_key"}}'
    )
    response = HttpResponse.build(401, {"x-request-id": "req_1"}, openai_body)
    error = error_from_response("openai", response, 0.0, secrets=["sk-live-123"])
    assert error.status == 401
    assert error.code == "invalid_api_key"
    assert error.request_id == "req_1"
    assert "sk-live-123" not in str(error)
    assert "sk-live-123" not in repr(error)
    quota = HttpResponse.build(
        429,
        {},
        b'{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":null}}',
    )
    assert error_from_response("openai", quota, 0.0).code == "insufficient_quota"
    detail = HttpResponse.build(404, {}, b'{"detail":"Result not found."}')
    assert "Result not found." in error_from_response("llamaparse", detail, 0.0).message
    garbage = HttpResponse.build(502, {}, b"<html>bad gateway</html>")
    assert "bad gateway" in error_from_response("openai", garbage, 0.0).message
    assert redact("key=abc, again abc", ["abc", ""]) == "key=***, again ***"


def test_request_repr_hides_headers() -> None:
    request = HttpRequest("POST", "http://x/v1", {"Authorization": "Bearer sk-secret"}, b"{}")
    assert "sk-secret" not in repr(request)


def test_aiohttp_transport_round_trip_and_connection_errors() -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            status=201, body=body, headers={"X-Seen": request.headers.get("X-Token", "")}
        )

    async def main() -> tuple[HttpResponse, str]:
        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        transport = AiohttpTransport()
        try:
            response = await transport.send(
                HttpRequest("POST", f"http://127.0.0.1:{port}/echo", {"X-Token": "t"}, b"hello")
            )
        finally:
            await runner.cleanup()
        with pytest.raises(TransportError) as refused:
            await transport.send(HttpRequest("GET", f"http://127.0.0.1:{port}/echo"))
        await transport.close()
        return response, str(refused.value)

    response, refused = asyncio.run(main())
    assert response.status == 201
    assert response.body == b"hello"
    assert response.headers["x-seen"] == "t"  # case-insensitive
    assert "ClientConnectorError" in refused
