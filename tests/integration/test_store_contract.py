"""The Store contract, run against every backend (habit 11).

Each backend is a ``Backend`` whose ``open()`` returns a new store on the SAME
database, so durability can be checked by closing and reopening. Add a backend
by adding a parameter to the ``backend`` fixture. Clocks are passed as ``now``:
no test sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest

from service.errors import StoreError
from service.store import load_migrations, open_store, sqlite_path
from service.store.base import Account, Delegation, Identity, Job, NewDelivery, Store
from service.store.sqlite import ACCEPT_CHUNK, SQLiteStore, split_statements

T0 = 1_700_000_000.0
LEASE = 30.0


@dataclass
class Backend:
    """How to open (again) the one database of a test."""

    name: str
    open: Callable[[], Awaitable[Store]]
    dialect: str


#: The PostgreSQL server of the contract suite (trust auth in CI). Each test gets a
#: schema of its own, dropped afterwards; the suite fails (never skips) without it.
POSTGRES_URL = os.environ.get(
    "CODER_BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/data/bridge.db"
        yield Backend("sqlite", lambda: open_store(url), "sqlite")
    elif request.param == "postgres":
        async with postgres_schema() as url:
            yield Backend("postgres", lambda: open_store(url), "postgres")
    else:  # pragma: no cover - a backend added to params without a branch here
        raise AssertionError(request.param)


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh schema on the test server; yields a URL whose search_path selects it."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open()
    await opened.migrate()
    yield opened
    await opened.close()


_ids = itertools.count(1)


def delivery(
    issue_key: str = "github:acme/app#1",
    *,
    delivery_id: str | None = None,
    tracker: str = "github",
    received_at: float = T0,
    event_json: str = '{"action": "labeled"}',
    body: str | None = None,
) -> NewDelivery:
    """A delivery; its body (hashed) differs from every other's unless ``body`` is given."""
    delivery_id = delivery_id or f"d-{next(_ids)}"
    return NewDelivery(
        tracker=tracker,
        delivery_id=delivery_id,
        issue_key=issue_key,
        event_json=event_json,
        received_at=received_at,
        body_sha256=hashlib.sha256((body or f"body of {delivery_id}").encode()).hexdigest(),
    )


async def claim_one(store: Store, owner: str = "w1", *, now: float = T0 + 1) -> Job:
    jobs = await store.claim(owner, now=now, lease_seconds=LEASE, limit=1)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def job_status(store: Store, delivery_id: str) -> tuple[str | None, int, str | None]:
    for record in await store.list_deliveries(limit=1000):
        if record.delivery_id == delivery_id:
            return record.job_status, record.attempts, record.last_error
    raise AssertionError(f"delivery {delivery_id} not listed")


# -- lifecycle ---------------------------------------------------------------------


async def test_migrate_applies_every_version_once_and_reports_status(backend: Backend) -> None:
    newest = load_migrations(backend.dialect)[-1].version
    fresh = await backend.open()
    try:
        assert await fresh.schema_status() == (0, newest)
        assert await fresh.migrate() == list(range(1, newest + 1))
        assert await fresh.migrate() == []
        assert await fresh.schema_status() == (newest, newest)
    finally:
        await fresh.close()
    reopened = await backend.open()
    try:
        assert await reopened.migrate() == []
        await reopened.ping()
    finally:
        await reopened.close()


async def test_closed_store_raises_store_error(backend: Backend) -> None:
    closed = await backend.open()
    await closed.close()
    await closed.close()  # closing twice is harmless
    with pytest.raises(StoreError):
        await closed.ping()


# -- accept ------------------------------------------------------------------------


async def test_accept_stores_new_deliveries_and_flags_duplicates(store: Store) -> None:
    a, b, c = delivery(), delivery(), delivery()
    assert await store.accept([a, b]) == [True, True]
    assert await store.accept([b, c, a]) == [False, True, False]
    assert await store.accept([]) == []
    assert (await store.queue_stats(now=T0))[0] == 3


async def test_same_delivery_id_on_two_trackers_is_two_deliveries(store: Store) -> None:
    github = delivery(delivery_id="same", tracker="github")
    linear = delivery(delivery_id="same", tracker="linear", issue_key="linear:ENG-1")
    assert await store.accept([github, linear]) == [True, True]


async def test_the_same_body_under_a_new_delivery_id_is_a_duplicate(store: Store) -> None:
    original = delivery("github:acme/app#1", delivery_id="first", body="signed bytes")
    replay = delivery("github:acme/app#1", delivery_id="replayed", body="signed bytes")
    assert await store.accept([original]) == [True]
    job = await claim_one(store)
    await store.finish_job(job.id, "w1")  # long done: a replay is still a replay
    assert await store.accept([replay]) == [False]
    other_tracker = delivery("linear:1", delivery_id="replayed", tracker="linear",
                             body="signed bytes")
    assert await store.accept([other_tracker]) == [True]
    in_one_batch = [delivery("i:2", body="twice"), delivery("i:2", body="twice")]
    assert await store.accept(in_one_batch) == [True, False]
    ids = [r.delivery_id for r in await store.list_deliveries(limit=10)]
    assert "replayed" in ids and ids.count("replayed") == 1  # the Linear one only


async def test_duplicate_inside_one_batch_first_wins(store: Store) -> None:
    first = delivery("github:acme/app#1", delivery_id="dup")
    second = delivery("github:acme/app#2", delivery_id="dup", event_json="{}")
    assert await store.accept([first, second, first]) == [True, False, False]
    jobs = await store.claim("w1", now=T0 + 1, lease_seconds=LEASE, limit=10)
    assert [(j.delivery_id, j.issue_key, j.event_json) for j in jobs] == [
        ("dup", "github:acme/app#1", first.event_json)
    ]


