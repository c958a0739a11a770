"""The remote parse rows (`state.store.remote`), over both SQLite drivers and PostgreSQL.

What the durable parse relies on, each checked against the database itself:
one live row per document whoever asks, the upload recorded and the job let
go in one transaction (or neither), claims that two pollers never share, a
result stored with its row marked done and its job woken at once (or not at
all), and a failure taken by one caller.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from providers.llamaparse.client import ParsedDocument
from resilience import ProviderError
from resilience.clock import wall_time
from state import Job, JobState, StaleJob, Trigger
from state.store.remote import RemoteJob, RemoteState, error_record, upload_key
from tests.test_store import Store, db, open_target, run, shared_db

__all__ = ["db", "shared_db"]  # the fixtures, imported from the store suite

OWNER, OTHER = "worker-a", "worker-b"
LEASE_S = 60.0
RECORDED_TIMEOUT_S = 3600.0
"""The deadline a recorded upload is given, from its recording (an intent's is 1800 s)."""


async def parsing_job(store: Store, content: bytes = b"# a document\n") -> Job:
    """A job leased by OWNER and moved to `parsing`, as the worker leaves it before a submit."""
    now = wall_time()
    job = (await store.create_job(content, filename="a.md", mime_type="text/markdown", now=now)).job
    [leased] = await store.lease(OWNER, now=now, lease_s=LEASE_S)
    return await store.transition(
        leased.id,
        expected_state=JobState.UPLOADED,
        expected_version=leased.version,
        owner=OWNER,
        trigger=Trigger.START_PARSE,
        reason="parsing",
        correlation_id=job.correlation_id,
        now=now,
    )


def intent_for(job: Job, *, deadline_s: float = 1800.0) -> RemoteJob:
    now = wall_time()
    return RemoteJob(
        name=upload_key(job),
        sha256=job.sha256,
        job_id=job.id,
        correlation_id=job.correlation_id,
        status=RemoteState.INTENT,
        remote_id=None,
        api_version="v2",
        options={"tier": "cost_effective", "version": "latest"},
        estimated_pages=1,
        estimated_usd=0.00375,
        reservation={"provider": "llamaparse", "cost": 0.00375, "requests": 0, "periods": []},
        due_at=now,
        deadline=now + deadline_s,
        polls=0,
        error=None,
        created_at=now,
    )


async def submitted(store: Store, remote_id: str = "lp-1") -> tuple[Job, RemoteJob]:
    """A job whose upload was recorded as `remote_id`, and its row."""
    job = await parsing_job(store)
    row = await store.begin_remote_parse(intent_for(job), now=wall_time())
    parked = await store.record_remote_parse(
        row.name,
        remote_id,
        owner=OWNER,
        due_at=wall_time(),
        deadline=wall_time() + RECORDED_TIMEOUT_S,
        now=wall_time(),
    )
    [live] = await store.remote_parses(job.id)
    return parked, live


def parsed(job: Job, remote_id: str) -> ParsedDocument:
    return ParsedDocument(
        markdown="# a document", pages=1, job_id=remote_id, sha256=job.sha256, cost_usd=0.003
    )


def test_an_intent_is_kept_whole_and_one_live_row_per_document(db: str) -> None:
    async def body(store: Store) -> None:
        job = await parsing_job(store)
        intent = intent_for(job)
        row = await store.begin_remote_parse(intent, now=intent.created_at)
        assert row == intent  # every field read back as written
        # A second intent for the same document, under another name, gets the first.
        again = await store.begin_remote_parse(
            replace(intent, name="job-other-v9", created_at=intent.created_at + 1),
            now=intent.created_at + 1,
        )
        assert again == intent
        assert await store.remote_parse_of(job.sha256) == intent
        assert [r.name for r in await store.remote_parses(job.id)] == [intent.name]

    run(db, body)


def test_recording_the_upload_parks_the_job_in_one_transaction(db: str) -> None:
    async def body(store: Store) -> None:
        parked, live = await submitted(store, "lp-1")
        assert (parked.state, parked.lease_owner, parked.step_attempts) == (
            JobState.PARSING,
            None,
            0,
        )
        # The deadline is the one given with the upload, not the intent's.
        assert live.deadline >= live.created_at + RECORDED_TIMEOUT_S
        assert parked.not_before == live.deadline  # not leased again before the deadline
        assert (live.status, live.remote_id) == (RemoteState.LIVE, "lp-1")
        history = await store.history(parked.id)
        assert (history[-1].trigger, history[-1].source, history[-1].dest) == (
            "submit",
            JobState.PARSING,
            JobState.PARSING,
        )
        assert "lp-1" in history[-1].reason
        assert await store.lease(OTHER, now=wall_time(), lease_s=LEASE_S) == []
        assert await store.remote_parse_live("lp-1")
        assert not await store.remote_parse_live("lp-unknown")

    run(db, body)


def test_an_upload_recorded_by_a_worker_without_the_lease_changes_nothing(db: str) -> None:
    async def body(store: Store) -> None:
        job = await parsing_job(store)
        row = await store.begin_remote_parse(intent_for(job), now=wall_time())
        now = wall_time()
        with pytest.raises(StaleJob):
            await store.record_remote_parse(
                row.name, "lp-1", owner=OTHER, due_at=now, deadline=now + 60, now=now
            )
        # Rolled back whole: still an intent, the job still leased and unchanged.
        [kept] = await store.remote_parses(job.id)
        assert (kept.status, kept.remote_id) == (RemoteState.INTENT, None)
        assert await store.get_job(job.id) == job
        # A refused upload's intent can be dropped; a recorded one cannot.
        assert await store.drop_remote_parse(row.name)
        assert await store.remote_parses(job.id) == []

    run(db, body)


def test_two_pollers_never_claim_the_same_row(shared_db: str) -> None:
    async def body(store: Store) -> None:
        job, live = await submitted(store)
        async with await open_target(shared_db) as other:
            now = wall_time()
            mine = await store.claim_remote_parses(OWNER, now=now, hold_s=60, limit=10)
            theirs = await other.claim_remote_parses(OTHER, now=now, hold_s=60, limit=10)
            assert [r.name for r in mine] == [live.name]
            assert theirs == []
            # The loser of a claim can neither reschedule nor finish the row.
            assert not await other.reschedule_remote_parse(
                live.name, owner=OTHER, due_at=now, now=now
            )
            result = parsed(job, "lp-1")
            assert not await other.finish_remote_parse(
                live.name, result, "real", owner=OTHER, now=now
            )
            # A lapsed claim is taken by the next poller.
            later = now + 61
            [taken] = await other.claim_remote_parses(OTHER, now=later, hold_s=60, limit=10)
            assert taken.name == live.name
            assert not await store.reschedule_remote_parse(
                live.name, owner=OWNER, due_at=later, now=later
            )

    run(shared_db, body)


def test_a_finished_row_stores_the_parse_and_wakes_its_job_at_once(db: str) -> None:
    async def body(store: Store) -> None:
        job, _ = await submitted(store)
        now = wall_time() + 10
        [claimed] = await store.claim_remote_parses(OWNER, now=now, hold_s=60, limit=10)
        assert await store.reschedule_remote_parse(
            claimed.name, owner=OWNER, due_at=now + 5, now=now
        )
        assert await store.claim_remote_parses(OWNER, now=now, hold_s=60, limit=10) == []
        [claimed] = await store.claim_remote_parses(OWNER, now=now + 5, hold_s=60, limit=10)
        assert claimed.polls == 1
        result = parsed(job, "lp-1")
        assert await store.finish_remote_parse(claimed.name, result, "real", owner=OWNER, now=now)
        stored = await store.get_parse(job.sha256)
        assert stored is not None
        assert stored.parsed.markdown == result.markdown
        [done] = await store.remote_parses(job.id)
        assert done.status is RemoteState.DONE
        assert await store.remote_parse_of(job.sha256) is None  # no longer live
        [woken] = await store.lease(OTHER, now=now, lease_s=LEASE_S)
        assert (woken.id, woken.state) == (job.id, JobState.PARSING)
        # Finishing twice writes nothing.
        assert not await store.finish_remote_parse(
            claimed.name, result, "real", owner=OWNER, now=now
        )

    run(db, body)


def test_a_failure_is_kept_for_its_job_and_taken_once(db: str) -> None:
    async def body(store: Store) -> None:
        job, live = await submitted(store)
        error = ProviderError("llamaparse: job lp-1 failed: bad pdf", 422, code="parse_error")
        now = wall_time()
        # Not claimed by OWNER: an owner-bound failure does nothing; an unbound one fails it.
        assert not await store.fail_remote_parse(
            live.name, error_record(error), owner=OWNER, now=now
        )
        assert await store.fail_remote_parse(live.name, error_record(error), owner=None, now=now)
        failed = await store.remote_parse_of(job.sha256)
        assert failed is not None
        assert failed.status is RemoteState.FAILED
        rebuilt = failed.failure()
        assert (rebuilt.status, rebuilt.code, rebuilt.message) == (
            422,
            "parse_error",
            error.message,
        )
        [woken] = await store.lease(OTHER, now=now, lease_s=LEASE_S)
        assert woken.id == job.id
        assert await store.take_remote_failure(live.name, now=now)
        assert not await store.take_remote_failure(live.name, now=now)
        assert await store.remote_parse_of(job.sha256) is None
        # A new intent for the document may follow a failure.
        fresh = replace(intent_for(job), name=f"{job.id}-v99")
        assert await store.begin_remote_parse(fresh, now=now) == fresh

    run(db, body)


def test_the_lease_that_wakes_a_parked_job_is_not_counted_as_a_try(db: str) -> None:
    async def body(store: Store) -> None:
        job, live = await submitted(store)
        assert job.step_attempts == 0  # parked at its first try: nothing counted yet
        timeout = ProviderError("llamaparse: job lp-1 did not finish", code="job_timeout")
        now = wall_time()
        assert await store.fail_remote_parse(live.name, error_record(timeout), owner=None, now=now)
        [woken] = await store.lease(OTHER, now=now, lease_s=LEASE_S)
        assert woken.step_attempts == 0  # expected, not a worker dying in the step
        # The waking lease lost in its turn (its holder died): the next pick-up counts it.
        [again] = await store.lease(OWNER, now=now + LEASE_S, lease_s=LEASE_S)
        assert again.step_attempts == 1

    run(db, body)


def test_a_webhook_makes_only_an_unclaimed_live_row_due(db: str) -> None:
    async def body(store: Store) -> None:
        _, live = await submitted(store)
        now = wall_time()
        assert not await store.mark_remote_parse_due("lp-unknown", now=now)
        # Due now already: nothing to change, but the row is live.
        assert await store.mark_remote_parse_due("lp-1", now=now)
        [claimed] = await store.claim_remote_parses(OWNER, now=now, hold_s=60, limit=10)
        assert await store.mark_remote_parse_due("lp-1", now=now)  # live, though claimed
        # A claimed row keeps its claim: no other poller takes it meanwhile.
        assert await store.claim_remote_parses(OTHER, now=now, hold_s=60, limit=10) == []
        assert await store.reschedule_remote_parse(
            claimed.name, owner=OWNER, due_at=now + 30, now=now
        )
        assert await store.mark_remote_parse_due("lp-1", now=now)
        [again] = await store.claim_remote_parses(OTHER, now=now, hold_s=60, limit=10)
        assert again.name == live.name

    run(db, body)


def test_an_intent_whose_job_ended_is_found_and_can_be_adopted(db: str) -> None:
    async def body(store: Store) -> None:
        job = await parsing_job(store)
        row = await store.begin_remote_parse(intent_for(job), now=wall_time())
        assert await store.abandoned_intents(limit=10) == []  # its job still works on it
        await store.release_lease(job.id, OWNER)
        await store.transition(
            job.id,
            expected_state=JobState.PARSING,
            expected_version=job.version,
            owner=None,
            trigger=Trigger.FAIL,
            reason="given up",
            correlation_id=job.correlation_id,
            now=wall_time(),
            failure_reason="given up",
        )
        assert await store.abandoned_intents(limit=10) == [row]
        now = wall_time()
        deadline = now + RECORDED_TIMEOUT_S
        assert await store.adopt_remote_parse(
            row.name, "lp-9", due_at=now, deadline=deadline, now=now
        )
        assert not await store.adopt_remote_parse(
            row.name, "lp-9", due_at=now, deadline=deadline, now=now
        )
        assert await store.abandoned_intents(limit=10) == []
        [claimed] = await store.claim_remote_parses(OWNER, now=now, hold_s=60, limit=10)
        assert (claimed.remote_id, claimed.status, claimed.deadline) == (
            "lp-9",
            RemoteState.LIVE,
            deadline,
        )
        failed = await store.get_job(job.id)
        assert failed is not None
        assert failed.state is JobState.FAILED  # adopting never touches the ended job

    run(db, body)
