"""Fault plans: loading and validation, each fault's effect, seeding, and run-time control.

Most tests run in-process on virtual time, where windows and latencies are
exact; hangs, `/_control` and the `breakwater emulate` command are also
exercised over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from providers.transport import HttpRequest, HttpResponse
from simulations.cli import main as cli_main
from simulations.emulators import (
    Emulator,
    FaultPlan,
    FaultPlanError,
    InProcessTransport,
    LlamaParsePlan,
    OpenAIPlan,
    WebhookPlan,
    load_plan,
    plan_from_json,
    plan_to_json,
    start,
)
from tests.loopback import in_process

SMALL = "text-embedding-3-small"
EMBEDDINGS = "POST /v1/embeddings"


def embed(body: object | None = None) -> HttpRequest:
    document = body if body is not None else {"model": SMALL, "input": ["a", "b"]}
    return HttpRequest(
        "POST",
        "http://emulator.test/v1/embeddings",
        {"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
        orjson.dumps(document),
    )


def job_status(job_id: str = "missing") -> HttpRequest:
    return HttpRequest(
        "GET", f"http://emulator.test/api/v1/parsing/job/{job_id}", {"Authorization": "Bearer k"}
    )


# -- loading and validation ----------------------------------------------------

EXAMPLE = {
    "seed": 42,
    "openai": {
        "latency_s": [0.05, 0.3],
        "error_rate": 0.2,
        "error_status": 503,
        "outages": [[30, 60]],
        "hang_rate": 0.01,
        "malformed_rate": 0.05,
        "malformed_kinds": ["invalid_json", "wrong_dims"],
        "rpm": 500,
        "tpm": 200000,
    },
    "llamaparse": {
        "parse_time_s": [2, 8],
        "error_rate": 0.1,
        "outage_status": 502,
        "upload_retry_after": True,
        "webhook": {"delay_s": 0.5, "duplicate_rate": 0.1, "retry_backoff_s": [1, 2, 4]},
    },
}


def test_a_plan_file_loads_into_the_dataclasses(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(orjson.dumps(EXAMPLE))
    plan = load_plan(path)
    assert plan == FaultPlan(
        seed=42,
        openai=OpenAIPlan(
            latency_s=(0.05, 0.3),
            error_rate=0.2,
            error_status=503,
            outages=((30.0, 60.0),),
            hang_rate=0.01,
            malformed_rate=0.05,
            malformed_kinds=("invalid_json", "wrong_dims"),
            rpm=500,
            tpm=200_000,
        ),
        llamaparse=LlamaParsePlan(
            parse_time_s=(2.0, 8.0),
            error_rate=0.1,
            outage_status=502,
            upload_retry_after=True,
            webhook=WebhookPlan(delay_s=(0.5, 0.5), duplicate_rate=0.1),
        ),
    )
    assert plan_from_json(plan_to_json(plan)) == plan
    assert plan_from_json({}) == FaultPlan()


BAD_PLANS: list[tuple[object, str]] = [
    ([], "plan"),
    ({"openai": {"error_rate": 1.5}}, "openai.error_rate"),
    ({"openai": {"error_rate": "often"}}, "openai.error_rate"),
    ({"openai": {"error_status": 200}}, "openai.error_status"),
    ({"openai": {"error_status": True}}, "openai.error_status"),
    ({"openai": {"latency_s": [2, 1]}}, "openai.latency_s"),
    ({"openai": {"latency_s": [1, 2, 3]}}, "openai.latency_s"),
    ({"openai": {"outages": [[10, 20], [40, 30]]}}, "openai.outages[1]"),
    ({"openai": {"outages": [5]}}, "openai.outages[0]"),
    ({"openai": {"malformed_kinds": ["nonsense"]}}, "openai.malformed_kinds"),
    ({"openai": {"malformed_kinds": []}}, "openai.malformed_kinds"),
    ({"openai": {"rpm": 0}}, "openai.rpm"),
    ({"openai": {"parse_time_s": 1}}, "openai.parse_time_s"),
    ({"llamaparse": {"rpm": 10}}, "llamaparse.rpm"),
    ({"llamaparse": {"malformed_kinds": ["wrong_dims"]}}, "llamaparse.malformed_kinds"),
    ({"llamaparse": {"webhook": {"drop_rate": -0.1}}}, "llamaparse.webhook.drop_rate"),
    (
        {"llamaparse": {"webhook": {"retry_backoff_s": [1, -2]}}},
        "llamaparse.webhook.retry_backoff_s[1]",
    ),
    ({"llamaparse": {"webhook": []}}, "llamaparse.webhook"),
    ({"openia": {}}, "openia"),
    ({"seed": "x"}, "seed"),
]


@pytest.mark.parametrize(("document", "field"), BAD_PLANS, ids=[f for _, f in BAD_PLANS])
def test_bad_plans_are_refused_naming_the_field(document: object, field: str) -> None:
    with pytest.raises(FaultPlanError) as caught:
        plan_from_json(document)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_plans_built_in_python_are_checked_too() -> None:
    with pytest.raises(FaultPlanError, match=r"^hang_rate: must be between 0 and 1, got 2$"):
        OpenAIPlan(hang_rate=2.0)
    with pytest.raises(FaultPlanError, match=r"^delay_s: "):
        WebhookPlan(delay_s=(3.0, 1.0))


# -- each fault ----------------------------------------------------------------


def test_outage_windows_answer_the_outage_status_in_each_providers_shape() -> None:
    plan = FaultPlan(
        openai=OpenAIPlan(outages=((10.0, 20.0),)),
        llamaparse=LlamaParsePlan(outages=((10.0, 20.0),), outage_status=502),
    )

    async def scenario(transport: InProcessTransport) -> list[tuple[int, HttpResponse]]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(
            7.0
        )  # the plan came with the emulator: windows start at its first request
        answers = []
        for moment in (0.0, 5.0, 10.0, 19.9, 20.0):
            await asyncio.sleep(7.0 + moment - loop.time())
            answers.append((await transport.send(embed()), await transport.send(job_status())))
        return [(status.status, openai) for openai, status in answers]

    results = in_process(Emulator(faults=plan), scenario)
    assert [status for status, _ in results] == [404, 404, 502, 502, 404]
    openai_answers = [answer for _, answer in results]
    assert [a.status for a in openai_answers] == [200, 200, 503, 503, 200]
    assert openai_answers[2].json() == {
        "error": {
            "message": "The engine is currently overloaded, please try again later",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert openai_answers[2].headers["x-request-id"].startswith("req_")


def test_outages_count_from_when_the_plan_was_applied() -> None:
    emulator = Emulator()

    async def scenario(transport: InProcessTransport) -> list[int]:
        await asyncio.sleep(100.0)
        emulator.set_faults(FaultPlan(openai=OpenAIPlan(outages=((0.0, 10.0),))))
        first = (await transport.send(embed())).status
        await asyncio.sleep(10.0)
        return [first, (await transport.send(embed())).status]

    assert in_process(emulator, scenario) == [503, 200]


def test_an_injected_llamaparse_error_is_fastapi_shaped() -> None:
    plan = FaultPlan(llamaparse=LlamaParsePlan(error_rate=1.0, error_status=500))

    async def scenario(transport: InProcessTransport) -> HttpResponse:
        return await transport.send(job_status())

    answer = in_process(Emulator(faults=plan), scenario)
    assert (answer.status, answer.json()) == (500, {"detail": "Internal Server Error"})


def statuses(seed: int | None, emulator_seed: int = 0, requests: int = 300) -> list[int]:
    plan = FaultPlan(seed=seed, openai=OpenAIPlan(error_rate=0.3, error_status=500))

    async def scenario(transport: InProcessTransport) -> list[int]:
        return [(await transport.send(embed())).status for _ in range(requests)]

    return in_process(Emulator(seed=emulator_seed, faults=plan), scenario)


def test_error_rate_is_seeded_and_about_right() -> None:
    first = statuses(seed=1)
    assert set(first) == {200, 500}
    assert 60 <= first.count(500) <= 120
    assert statuses(seed=1) == first
    assert statuses(seed=1, emulator_seed=99) == first  # the plan's seed wins
    assert statuses(seed=2) != first
    assert statuses(seed=None, emulator_seed=1) == first  # no plan seed: the emulator's


def test_latency_delays_every_answer_by_the_drawn_amount() -> None:
    plan = FaultPlan(openai=OpenAIPlan(latency_s=(2.0, 2.0)))

    async def scenario(transport: InProcessTransport) -> tuple[float, HttpResponse]:
        loop = asyncio.get_running_loop()
        answer = await transport.send(embed())
        return loop.time(), answer

    finished_at, answer = in_process(Emulator(faults=plan), scenario)
    assert finished_at == pytest.approx(2.0)
    assert answer.status == 200
    assert answer.headers["openai-processing-ms"] == "2000"


def test_a_hang_is_ended_by_the_callers_timeout_in_process() -> None:
    emulator = Emulator(faults=FaultPlan(openai=OpenAIPlan(hang_rate=1.0)))

    async def scenario(transport: InProcessTransport) -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await transport.send(embed())
        return loop.time()

    assert in_process(emulator, scenario) == pytest.approx(30.0)
    stats = emulator.stats()
    assert stats.faults["openai"]["hang"] == 1
    assert stats.count(EMBEDDINGS) == 0  # never answered


def test_a_hang_over_http_is_ended_by_the_client_timeout_and_shutdown_is_prompt() -> None:
    async def main() -> float:
        emulator = Emulator(faults=FaultPlan(llamaparse=LlamaParsePlan(hang_rate=1.0)))
        running = await start(emulator)
        timeout = aiohttp.ClientTimeout(total=0.2)
        async with aiohttp.ClientSession(running.base_url, timeout=timeout) as session:
            with pytest.raises(TimeoutError):
                await session.get("/api/v1/parsing/job/x", headers={"Authorization": "Bearer k"})
            # A second hung request is still open when the server shuts down.
            pending = asyncio.ensure_future(
                session.get("/api/parsing/job/y", headers={"Authorization": "Bearer k"})
            )
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await running.close()
            with pytest.raises((aiohttp.ClientError, TimeoutError)):
                await pending
        assert emulator.stats().faults["llamaparse"]["hang"] == 2
        return time.perf_counter() - started

    assert asyncio.run(main()) < 2.0


def malformed(kind: str, body: object | None = None) -> HttpResponse:
    plan = FaultPlan(openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=(kind,)))

    async def scenario(transport: InProcessTransport) -> HttpResponse:
        return await transport.send(embed(body))

    return in_process(Emulator(faults=plan), scenario)


def test_malformed_invalid_json() -> None:
    answer = malformed("invalid_json")
    assert answer.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        answer.json()


def test_malformed_wrong_shape() -> None:
    document = malformed("wrong_shape").json()
    assert set(document) == {"result"}
    assert document["result"]["object"] == "list"


def test_malformed_wrong_dims_in_both_formats() -> None:
    floats = malformed("wrong_dims", {"model": SMALL, "input": ["a"], "dimensions": 32}).json()
    assert len(floats["data"][0]["embedding"]) == 31
    body = {"model": SMALL, "input": ["a"], "dimensions": 32, "encoding_format": "base64"}
    packed = malformed("wrong_dims", body).json()
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 4 * 31


def test_malformed_missing_item() -> None:
    document = malformed("missing_item", {"model": SMALL, "input": ["a", "b", "c"]}).json()
    assert [item["index"] for item in document["data"]] == [0, 1]


def test_only_successes_are_malformed() -> None:
    answer = malformed("invalid_json", {"model": SMALL, "input": ""})
    assert answer.status == 400
    assert answer.json()["error"]["message"].startswith("'$.input' is invalid")


def test_malformed_kinds_are_drawn_from_the_plans_list() -> None:
    plan = FaultPlan(
        openai=OpenAIPlan(malformed_rate=1.0, malformed_kinds=("invalid_json", "missing_item"))
    )
    emulator = Emulator(seed=3, faults=plan)

    async def scenario(transport: InProcessTransport) -> set[str]:
        seen = set()
        for _ in range(40):
            answer = await transport.send(embed())
            try:
                items = len(answer.json()["data"])
            except orjson.JSONDecodeError:
                seen.add("invalid_json")
            else:
                seen.add("missing_item" if items == 1 else f"{items} items")
        return seen

    assert in_process(emulator, scenario) == {"invalid_json", "missing_item"}
    assert emulator.stats().faults["openai"]["malformed"] == 40


def test_a_404_is_never_malformed() -> None:
    plan = FaultPlan(llamaparse=LlamaParsePlan(malformed_rate=1.0))

    async def scenario(transport: InProcessTransport) -> HttpResponse:
        return await transport.send(job_status())

    answer = in_process(Emulator(faults=plan), scenario)
    assert (answer.status, answer.json()) == (404, {"detail": "Job not found"})


def test_the_same_plan_and_traffic_replay_identically() -> None:
    plan = FaultPlan(
        seed=5,
        openai=OpenAIPlan(
            latency_s=(0.0, 1.0), error_rate=0.2, malformed_rate=0.2, outages=((20.0, 25.0),)
        ),
    )

    def run() -> list[tuple[float, int, bytes]]:
        async def scenario(transport: InProcessTransport) -> list[tuple[float, int, bytes]]:
            loop = asyncio.get_running_loop()
            trace = []
            for _ in range(80):
                answer = await transport.send(embed())
                trace.append((loop.time(), answer.status, answer.body))
            return trace

        return in_process(Emulator(faults=plan), scenario)

    first = run()
    assert first == run()
    assert {status for _, status, _ in first} == {200, 503}


# -- control -------------------------------------------------------------------


def test_control_endpoints_over_http() -> None:
    async def main() -> None:
        emulator = Emulator()
        running = await start(emulator)
        auth = {"Authorization": "Bearer sk-test"}
        body = {"model": SMALL, "input": "x"}
        try:
            async with aiohttp.ClientSession(running.base_url) as session:

                async def call(method: str, path: str, **options: Any) -> tuple[int, Any]:
                    async with session.request(method, path, **options) as response:
                        return response.status, await response.json(content_type=None)

                status, current = await call("GET", "/_control/faults")
                assert (status, current) == (200, {"faults": plan_to_json(FaultPlan())})
                assert (await call("POST", "/v1/embeddings", json=body, headers=auth))[0] == 200

                new_plan = {"openai": {"error_rate": 1.0, "error_status": 502}}
                status, applied = await call("POST", "/_control/faults", json=new_plan)
                assert status == 200
                assert applied["faults"]["openai"]["error_status"] == 502
                assert emulator.faults.openai.error_rate == 1.0
                assert (await call("POST", "/v1/embeddings", json=body, headers=auth))[0] == 502

                bad = {"openai": {"error_rate": 3}}
                status, refused = await call("POST", "/_control/faults", json=bad)
                assert status == 400
                assert refused["error"]["field"] == "openai.error_rate"
                assert "openai.error_rate" in refused["error"]["message"]
                status, _ = await call("POST", "/_control/faults", data=b"{oops")
                assert status == 400
                assert emulator.faults.openai.error_status == 502  # the old plan stays

                status, stats = await call("GET", "/_control/stats")
                assert status == 200
                assert stats["requests"] == {"POST /v1/embeddings": {"200": 1, "502": 1}}
                assert stats["faults"]["openai"]["error"] == 1
                assert stats["rate_limited"] == 0
                assert set(stats["webhooks"]) >= {"delivered", "dropped", "duplicated"}

                assert await call("POST", "/_control/reset") == (200, {"reset": True})
                _, stats = await call("GET", "/_control/stats")
                assert stats["requests"] == {}
                assert await call("GET", "/_control/nothing") == (404, {"detail": "Not Found"})
        finally:
            await running.close()

    asyncio.run(main())


def test_stats_count_429s_and_endpoints() -> None:
    plan = FaultPlan(openai=OpenAIPlan(rpm=1), llamaparse=LlamaParsePlan(upload_limit=1))
    emulator = Emulator(faults=plan)
    upload = HttpRequest(
        "POST",
        "http://emulator.test/api/parsing/upload",
        {"Authorization": "Bearer k", "Content-Type": "multipart/form-data; boundary=x"},
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        b"hi\r\n--x--\r\n",
    )

    async def scenario(transport: InProcessTransport) -> None:
        for _ in range(3):
            await transport.send(embed())
            await transport.send(upload)

    in_process(emulator, scenario)
    stats = emulator.stats()
    assert stats.requests == {
        EMBEDDINGS: {200: 1, 429: 2},
        "POST /api/parsing/upload": {200: 1, 429: 2},
    }
    assert stats.rate_limited == 4
    assert stats.jobs_created == 1


# -- the command line ----------------------------------------------------------


def test_emulate_refuses_a_bad_plan_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(orjson.dumps({"llamaparse": {"webhook": {"drop_rate": 7}}}))
    assert cli_main(["emulate", "--faults", str(path)]) == 2
    assert "llamaparse.webhook.drop_rate: must be between 0 and 1" in capsys.readouterr().err
    assert cli_main(["emulate", "--faults", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_emulate_serves_the_plan_until_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(orjson.dumps({"openai": {"outages": [[0, 3600]], "outage_status": 500}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREAKWATER_")}
    command = [sys.executable, "-m", "simulations.cli", "emulate", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--faults", str(path), "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(4)]
        openai_line = next(line for line in banner if "OpenAI base URL" in line)
        base_url = openai_line.split()[-1]
        assert base_url.endswith("/v1")
        assert any("/api/v1/parsing" in line for line in banner)

        async def probe() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{base_url}/embeddings",
                    json={"model": SMALL, "input": "x"},
                    headers={"Authorization": "Bearer sk"},
                ) as response,
            ):
                return response.status

        assert asyncio.run(probe()) == 500
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