async def test_batch_larger_than_one_statement_is_one_transaction(store: Store) -> None:
    batch = [delivery(f"github:acme/app#{i}") for i in range(ACCEPT_CHUNK * 2 + 5)]
    batch.insert(ACCEPT_CHUNK + 3, batch[1])  # a duplicate in a later chunk
    result = await store.accept(batch)
    assert result.count(False) == 1 and result[ACCEPT_CHUNK + 3] is False
    assert (await store.queue_stats(now=T0))[0] == ACCEPT_CHUNK * 2 + 5


async def test_accepted_delivery_survives_closing_and_reopening(backend: Backend) -> None:
    # Raw NUL characters are not part of the contract (PostgreSQL text cannot hold
    # them; JSON text never contains one unescaped).
    event = '{"title": "caf\u00e9 \\"quoted\\" \U0001f600", "nul": "\\u0000"}'
    first = await backend.open()
    await first.migrate()
    assert await first.accept([delivery("github:acme/app#9", delivery_id="keep", event_json=event)])
    await first.close()

    second = await backend.open()
    try:
        assert await second.accept([delivery(delivery_id="keep")]) == [False]
        job = await claim_one(second)
        assert (job.delivery_id, job.issue_key, job.event_json) == (
            "keep",
            "github:acme/app#9",
            event,
        )
    finally:
        await second.close()


# -- claim and leases --------------------------------------------------------------


async def test_claim_returns_oldest_run_at_first_up_to_limit(store: Store) -> None:
    late = delivery("i:3", received_at=T0 + 3)
    early = delivery("i:1", received_at=T0 + 1)
    middle = delivery("i:2", received_at=T0 + 2)
    future = delivery("i:4", received_at=T0 + 100)
    await store.accept([late, early, middle, future])

    jobs = await store.claim("w1", now=T0 + 10, lease_seconds=LEASE, limit=2)
    assert [j.delivery_id for j in jobs] == [early.delivery_id, middle.delivery_id]
    assert all(j.attempts == 1 and j.lease_owner == "w1" for j in jobs)
    assert all(j.lease_until == T0 + 10 + LEASE for j in jobs)

    jobs = await store.claim("w1", now=T0 + 10, lease_seconds=LEASE, limit=10)
    assert [j.delivery_id for j in jobs] == [late.delivery_id]  # `future` is not due
    assert await store.claim("w1", now=T0 + 10, lease_seconds=LEASE, limit=0) == []


async def test_claim_never_returns_two_jobs_of_one_issue(store: Store) -> None:
    one = delivery("github:acme/app#1", received_at=T0)
    two = delivery("github:acme/app#1", received_at=T0 + 1)
    other = delivery("github:acme/app#2", received_at=T0 + 2)
    await store.accept([one, two, other])

    jobs = await store.claim("w1", now=T0 + 5, lease_seconds=LEASE, limit=10)
    assert [j.delivery_id for j in jobs] == [one.delivery_id, other.delivery_id]
    # `one` holds a valid lease: nobody may take `two` of the same issue meanwhile.
    assert await store.claim("w2", now=T0 + 6, lease_seconds=LEASE, limit=10) == []

    await store.finish_job(jobs[0].id, "w1")
    job = await claim_one(store, "w2", now=T0 + 7)
    assert job.delivery_id == two.delivery_id


async def test_one_job_per_issue_even_with_equal_run_at(store: Store) -> None:
    same = [delivery("issue:same", received_at=T0) for _ in range(5)]
    await store.accept([*same, delivery("issue:other", received_at=T0)])
    jobs = await store.claim("w1", now=T0, lease_seconds=LEASE, limit=10)
    assert sorted(j.issue_key for j in jobs) == ["issue:other", "issue:same"]
    assert [j.delivery_id for j in jobs if j.issue_key == "issue:same"] == [same[0].delivery_id]


async def test_expired_lease_is_claimed_again_by_another_worker(store: Store) -> None:
    await store.accept([delivery(delivery_id="crash")])
    dead = await claim_one(store, "A", now=T0)
    assert await store.claim("B", now=T0 + LEASE, lease_seconds=LEASE, limit=5) == []

    again = await claim_one(store, "B", now=T0 + LEASE + 1)
    assert (again.id, again.attempts, again.lease_owner) == (dead.id, 2, "B")
    # The dead worker comes back: it no longer holds the job and changes nothing.
    assert await store.renew_lease(dead.id, "A", until=T0 + 999) is False
    await store.finish_job(dead.id, "A")
    await store.fail_job(dead.id, "A", error="late")
    await store.retry_job(dead.id, "A", run_at=T0, error="late")
    await store.release_job(dead.id, "A")
    assert await job_status(store, "crash") == ("running", 2, None)
    assert await store.renew_lease(again.id, "B", until=T0 + 500) is True


async def test_lease_expiry_blocks_nothing_else_of_the_issue(store: Store) -> None:
    first = delivery("issue:x", received_at=T0)
    second = delivery("issue:x", received_at=T0 + 1)
    await store.accept([first, second])
    await claim_one(store, "A", now=T0 + 2)
    # A died; at expiry the oldest runnable job of the issue (the expired one) comes first.
    job = await claim_one(store, "B", now=T0 + 2 + LEASE + 1)
    assert job.delivery_id == first.delivery_id


async def test_renew_extends_the_lease_for_its_owner_only(store: Store) -> None:
    await store.accept([delivery()])
    job = await claim_one(store, "A", now=T0)
    assert await store.renew_lease(job.id, "stranger", until=T0 + 1000) is False
    assert await store.renew_lease(job.id, "A", until=T0 + 100) is True
    # Past the original lease but within the renewed one: not claimable.
    assert await store.claim("B", now=T0 + LEASE + 10, lease_seconds=LEASE, limit=5) == []
    assert len(await store.claim("B", now=T0 + 101, lease_seconds=LEASE, limit=5)) == 1


