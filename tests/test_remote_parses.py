"""Durable remote parses (`state.pipeline.remote`) through the worker, on virtual time.

A real SQLite file, the in-process emulator and the worker as it runs in
production; what LlamaParse saw is read from the emulator's own stats and
job list, what was spent from the budget's ledger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from providers.llamaparse.client import Document, upload_name
from providers.pricing import USD_PER_CREDIT
from providers.transport import HttpRequest
from resilience import CircuitOpen, ProviderError
from resilience.budget import Budget
from resilience.clock import wall_time
from simulations.emulators import FaultPlan, InProcessTransport, LlamaParsePlan
from simulations.samples import SAMPLES
from state import JobState, Trigger
from state.pipeline.wiring import PARSE, SUBMIT
from state.pipeline.worker import Worker
from state.store.remote import RemoteJob, RemoteState
from tests.jobs import upload_samples
from tests.test_worker import Rig, drain, environment, scenario

UPLOAD = "POST /api/v2/parse/upload"
FETCH = "GET /api/v2/parse/{job_id}"
LIST = "GET /api/v2/parse"
TOO_LITTLE = "0.000001"
"""A daily budget below any parse's estimate."""


def parse_time(seconds: float, **plan: float) -> FaultPlan:
    return FaultPlan(llamaparse=LlamaParsePlan(parse_time_s=(seconds, seconds), **plan))


def parse_budget(rig: Rig) -> Budget:
    budget = rig.pipeline.guard(PARSE).budget
    assert budget is not None
    return budget


async def listed_names(rig: Rig) -> set[str]:
    """The upload names in the emulator's own v2 job list, read as a client would."""
    answer = await InProcessTransport(rig.emulator).send(
        HttpRequest(
            "GET",
            "http://emulator.local/api/v2/parse?page_size=100",
            {"Authorization": "Bearer llx-test"},
        )
    )
    return {str(item["name"]) for item in answer.json()["items"]}


async def credits(rig: Rig, remote_id: str) -> float:
    """The credits the emulator reports for its job `remote_id` (`expand=usage`)."""
    answer = await InProcessTransport(rig.emulator).send(
        HttpRequest(
            "GET",
            f"http://emulator.local/api/v2/parse/{remote_id}?expand=usage",
            {"Authorization": "Bearer llx-test"},
        )
    )
    return float(answer.json()["job"]["usage"]["credits"])


async def run_until_terminal(rig: Rig, ids: list[str], **worker: int) -> None:
    """`Worker.run` (its poller beside its leases) until every job is terminal."""
    stop = asyncio.Event()
    running = asyncio.get_running_loop().create_task(
        rig.worker(**worker).run(stop, idle_sleep_s=1.0)
    )
    try:
        for _ in range(24 * 3600):
            jobs = await rig.jobs(ids)
            if all(job.is_terminal for job in jobs):
                return
            await asyncio.sleep(1.0)
        raise AssertionError(f"not terminal: {jobs}")
    finally:
        stop.set()
        await running


