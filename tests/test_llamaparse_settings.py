"""The LLAMA_CLOUD_* settings: v2 by default, each value validated, and what they drive.

The upload throttle is measured on the virtual loop against a transport that
plays v2's upload endpoint (the network's side only: one job id per upload).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from providers.llamaparse.client import Document, LlamaParse, estimate_cost_usd
from providers.llamaparse.settings import LlamaParseConfig
from providers.pricing import USD_PER_CREDIT
from providers.transport import HttpRequest, HttpResponse
from resilience import ConfigError
from resilience.testing import run_virtual
from state.pipeline.wiring import Pipeline


def test_unset_means_v2_at_the_cost_effective_tier_latest_version_and_50_uploads() -> None:
    config = LlamaParseConfig.from_env({})
    assert (config.api_version, config.tier, config.version) == ("v2", "cost_effective", "latest")
    assert (config.target_pages, config.max_pages, config.expand) == (None, None, ())
    assert (config.page_credits, config.usd_per_credit) == (3.0, USD_PER_CREDIT)
    assert config.upload_limit == 50


def test_every_setting_is_read() -> None:
    config = LlamaParseConfig.from_env(
        {
            "LLAMA_CLOUD_API_VERSION": "V2",
            "LLAMA_CLOUD_PARSE_TIER": "agentic_plus",
            "LLAMA_CLOUD_PARSE_VERSION": "2026-09-28",
            "LLAMA_CLOUD_TARGET_PAGES": "1, 3, 5-8",
            "LLAMA_CLOUD_MAX_PAGES": "40",
            "LLAMA_CLOUD_EXPAND": "items,text",
            "LLAMA_CLOUD_CREDITS_PER_PAGE": "50",
            "LLAMA_CLOUD_USD_PER_CREDIT": "0.001",
            "LLAMA_CLOUD_UPLOADS_PER_10S": "20",
            "LLAMA_CLOUD_JOB_TIMEOUT_S": "600",
        }
    )
    assert (config.tier, config.version) == ("agentic_plus", "2026-09-28")
    assert (config.target_pages, config.max_pages) == ("1,3,5-8", 40)
    assert config.expand == ("items", "text")
    assert (config.page_credits, config.usd_per_credit, config.upload_limit) == (50.0, 0.001, 20)
    assert config.job_timeout_s == 600.0


def test_v1_keeps_its_own_upload_limit_and_the_default_modes_rate() -> None:
    config = LlamaParseConfig.from_env(
        {"LLAMA_CLOUD_API_VERSION": "v1", "LLAMA_CLOUD_PARSE_TIER": "agentic"}
    )
    assert (config.api_version, config.upload_limit, config.page_credits) == ("v1", 15, 3.0)


def test_every_bad_value_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        LlamaParseConfig.from_env(
            {
                "LLAMA_CLOUD_API_VERSION": "v3",
                "LLAMA_CLOUD_PARSE_TIER": "premium",
                "LLAMA_CLOUD_PARSE_VERSION": "yesterday",
                "LLAMA_CLOUD_TARGET_PAGES": "1-",
                "LLAMA_CLOUD_MAX_PAGES": "0",
                "LLAMA_CLOUD_EXPAND": "text,html",
                "LLAMA_CLOUD_CREDITS_PER_PAGE": "-1",
                "LLAMA_CLOUD_USD_PER_CREDIT": "nan",
                "LLAMA_CLOUD_UPLOADS_PER_10S": "lots",
                "LLAMA_CLOUD_JOB_TIMEOUT_S": "0",
            }
        )
    lines = str(raised.value).splitlines()
    named = [line.split("=")[0] for line in lines]
    assert named == [
        "LLAMA_CLOUD_API_VERSION",
        "LLAMA_CLOUD_PARSE_TIER",
        "LLAMA_CLOUD_PARSE_VERSION",
        "LLAMA_CLOUD_TARGET_PAGES",
        "LLAMA_CLOUD_EXPAND",
        "LLAMA_CLOUD_MAX_PAGES",
        "LLAMA_CLOUD_UPLOADS_PER_10S",
        "LLAMA_CLOUD_CREDITS_PER_PAGE",
        "LLAMA_CLOUD_USD_PER_CREDIT",
        "LLAMA_CLOUD_JOB_TIMEOUT_S",
    ]
    assert "one of fast, cost_effective, agentic, agentic_plus" in lines[1]


class V2Uploads:
    """Plays v2's upload endpoint: each upload gets a new job id; the times are kept."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        assert request.url.endswith("/api/v2/parse/upload")
        self.times.append(asyncio.get_running_loop().time())
        job = {"id": f"pjb-{len(self.times)}", "project_id": "p", "status": "PENDING"}
        return HttpResponse.build(200, None, orjson.dumps(job))


@pytest.mark.parametrize(("setting", "limit"), [(None, 50), ("20", 20)])
def test_uploads_keep_to_the_limit_in_any_10_seconds(setting: str | None, limit: int) -> None:
    server = V2Uploads()
    environ = {"LLAMA_CLOUD_API_KEY": "llx-test"}
    if setting is not None:
        environ["LLAMA_CLOUD_UPLOADS_PER_10S"] = setting

    async def main() -> None:
        client = LlamaParse(LlamaParseConfig.from_env(environ), server)
        documents = [
            Document(f"d{i}.txt", f"document {i}".encode(), "text/plain") for i in range(120)
        ]
        await asyncio.gather(*(client.submit(d) for d in documents))

    run_virtual(main())
    times = server.times
    assert len(times) == 120
    busiest = max(sum(1 for t in times if start <= t < start + 10) for start in times)
    assert busiest <= limit
    # ...while keeping up nearly the full allowance: one at once, then limit - 1 per 10 s.
    assert times[-1] == pytest.approx(119 / ((limit - 1) / 10))


def test_the_worker_reserves_a_parse_at_the_configured_tier() -> None:
    environ = {"LLAMA_CLOUD_API_KEY": "llx-test", "LLAMA_CLOUD_PARSE_TIER": "agentic"}
    document = Document("notes.txt", b"word " * 2000, "text/plain")

    async def estimates() -> tuple[float, float]:
        pipeline = Pipeline.from_env(environ)
        try:
            return pipeline.parse_estimate_usd(document), estimate_cost_usd(document)
        finally:
            await pipeline.close()

    configured, default = asyncio.run(estimates())
    assert configured == pytest.approx(default * 10 / 3)  # agentic: 10 credits a page, not 3