async def test_retry_runs_again_at_run_at_with_the_error_kept(store: Store) -> None:
    await store.accept([d := delivery()])
    job = await claim_one(store, now=T0)
    await store.retry_job(job.id, "w1", run_at=T0 + 100, error="coder: timeout")
    assert await job_status(store, d.delivery_id) == ("queued", 1, "coder: timeout")

    assert await store.claim("w1", now=T0 + 99, lease_seconds=LEASE, limit=5) == []
    again = await claim_one(store, now=T0 + 100)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_finish_and_fail_are_final(store: Store) -> None:
    done, failed = delivery("i:1"), delivery("i:2")
    await store.accept([done, failed])
    jobs = await store.claim("w1", now=T0 + 1, lease_seconds=LEASE, limit=5)
    by_delivery = {j.delivery_id: j for j in jobs}
    await store.finish_job(by_delivery[done.delivery_id].id, "w1")
    await store.fail_job(by_delivery[failed.delivery_id].id, "w1", error="github: 404")

    assert await job_status(store, done.delivery_id) == ("done", 1, None)
    assert await job_status(store, failed.delivery_id) == ("failed", 1, "github: 404")
    far = T0 + 10 * LEASE
    assert await store.claim("w2", now=far, lease_seconds=LEASE, limit=5) == []
    assert await store.queue_stats(now=far) == (0, 0.0)


async def test_release_gives_the_job_back_without_counting_the_attempt(store: Store) -> None:
    await store.accept([d := delivery()])
    job = await claim_one(store, "A", now=T0 + 1)
    await store.release_job(job.id, "A")
    assert await job_status(store, d.delivery_id) == ("queued", 0, None)
    again = await claim_one(store, "B", now=T0 + 2)
    assert (again.id, again.attempts) == (job.id, 1)


async def test_release_to_a_later_run_at_defers_the_job_uncounted(store: Store) -> None:
    await store.accept([d := delivery(received_at=T0)])
    job = await claim_one(store, "A", now=T0 + 1)
    await store.release_job(job.id, "B", run_at=T0 + 60)  # not B's lease: nothing changes
    assert await job_status(store, d.delivery_id) == ("running", 1, None)
    await store.release_job(job.id, "A", run_at=T0 + 60)
    assert await job_status(store, d.delivery_id) == ("queued", 0, None)
    assert await store.claim("B", now=T0 + 59, lease_seconds=LEASE, limit=5) == []
    assert await store.queue_stats(now=T0 + 59) == (1, 0.0)  # waiting, not overdue
    again = await claim_one(store, "B", now=T0 + 60)
    assert (again.id, again.attempts) == (job.id, 1)


async def test_a_job_put_off_keeps_newer_jobs_of_its_issue_waiting(store: Store) -> None:
    await store.accept([first := delivery("i:1", received_at=T0)])
    job = await claim_one(store, "A", now=T0 + 1)
    await store.release_job(job.id, "A", run_at=T0 + 60)  # deferred, e.g. by pacing
    await store.accept([delivery("i:1", received_at=T0 + 2), other := delivery(
        "i:2", received_at=T0 + 2)])
    claimed = await store.claim("B", now=T0 + 3, lease_seconds=LEASE, limit=5)
    assert [j.delivery_id for j in claimed] == [other.delivery_id]  # not i:1's newer job
    await store.finish_job(claimed[0].id, "B")
    claimed = await store.claim("B", now=T0 + 60, lease_seconds=LEASE, limit=5)
    assert [j.delivery_id for j in claimed] == [first.delivery_id]  # the original, first


async def test_queue_stats_counts_live_jobs_and_ages_the_oldest_runnable(store: Store) -> None:
    assert await store.queue_stats(now=T0) == (0, 0.0)
    await store.accept([delivery("i:1", received_at=T0), delivery("i:2", received_at=T0 + 5)])
    assert await store.queue_stats(now=T0 + 10) == (2, 10.0)

    job = await claim_one(store, now=T0 + 10)  # the oldest is now leased, not runnable
    assert await store.queue_stats(now=T0 + 10) == (2, 5.0)
    await store.finish_job(job.id, "w1")
    assert await store.queue_stats(now=T0 + 10) == (1, 5.0)
    assert await store.queue_stats(now=T0 + 1) == (1, 0.0)  # nothing due yet


# -- workers -------------------------------------------------------------------------


async def test_the_jobs_of_a_worker_that_stopped_beating_are_taken_back(store: Store) -> None:
    await store.heartbeat("w1", now=T0, stale_after=10)
    await store.accept([first := delivery("i:1"), second := delivery("i:2")])
    held = await store.claim("w1", now=T0, lease_seconds=1e6, limit=2)  # a long lease
    assert {j.delivery_id for j in held} == {first.delivery_id, second.delivery_id}
    assert await store.heartbeat("w2", now=T0 + 9, stale_after=10) == 0  # w1 may be slow
    assert await store.claim("w2", now=T0 + 9, lease_seconds=LEASE, limit=2) == []
    assert await store.heartbeat("w2", now=T0 + 11, stale_after=10) == 2  # w1 is gone
    taken = await store.claim("w2", now=T0 + 11, lease_seconds=LEASE, limit=2)
    assert sorted(j.delivery_id for j in taken) == sorted(j.delivery_id for j in held)
    assert all(j.attempts == 2 for j in taken)
    await store.finish_job(held[0].id, "w1")  # the old holder can no longer finish it
    assert (await job_status(store, held[0].delivery_id))[0] == "running"


async def test_a_worker_that_keeps_beating_keeps_its_jobs(store: Store) -> None:
    await store.accept([delivery("i:1")])
    await store.heartbeat("w1", now=T0, stale_after=10)
    job = await claim_one(store, "w1", now=T0)
    for moment in (T0 + 8, T0 + 16, T0 + 24):
        assert await store.heartbeat("w1", now=moment, stale_after=10) == 0
        assert await store.heartbeat("w2", now=moment + 1, stale_after=10) == 0
    assert await store.renew_lease(job.id, "w1", until=T0 + 100)
    await store.unregister_worker("w1")  # a clean stop: nothing of it is left to take back
    assert await store.heartbeat("w2", now=T0 + 1000, stale_after=10) == 0