def test_a_parse_lets_its_slot_go_while_llamaparse_works(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await run_until_terminal(rig, ids, concurrency=1)
        jobs = await rig.jobs(ids)
        assert all(job.state is JobState.COMPLETE and not job.degraded for job in jobs)
        # One slot, yet every upload was recorded before any parse finished.
        submits, finishes = [], []
        for job in jobs:
            for event in await rig.store.history(job.id):
                if event.trigger == "submit":
                    submits.append(event.at)
                elif event.trigger == "finish_parse":
                    finishes.append(event.at)
        assert len(submits) == len(finishes) == len(ids)
        assert max(submits) < min(finishes)
        requests = rig.emulator.stats().requests
        assert requests[UPLOAD] == {200: len(ids)}
        assert requests[FETCH] == {200: len(ids)}  # each result fetched once
        billed = 0.0
        for job in jobs:
            [row] = await rig.store.remote_parses(job.id)
            assert row.status is RemoteState.DONE
            assert row.remote_id is not None
            billed += await credits(rig, row.remote_id) * USD_PER_CREDIT
        # The ledger holds what LlamaParse billed, once: not the estimates, not twice.
        spent_usd, _ = await parse_budget(rig).spent("day")
        assert spent_usd == pytest.approx(billed)

    environ = environment("real", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD="1")
    scenario(tmp_path, environ, body, faults=parse_time(60.0))


def test_a_failed_remote_job_fails_its_job_and_refunds_its_reservation(tmp_path: Path) -> None:
    environ = environment("real", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD="1")

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        for job in await rig.jobs(ids):
            assert job.state is JobState.FAILED
            assert job.last_error is not None
            assert "failed to parse" in job.last_error
            [row] = await rig.store.remote_parses(job.id)
            assert row.status is RemoteState.REPORTED
        assert rig.emulator.stats().requests[UPLOAD] == {200: len(ids)}
        spent_usd, _ = await parse_budget(rig).spent("day")
        assert spent_usd == pytest.approx(0.0)

    scenario(tmp_path, environ, body, faults=parse_time(5.0, page_failure_rate=1.0))


def test_an_expiring_remote_job_is_tried_max_attempts_times_each_charge_kept(
    tmp_path: Path,
) -> None:
    environ = environment(
        "real", LLAMA_CLOUD_JOB_TIMEOUT_S="30", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD="1"
    )

    async def body(rig: Rig) -> None:
        [job_id] = await upload_samples(rig.store, SAMPLES[:1])
        await drain(rig.worker(max_attempts=3), [job_id])
        [job] = await rig.jobs([job_id])
        assert job.state is JobState.FAILED
        assert job.last_error is not None
        assert "did not finish within 30s" in job.last_error
        assert job.failure_reason == "parsing: failed 3 times (max_attempts 3)"
        # Three real tries, each under a new name: the leases that woke the job were not.
        rows = await rig.store.remote_parses(job_id)
        assert [row.status for row in rows] == [RemoteState.REPORTED] * 3
        assert len({row.name for row in rows}) == 3
        # Ground truth: LlamaParse holds three jobs, one per name, and all were charged.
        listed = await listed_names(rig)
        assert {f"{row.name}--{job.filename}" for row in rows} <= listed
        spent_usd, _ = await parse_budget(rig).spent("day")
        assert spent_usd == pytest.approx(sum(row.estimated_usd for row in rows))

    scenario(tmp_path, environ, body, faults=parse_time(120.0))


def test_hybrid_serves_the_mock_when_the_budget_refuses_and_uploads_nothing(
    tmp_path: Path,
) -> None:
    environ = environment("hybrid", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD=TOO_LITTLE)

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        for job in await rig.jobs(ids):
            assert (job.state, job.degraded) == (JobState.COMPLETE, True)
            assert await rig.store.remote_parses(job.id) == []
        assert UPLOAD not in rig.emulator.stats().requests

    scenario(tmp_path, environ, body)


def test_real_mode_waits_on_a_refused_budget_without_an_intent(tmp_path: Path) -> None:
    environ = environment("real", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD=TOO_LITTLE)

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        assert await rig.worker().run_once() == len(ids)
        for job in await rig.jobs(ids):
            assert (job.state, job.wait_reason, job.resume_to) == (
                JobState.WAITING,
                "budget",
                JobState.PARSING,
            )
            assert await rig.store.remote_parses(job.id) == []
        assert UPLOAD not in rig.emulator.stats().requests

    scenario(tmp_path, environ, body)


def test_v1_polls_each_job_and_fetches_its_result_once(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await drain(rig.worker(), ids)
        assert all(job.state is JobState.COMPLETE for job in await rig.jobs(ids))
        requests = rig.emulator.stats().requests
        assert requests["POST /api/v1/parsing/upload"] == {200: len(ids)}
        assert requests["GET /api/v1/parsing/job/{job_id}/result/markdown"] == {200: len(ids)}
        assert LIST not in requests  # v1 has no job list: one status request per job

    scenario(tmp_path, environment("real", LLAMA_CLOUD_API_VERSION="v1"), body)


async def abandoned_intent(rig: Rig, worker: Worker, *, uploaded: bool) -> str:
    """What a crash leaves: an intent (and its upload, if `uploaded`), its job then failed
    by hand, so only the poller's sweep settles it. The job's id."""
    assert worker.remote is not None
    [job_id] = await upload_samples(rig.store, SAMPLES[:1])
    [job] = await rig.store.lease("crashed", now=wall_time(), lease_s=60)
    job = await rig.store.transition(
        job.id,
        expected_state=job.state,
        expected_version=job.version,
        owner="crashed",
        trigger=Trigger.START_PARSE,
        reason="parsing",
        correlation_id=job.correlation_id,
        now=wall_time(),
    )
    document = Document(job.filename, SAMPLES[0].path.read_bytes(), job.mime_type)
    # What the crashed process did: reserve and record the intent, maybe upload.
    intent = await worker.remote._intend(job, document)
    assert isinstance(intent, RemoteJob)
    parser = rig.pipeline.parser
    assert parser is not None
    if uploaded:
        await parser.submit(document, name=intent.name)
    await rig.store.release_lease(job.id, "crashed")
    await rig.store.transition(
        job.id,
        expected_state=JobState.PARSING,
        expected_version=job.version,
        owner=None,
        trigger=Trigger.FAIL,
        reason="an operator gave up on it",
        correlation_id=job.correlation_id,
        now=wall_time(),
        failure_reason="given up",
    )
    return job_id


@pytest.mark.parametrize("uploaded", [True, False])
def test_an_intent_whose_job_ended_is_adopted_or_released(tmp_path: Path, uploaded: bool) -> None:
    """A crash left an intent, and the job was then failed by hand: the poller still finds
    the upload in LlamaParse's job list and settles it, or releases what it reserved."""
    environ = environment("real", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD="1")

    async def body(rig: Rig) -> None:
        worker = rig.worker()
        job_id = await abandoned_intent(rig, worker, uploaded=uploaded)
        for _ in range(120):
            await worker.run_once()
            await asyncio.sleep(1.0)
        rows = await rig.store.remote_parses(job_id)
        spent_usd, _ = await parse_budget(rig).spent("day")
        if uploaded:
            [row] = rows
            assert row.status is RemoteState.DONE
            assert row.remote_id is not None
            assert rig.emulator.stats().requests[FETCH] == {200: 1}  # before our own GET
            assert spent_usd == pytest.approx(await credits(rig, row.remote_id) * USD_PER_CREDIT)
        else:
            assert rows == []
            assert spent_usd == pytest.approx(0.0)
        [job] = await rig.jobs([job_id])
        assert job.state is JobState.FAILED  # an ended job stays ended
        assert rig.emulator.stats().requests.get(UPLOAD, {}) == ({200: 1} if uploaded else {})

    scenario(tmp_path, environ, body, faults=parse_time(5.0))


def test_an_upload_waiting_for_the_throttle_when_the_breaker_opens_is_never_sent(
    tmp_path: Path,
) -> None:
    """The upload throttle is waited before the guard admits an upload: one queued there
    when the breaker opens is refused (`CircuitOpen`), not sent while the breaker is open."""
    environ = environment("real", LLAMA_CLOUD_UPLOADS_PER_10S="2")  # one upload per 10 s

    async def body(rig: Rig) -> None:
        router = rig.pipeline.router(SUBMIT)
        first, second = (
            Document(f"d{i}.md", f"# document {i}\n".encode(), "text/markdown") for i in (1, 2)
        )
        await router.call(SUBMIT, first, name="job-1-v1")
        queued = asyncio.get_running_loop().create_task(
            router.call(SUBMIT, second, name="job-2-v1")
        )
        await asyncio.sleep(5.0)  # the second waits for the throttle until 10 s
        rig.pipeline.guard(SUBMIT).breaker.force_open("the provider is down")
        with pytest.raises(CircuitOpen):
            await queued
        assert rig.emulator.stats().requests[UPLOAD] == {200: 1}

    scenario(tmp_path, environ, body)


def test_an_upload_made_late_gets_its_full_timeout_from_the_upload(tmp_path: Path) -> None:
    """The throttle holds the last of three uploads 20 s after its intent; LlamaParse takes
    10 s of a 15 s timeout: every job completes, none expired at its recording."""
    environ = environment("real", LLAMA_CLOUD_JOB_TIMEOUT_S="15", LLAMA_CLOUD_UPLOADS_PER_10S="2")

    async def body(rig: Rig) -> None:
        ids = await rig.upload_samples()
        await run_until_terminal(rig, ids, concurrency=len(ids))
        submits = []
        for job in await rig.jobs(ids):
            assert job.state is JobState.COMPLETE
            [row] = await rig.store.remote_parses(job.id)
            assert row.status is RemoteState.DONE
            submits += [e.at for e in await rig.store.history(job.id) if e.trigger == "submit"]
        assert sorted(submits)[-1].endswith("00:00:20.000Z")  # 20 s after the intents
        assert rig.emulator.stats().requests[UPLOAD] == {200: len(ids)}

    scenario(tmp_path, environ, body, faults=parse_time(10.0))


def test_an_upload_adopted_after_a_crash_gets_its_timeout_from_the_adoption(
    tmp_path: Path,
) -> None:
    """Adopted 40 s after its intent, a 50 s parse under a 30 s timeout is not expired at
    once: LlamaParse's created time is on its clock, so the timeout runs from the adoption."""
    environ = environment("real", LLAMA_CLOUD_JOB_TIMEOUT_S="30")

    async def body(rig: Rig) -> None:
        worker = rig.worker()
        job_id = await abandoned_intent(rig, worker, uploaded=True)
        await asyncio.sleep(40.0)  # no poller ran while the crashed process was down
        adopted = wall_time()
        for _ in range(60):
            await worker.run_once()
            await asyncio.sleep(1.0)
        [row] = await rig.store.remote_parses(job_id)
        assert row.status is RemoteState.DONE
        assert row.deadline == pytest.approx(adopted + 30.0)

    scenario(tmp_path, environ, body, faults=parse_time(50.0))


def test_an_ended_jobs_intent_whose_upload_got_no_answer_is_adopted(tmp_path: Path) -> None:
    """LlamaParse made the job but its answer was lost, and the job then ended: the sweep
    still looks the upload up and adopts it, rather than waiting for an answer forever."""
    environ = environment("real", BREAKWATER_LLAMAPARSE_DAILY_BUDGET_USD="1")

    async def body(rig: Rig) -> None:
        worker = rig.worker()
        job_id = await abandoned_intent(rig, worker, uploaded=False)
        [intent] = await rig.store.remote_parses(job_id)
        [job] = await rig.jobs([job_id])
        parser = rig.pipeline.parser
        assert parser is not None
        document = Document(job.filename, SAMPLES[0].path.read_bytes(), job.mime_type)
        with pytest.raises(ProviderError):
            await parser.submit(document, name=intent.name)
        assert parser.unanswered(upload_name(job.filename, intent.name))
        for _ in range(180):
            await worker.run_once()
            await asyncio.sleep(1.0)
        [row] = await rig.store.remote_parses(job_id)
        assert row.status is RemoteState.DONE
        assert row.remote_id is not None
        spent_usd, _ = await parse_budget(rig).spent("day")
        assert spent_usd == pytest.approx(await credits(rig, row.remote_id) * USD_PER_CREDIT)

    scenario(tmp_path, environ, body, faults=parse_time(5.0, lost_upload_answer_rate=1.0))