async def test_registering_takes_back_a_predecessors_jobs_only_where_one_process_serves(
    store: Store, backend: Backend,
) -> None:
    await store.accept([delivery("i:1")])
    assert await store.register_worker("before", now=T0) == 0
    await claim_one(store, "before", now=T0)
    taken = await store.register_worker("after", now=T0 + 1)
    if backend.dialect == "sqlite":  # one process per database: "before" is gone
        assert taken == 1
        assert (await claim_one(store, "after", now=T0 + 1)).attempts == 2
    else:  # replicas share the database: "before" may be alive
        assert taken == 0
        assert await store.claim("after", now=T0 + 1, lease_seconds=LEASE, limit=1) == []


# -- deliveries ----------------------------------------------------------------------


async def test_requeue_delivery_enqueues_a_fresh_job_only_when_none_is_live(store: Store) -> None:
    await store.accept([d := delivery()])
    assert await store.requeue_delivery("unknown", now=T0) is False
    assert await store.requeue_delivery(d.delivery_id, now=T0) is False  # still queued

    job = await claim_one(store, now=T0 + 1)
    assert await store.requeue_delivery(d.delivery_id, now=T0 + 2) is False  # running
    await store.fail_job(job.id, "w1", error="boom")
    assert await store.requeue_delivery(d.delivery_id, now=T0 + 3) is True
    assert await job_status(store, d.delivery_id) == ("queued", 0, None)

    fresh = await claim_one(store, now=T0 + 3)
    assert (fresh.delivery_id, fresh.attempts) == (d.delivery_id, 1)
    assert fresh.id != job.id


async def test_requeue_before_the_first_claim_leaves_every_delivery_queued(store: Store) -> None:
    first, second, third = (delivery(f"i:{n}", received_at=T0 + n) for n in range(3))
    for each in (first, second, third):
        await store.accept([each])
    assert await store.requeue_delivery(third.delivery_id, now=T0 + 5) is False  # queued
    assert await store.queue_stats(now=T0 + 5) == (3, 5.0)
    jobs = await store.claim("w1", now=T0 + 5, lease_seconds=LEASE, limit=10)
    assert [j.delivery_id for j in jobs] == [first.delivery_id, second.delivery_id,
                                             third.delivery_id]
    assert await store.claim("w1", now=T0 + 5, lease_seconds=LEASE, limit=10) == []


async def test_a_backlog_is_claimed_whole_in_arrival_order(store: Store) -> None:
    backlog = [delivery(f"i:{n}", received_at=T0 + n / 1000) for n in range(2500)]
    await store.accept(backlog)
    assert (await store.queue_stats(now=T0 + 10))[0] == 2500
    claimed: list[str] = []
    for _ in range(10):
        jobs = await store.claim("w1", now=T0 + 10, lease_seconds=LEASE, limit=800)
        if not jobs:
            break
        claimed += [j.delivery_id for j in jobs]
    assert claimed == [d.delivery_id for d in backlog]  # each once, oldest first


async def test_requeuing_an_old_delivery_keeps_newer_ones_queued(store: Store) -> None:
    old = delivery("i:old", received_at=T0)
    await store.accept([old])
    job = await claim_one(store, now=T0)
    await store.fail_job(job.id, "w1", error="boom")
    newer = [delivery(f"i:{n}", received_at=T0 + n) for n in (1, 2)]
    await store.accept(newer)
    assert await store.requeue_delivery(old.delivery_id, now=T0 + 3) is True
    assert (await store.queue_stats(now=T0 + 3))[0] == 3
    jobs = await store.claim("w2", now=T0 + 5, lease_seconds=LEASE, limit=10)
    assert [j.delivery_id for j in jobs] == [newer[0].delivery_id, newer[1].delivery_id,
                                             old.delivery_id]  # by run_at
    assert all(j.attempts == 1 for j in jobs)


async def test_list_deliveries_newest_first_with_job_and_delegation(store: Store) -> None:
    old = delivery("github:acme/app#1", received_at=T0)
    new = delivery("github:acme/app#2", received_at=T0 + 1)
    await store.accept([old, new])
    created = await store.create_delegation(
        issue_key="github:acme/app#1",
        tracker="github",
        delivery_id=old.delivery_id,
        generation=1,
        now=T0,
    )
    url = "https://coder.example.com/tasks/alice/t1"
    await store.save_delegation(replace(created, state="active", task_url=url))

    records = await store.list_deliveries(limit=10)
    assert [r.delivery_id for r in records] == [new.delivery_id, old.delivery_id]
    assert (records[1].job_status, records[1].delegation_state, records[1].task_url) == (
        "queued",
        "active",
        url,
    )
    assert (records[0].delegation_state, records[0].task_url) == (None, None)
    assert len(await store.list_deliveries(limit=1)) == 1


# -- delegations ----------------------------------------------------------------------


async def test_create_delegation_is_idempotent_per_generation(store: Store) -> None:
    key = "linear:ENG-7"
    assert await store.current_delegation(key) is None
    first = await store.create_delegation(
        issue_key=key, tracker="linear", delivery_id="d1", generation=1, now=T0
    )
    assert (first.state, first.generation, first.attempts, first.created_at) == (
        "pending",
        1,
        0,
        T0,
    )
    again = await store.create_delegation(
        issue_key=key, tracker="linear", delivery_id="other", generation=1, now=T0 + 5
    )
    assert again == first
    second = await store.create_delegation(
        issue_key=key, tracker="linear", delivery_id="d2", generation=2, now=T0 + 9
    )
    assert second.id != first.id
    assert await store.current_delegation(key) == second


async def test_save_delegation_writes_every_mutable_field(store: Store) -> None:
    account = await link(store, "u-1", "alice", [Identity("github", "1")])
    created = await store.create_delegation(
        issue_key="github:acme/app#3", tracker="github", delivery_id="d", generation=1, now=T0
    )
    saved = replace(
        created,
        state="working",
        account_id=account.id,
        task_kind="tasks",
        task_id="t-1",
        task_name="gh-acme-app-3-1",
        task_url="https://coder.example.com/tasks/alice/t-1",
        comment_id="c-9",
        attempts=2,
        last_error="coder: 503",
        updated_at=T0 + 30,
        comment_sha256="ab" * 32,
        trigger_json='{"tracker":"github"}',
        acting_id="1",
        progress_json='{"started_at":1.0}',
        follow_until=1e18,
        checked="task|True|active",
    )
    await store.save_delegation(saved)
    assert await store.current_delegation("github:acme/app#3") == saved
    with pytest.raises(StoreError):
        await store.save_delegation(replace(saved, id=saved.id + 1000))


async def followed(store: Store, issue_key: str, account: Account, *, state: str = "working",
                   follow_until: float | None = 1e18, task_id: str = "t") -> Delegation:
    """A delegation of ``issue_key`` running with ``account``'s token."""
    created = await store.create_delegation(issue_key=issue_key, tracker="github",
                                            delivery_id=f"d-{issue_key}", generation=1, now=T0)
    saved = replace(created, state=state, account_id=account.id, task_kind="task",  # type: ignore[arg-type]
                    task_id=task_id, follow_until=follow_until, trigger_json="{}")
    await store.save_delegation(saved)
    return saved


async def test_delegations_are_listed_newest_first_and_counted_by_state(store: Store) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1")])
    working = await followed(store, "github:1:1", alice)
    done = await followed(store, "github:1:2", alice, state="done")
    await store.save_delegation(replace(done, updated_at=T0 + 5))
    first = await store.create_delegation(issue_key="github:1:3", tracker="github",
                                          delivery_id="x", generation=1, now=T0)
    await store.save_delegation(replace(first, state="failed"))
    newer = await store.create_delegation(issue_key="github:1:3", tracker="github",
                                          delivery_id="y", generation=2, now=T0 + 9)
    await store.save_delegation(replace(newer, state="needs_link", updated_at=T0 + 9))

    listed = await store.list_delegations(states=None, limit=10)
    assert [(d.issue_key, d.generation, user) for d, user in listed] == [
        ("github:1:3", 2, None), ("github:1:2", 1, "alice"), ("github:1:1", 1, "alice")]
    only = await store.list_delegations(states=["working", "needs_input"], limit=10)
    assert [d.id for d, _ in only] == [working.id]
    assert [d.id for d, _ in await store.list_delegations(states=None, limit=1)] == [newer.id]
    assert await store.count_delegations() == {"working": 1, "done": 1, "needs_link": 1}


async def test_status_checks_are_claimed_per_account_with_their_followed_work(
    store: Store,
) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1")])
    bob = await link(store, "u-2", "bob", [Identity("github", "2")])
    carol = await link(store, "u-3", "carol", [Identity("github", "3")])
    a1 = await followed(store, "github:1:1", alice, task_id="a1")
    a2 = await followed(store, "github:1:2", alice, state="done", follow_until=T0 + 100,
                        task_id="a2")
    await followed(store, "github:1:3", alice, state="stopped", follow_until=None)
    await followed(store, "github:1:4", bob, state="done", follow_until=T0 - 1)  # grace over
    await followed(store, "github:1:5", carol)
    await store.mark_token_invalid(carol.id, ciphertext=b"sealed")

    claimed = await store.claim_checks("w1", now=T0, lease_seconds=LEASE, limit=10)
    assert [(t.account.coder_username, [d.id for d in t.delegations], t.failures)
            for t in claimed] == [("alice", [a1.id, a2.id], 0)]
    # Leased: nobody else gets alice until the lease ends or w1 finishes.
    assert await store.claim_checks("w2", now=T0 + 1, lease_seconds=LEASE, limit=10) == []
    await store.finish_checks(alice.id, "w2", next_at=T0, failures=0)  # not w2's: no effect
    assert await store.claim_checks("w2", now=T0 + 1, lease_seconds=LEASE, limit=10) == []
    again = await store.claim_checks("w2", now=T0 + LEASE + 1, lease_seconds=LEASE, limit=10)
    assert [t.account.id for t in again] == [alice.id]
    await store.finish_checks(alice.id, "w2", next_at=T0 + 200, failures=3)
    assert await store.claim_checks("w1", now=T0 + 150, lease_seconds=LEASE, limit=10) == []
    later = await store.claim_checks("w1", now=T0 + 200, lease_seconds=LEASE, limit=10)
    # At T0 + 200 the finished turn's grace period is over: only a1 is followed.
    assert [([d.id for d in t.delegations], t.failures) for t in later] == [([a1.id], 3)]


async def test_a_check_is_queued_once_per_issue_and_runs_in_the_issues_turn(
    store: Store,
) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1")])
    d = await followed(store, "github:1:1", alice)
    await store.accept([delivery("github:1:1", delivery_id="comment-1")])
    assert await store.request_check(d, seen="fp-1", now=T0 + 1, reason="changed")
    assert not await store.request_check(d, seen="fp-2", now=T0 + 2, reason="changed")
    first = await claim_one(store, now=T0 + 3)
    assert (first.delivery_id, first.kind) == ("comment-1", "trigger")
    assert await store.claim("w2", now=T0 + 3, lease_seconds=LEASE, limit=5) == []
    await store.finish_job(first.id, "w1")
    check = await claim_one(store, now=T0 + 4)
    assert check.kind == "check" and check.issue_key == "github:1:1"
    assert check.event_json.replace(" ", "") == (
        f'{{"delegation_id":{d.id},"reason":"changed","seen":"fp-1"}}')
    # Claimed (no longer queued): the next change may queue another.
    assert await store.request_check(d, seen="fp-3", now=T0 + 5, reason="changed")
    # Checks are the bridge's own work: the delivery list shows people's deliveries only.
    assert [r.delivery_id for r in await store.list_deliveries(limit=10)] == ["comment-1"]


async def test_follow_ups_are_held_once_per_comment_and_settled(store: Store) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1")])
    d = await followed(store, "github:1:1", alice)
    assert await store.add_followup(d.id, source="c1", text="first", now=T0)
    assert await store.add_followup(d.id, source="c2", text="second", now=T0 + 1)
    assert not await store.add_followup(d.id, source="c1", text="again", now=T0 + 2)
    held = await store.queued_followups(d.id)
    assert [(f.source, f.text) for f in held] == [("c1", "first"), ("c2", "second")]
    await store.settle_followup(held[0].id, sent=True, now=T0 + 3)
    await store.settle_followup(held[1].id, sent=False, now=T0 + 3)
    assert await store.queued_followups(d.id) == []
    assert not await store.add_followup(d.id, source="c1", text="late retry", now=T0 + 4)


async def test_whether_others_may_delegate_is_kept_per_account(store: Store) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1"), Identity("linear", "l1")])
    assert not alice.allow_others
    assert await store.set_allow_others(provider="linear", external_id="l1", allow=True) == 1
    found = await store.find_account("github", "1")
    assert found is not None and found.allow_others
    assert await store.set_allow_others(coder_username="alice", allow=False) == 1
    assert not (await account_of(store, alice.id)).allow_others
    assert await store.set_allow_others(provider="github", external_id="999", allow=True) == 0
    assert await store.set_allow_others(coder_username="nobody", allow=True) == 0
    listed = await store.list_accounts()
    assert [a.allow_others for a, _ in listed] == [False]


async def test_oauth_tokens_are_replaced_only_from_the_pair_they_came_from(
    store: Store,
) -> None:
    account = await store.link_account(
        coder_user_id="u-1", coder_username="alice", key_id="k1", ciphertext=b"pair-1",
        identities=[Identity("github", "1")], token_kind="oauth", token_expires_at=T0 + 60)
    assert (account.token_kind, account.token_expires_at) == ("oauth", T0 + 60)
    await store.mark_token_invalid(account.id, ciphertext=b"pair-1")
    assert await store.replace_tokens(account.id, old_ciphertext=b"pair-1", key_id="k1",
                                      ciphertext=b"pair-2", expires_at=T0 + 90, now=T0)
    after = await account_of(store, account.id)
    assert (after.ciphertext, after.token_expires_at, after.token_status) == (
        b"pair-2", T0 + 90, "valid")
    # A second refresh from the old pair lost the race: nothing changes.
    assert not await store.replace_tokens(account.id, old_ciphertext=b"pair-1", key_id="k1",
                                          ciphertext=b"pair-3", expires_at=T0 + 99, now=T0)
    assert (await account_of(store, account.id)).ciphertext == b"pair-2"


async def test_another_identity_joins_an_account_and_keeps_its_token(store: Store) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1")])
    stray = await link(store, "u-2", "bob", [Identity("linear", "l-1")])
    await store.mark_token_invalid(alice.id, ciphertext=b"sealed")
    await store.add_identity(alice.id, Identity("linear", "l-1"), now=T0)
    joined = await store.find_account("linear", "l-1")
    assert joined is not None and joined.id == alice.id
    assert joined.token_status == "invalid"  # the token is untouched
    assert await store.get_account(stray.id) is None  # left without identities


async def test_a_sweep_is_held_by_one_owner_at_a_time(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    try:
        await first.migrate()
        assert await first.last_sweep("reconcile") is None
        assert await first.claim_sweep("reconcile", "r1", now=T0, lease=60)
        assert not await second.claim_sweep("reconcile", "r2", now=T0 + 1, lease=60)
        assert await second.claim_sweep("other", "r2", now=T0 + 1, lease=60)  # its own name
        await second.finish_sweep("reconcile", "r2", now=T0 + 2)  # not r2's: no effect
        assert not await second.claim_sweep("reconcile", "r2", now=T0 + 3, lease=60)
        await first.finish_sweep("reconcile", "r1", now=T0 + 4)
        assert await second.last_sweep("reconcile") == T0 + 4
        assert await second.claim_sweep("reconcile", "r2", now=T0 + 5, lease=60)
        # A holder that died is replaced once its lease has run out.
        assert await first.claim_sweep("reconcile", "r1", now=T0 + 66, lease=60)
    finally:
        await first.close()
        await second.close()


async def test_a_budget_is_shared_by_every_process_and_never_overspent(
    backend: Backend,
) -> None:
    stores = [await backend.open() for _ in range(3)]
    windows = [(5, 60.0), (8, 3600.0)]
    try:
        await stores[0].migrate()
        waits = await asyncio.gather(*(
            store.take_budget("github", now=T0 + i * 0.01, windows=windows)
            for i in range(4) for store in stores))
        assert sorted(waits)[:5] == [0.0] * 5 and all(w > 0 for w in sorted(waits)[5:])
        assert await stores[1].take_budget("github", now=T0 + 1, windows=windows,
                                           take=False) > 0
        assert await stores[1].take_budget("other", now=T0 + 1, windows=windows) == 0.0
        # A minute later the first window has room again, the hourly one for three more.
        later = [await stores[2].take_budget("github", now=T0 + 61 + i, windows=windows)
                 for i in range(4)]
        assert later[:3] == [0.0] * 3 and later[3] > 3000
    finally:
        for store in stores:
            await store.close()


# -- accounts --------------------------------------------------------------------------


async def link(
    store: Store,
    user_id: str,
    username: str,
    identities: list[Identity],
    *,
    key_id: str = "k1",
    ciphertext: bytes = b"sealed",
) -> Account:
    return await store.link_account(
        coder_user_id=user_id,
        coder_username=username,
        key_id=key_id,
        ciphertext=ciphertext,
        identities=identities,
    )


async def account_of(store: Store, account_id: int) -> Account:
    found = await store.get_account(account_id)
    assert found is not None
    return found


async def test_link_find_and_list_accounts(store: Store) -> None:
    bob = await link(store, "u-2", "bob", [Identity("linear", "lin-b")])
    alice = await link(
        store, "u-1", "alice", [Identity("github", "1", "alice-gh"), Identity("linear", "lin-a")]
    )
    assert (alice.coder_username, alice.token_status, alice.last_used_at) == (
        "alice",
        "valid",
        None,
    )
    assert await store.find_account("github", "1") == alice
    assert await store.find_account("linear", "lin-b") == bob
    assert await store.find_account("github", "404") is None
    assert await store.get_account(alice.id) == alice
    assert await store.get_account(alice.id + bob.id + 100) is None

    listed = await store.list_accounts()
    assert [(a.coder_username, ids) for a, ids in listed] == [
        ("alice", [Identity("github", "1", "alice-gh"), Identity("linear", "lin-a")]),
        ("bob", [Identity("linear", "lin-b")]),
    ]


async def test_relinking_replaces_the_token_and_revalidates_it(store: Store) -> None:
    first = await link(store, "u-1", "alice", [Identity("github", "1", "alice")])
    await store.mark_token_invalid(first.id, ciphertext=first.ciphertext)
    assert await account_of(store, first.id) == replace(first, token_status="invalid")
    await store.mark_token_used(first.id, now=T0)

    again = await link(
        store, "u-1", "alice2", [Identity("github", "1")], key_id="k2", ciphertext=b"new"
    )
    assert again.id == first.id
    assert (again.coder_username, again.key_id, again.ciphertext) == ("alice2", "k2", b"new")
    assert (again.token_status, again.last_used_at) == ("valid", T0)
    # An empty login keeps the stored one.
    assert (await store.list_accounts())[0][1] == [Identity("github", "1", "alice")]


async def test_identity_moves_and_an_account_left_without_identities_is_deleted(
    store: Store,
) -> None:
    old = await link(store, "u-1", "alice", [Identity("github", "1"), Identity("linear", "a")])
    new = await link(store, "u-2", "bob", [Identity("github", "1")])
    assert await store.find_account("github", "1") == new
    assert await store.find_account("linear", "a") == old

    await link(store, "u-2", "bob", [Identity("linear", "a")])
    assert await store.get_account(old.id) is None  # its last identity moved away
    assert [a.coder_username for a, _ in await store.list_accounts()] == ["bob"]


async def test_unlink_identity_or_account(store: Store) -> None:
    alice = await link(store, "u-1", "alice", [Identity("github", "1"), Identity("linear", "a")])
    await link(store, "u-2", "bob", [Identity("github", "2"), Identity("linear", "b")])

    assert await store.unlink(provider="github", external_id="404") == 0
    assert await store.unlink(provider="github", external_id="1") == 1
    assert await store.get_account(alice.id) is not None
    assert await store.unlink(provider="linear", external_id="a") == 2  # identity + account
    assert await store.get_account(alice.id) is None

    assert await store.unlink(coder_username="nobody") == 0
    assert await store.unlink(coder_username="bob") == 3  # two identities + the account
    assert await store.list_accounts() == []
    assert await store.find_account("github", "2") is None

    with pytest.raises(ValueError):
        await store.unlink(provider="github")
    with pytest.raises(ValueError):
        await store.unlink(provider="github", external_id="1", coder_username="bob")


async def test_token_status_and_last_used(store: Store) -> None:
    account = await link(store, "u-1", "alice", [Identity("github", "1")])
    await store.mark_token_used(account.id, now=T0 + 10)
    await store.mark_token_used(account.id, now=T0 + 5)  # an older report does not win
    await store.mark_token_invalid(account.id, ciphertext=account.ciphertext)
    stored = await account_of(store, account.id)
    assert (stored.token_status, stored.last_used_at) == ("invalid", T0 + 10)


async def test_a_401_on_an_old_token_leaves_a_relinked_one_valid(store: Store) -> None:
    old = await link(store, "u-1", "alice", [Identity("github", "1")], ciphertext=b"old")
    await link(store, "u-1", "alice", [Identity("github", "1")], ciphertext=b"relinked")
    await store.mark_token_invalid(old.id, ciphertext=old.ciphertext)  # the 401 came late
    stored = await account_of(store, old.id)
    assert (stored.ciphertext, stored.token_status) == (b"relinked", "valid")


async def test_replace_ciphertext_is_a_compare_and_swap_on_the_ciphertext(store: Store) -> None:
    account = await link(store, "u-1", "alice", [Identity("github", "1")], key_id="old",
                         ciphertext=b"original")
    assert not await store.replace_ciphertext(  # re-linked since it was read
        account.id, old_ciphertext=b"something else", key_id="new", ciphertext=b"x"
    )
    assert await store.replace_ciphertext(
        account.id, old_ciphertext=b"original", key_id="new", ciphertext=b"rotated"
    )
    assert not await store.replace_ciphertext(
        account.id, old_ciphertext=b"original", key_id="new", ciphertext=b"again"
    )
    stored = await store.get_account(account.id)
    assert stored is not None and (stored.key_id, stored.ciphertext) == ("new", b"rotated")


# -- concurrency --------------------------------------------------------------------


async def test_concurrent_accepts_and_claims_never_lose_or_double_claim(
    store: Store, backend: Backend
) -> None:
    ids = [f"c-{n}" for n in range(600)]
    # 50 batches of 20 with overlaps: every id is offered one to three times.
    batches = [
        [delivery(f"issue:{n % 37}", delivery_id=ids[n]) for n in offsets]
        for offsets in ([(b * 12 + k) % len(ids) for k in range(20)] for b in range(50))
    ]
    offered = {d.delivery_id for batch in batches for d in batch}
    claimed: list[str] = []
    held: set[str] = set()  # issues whose job a worker is running right now
    stop = asyncio.Event()
    replica = await backend.open()  # a second process on the same database

    async def worker(name: str, on: Store) -> None:
        clock = itertools.count(int(T0) + 1)
        while True:
            jobs = await on.claim(name, now=next(clock), lease_seconds=1e6, limit=7)
            for job in jobs:
                assert job.issue_key not in held, f"two workers on {job.issue_key}"
                held.add(job.issue_key)
                claimed.append(job.delivery_id)
            for job in jobs:
                held.discard(job.issue_key)  # before finishing: no false alarm
                await on.finish_job(job.id, name)
            if not jobs and stop.is_set():
                return

    try:
        workers = [
            asyncio.create_task(worker(f"w{i}", store if i % 2 else replica)) for i in range(4)
        ]
        results = await asyncio.gather(*(store.accept(batch) for batch in batches))
        stop.set()
        await asyncio.gather(*workers)
    finally:
        await replica.close()

    new_ids = [
        d.delivery_id
        for batch, res in zip(batches, results, strict=True)
        for d, new in zip(batch, res, strict=True)
        if new
    ]
    assert sorted(new_ids) == sorted(offered)  # each id reported new exactly once
    assert sorted(claimed) == sorted(offered)  # each job claimed exactly once
    assert await store.queue_stats(now=T0 + 1e5) == (0, 0.0)


async def test_a_cancelled_caller_leaves_the_store_consistent(store: Store) -> None:
    batch = [delivery(f"issue:{i}") for i in range(50)]
    task = asyncio.create_task(store.accept(batch))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The accept ran to completion or not at all, and the store still works.
    again = await store.accept(batch)
    assert again in ([False] * 50, [True] * 50)
    assert (await store.queue_stats(now=T0))[0] == 50


# -- SQLite specifics ------------------------------------------------------------------


def test_sqlite_urls_name_relative_and_absolute_paths() -> None:
    assert sqlite_path("sqlite:///./data/bridge.db") == "./data/bridge.db"
    assert sqlite_path("sqlite:///data/bridge.db") == "data/bridge.db"
    assert sqlite_path("sqlite:////var/lib/bridge.db") == "/var/lib/bridge.db"
    for bad in ("sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro"):
        with pytest.raises(StoreError):
            sqlite_path(bad)


async def test_unknown_url_scheme_is_refused_without_echoing_the_url() -> None:
    with pytest.raises(StoreError) as caught:
        await open_store("mysql://root:hunter2@db/bridge")
    assert "hunter2" not in str(caught.value) and "mysql" in str(caught.value)


async def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    opened = await SQLiteStore.open(tmp_path / "nested" / "dir" / "x.db")
    await opened.migrate()
    await opened.close()
    raw = sqlite3.connect(tmp_path / "nested" / "dir" / "x.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        assert {"deliveries", "jobs", "accounts", "identities", "delegations"} <= tables
    finally:
        raw.close()


async def test_upgrading_sqlite_from_jobs_made_at_claim_runs_each_delivery_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Version 3 made a delivery's job at the next claim; version 4 makes it with the
    # delivery again. Deliveries stored on either side run exactly once.
    import service.store.sqlite as sqlite_module

    older = [m for m in load_migrations("sqlite") if m.version <= 3]
    monkeypatch.setattr(sqlite_module, "load_migrations", lambda dialect: older)
    store = await SQLiteStore.open(tmp_path / "bridge.db")
    try:
        assert await store.migrate() == [1, 2, 3]
    finally:
        await store.close()
    raw = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    for n in range(3):  # as version 3 stored them: no job yet
        raw.execute("INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, "
                    "received_at) VALUES ('github', ?, ?, '{}', ?)", (f"old-{n}", f"i:{n}", T0 + n))
    raw.execute("INSERT INTO jobs (delivery_ref, issue_key, status, run_at, created_at, "
                "updated_at) VALUES (1, 'i:0', 'done', ?, ?, ?)", (T0, T0, T0))  # ran already
    raw.close()
    monkeypatch.undo()
    store = await SQLiteStore.open(tmp_path / "bridge.db")
    try:
        assert await store.migrate() == [m.version for m in load_migrations("sqlite")
                                         if m.version > 3]
        after = [delivery(f"i:{n}", delivery_id=f"new-{n}", received_at=T0 + n) for n in (3, 4)]
        await store.accept(after)
        assert await store.queue_stats(now=T0 + 9) == (4, 8.0)
        jobs = await store.claim("w1", now=T0 + 9, lease_seconds=LEASE, limit=10)
        assert [j.delivery_id for j in jobs] == ["old-1", "old-2", "new-3", "new-4"]
        assert await store.claim("w2", now=T0 + 9, lease_seconds=LEASE, limit=10) == []
    finally:
        await store.close()
    raw = sqlite3.connect(tmp_path / "bridge.db")
    try:
        per_delivery = raw.execute("SELECT count(*) FROM jobs GROUP BY delivery_ref").fetchall()
        assert per_delivery == [(1,)] * 5  # one job each
    finally:
        raw.close()


async def test_a_new_sqlite_database_is_private_to_the_bridges_user(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "data" / "bridge.db"
    opened = await SQLiteStore.open(path)
    try:
        await opened.migrate()
        await opened.accept([delivery()])
    finally:
        await opened.close()
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for file in path.parent.iterdir():  # the database and its -wal / -shm files
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name


def test_split_statements_keeps_trigger_bodies_and_strings_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        INSERT INTO t VALUES ('c'); DELETE FROM t WHERE x = 'd';
    END;
    /* trailing; comment */
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(StoreError):
        split_statements("CREATE TABLE t (x)")
