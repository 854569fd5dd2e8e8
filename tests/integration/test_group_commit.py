"""The group commit on a real SQLite file: answers only after the commit, batches share
commits, a failed transaction fails only its batch, and stop commits what it was given."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from service.errors import StoreError
from service.store import open_store
from service.store.base import NewDelivery
from service.store.sqlite import SQLiteStore
from service.web.ingest import GroupCommitter


def delivery(number: int) -> NewDelivery:
    return NewDelivery(tracker="github", delivery_id=f"d-{number}",
                       issue_key=f"github:acme/app#{number}", event_json="{}",
                       received_at=1_700_000_000.0,
                       body_sha256=hashlib.sha256(b"body %d" % number).hexdigest())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await opened.migrate()
    assert isinstance(opened, SQLiteStore)
    yield opened
    await opened.close()


async def started(store: SQLiteStore, **options: object) -> GroupCommitter:
    committer = GroupCommitter(store, **options)  # type: ignore[arg-type]
    await committer.start()
    return committer


def lock_database(tmp_path: Path) -> sqlite3.Connection:
    """Another connection holding the write lock, as another process might."""
    other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


async def stored_ids(store: SQLiteStore) -> list[str]:
    return sorted(r.delivery_id for r in await store.list_deliveries(limit=1000))


async def claimed_ids(store: SQLiteStore) -> list[str]:
    """Every job a worker can claim now (the test deliveries are of distinct issues)."""
    jobs = await store.claim("test", now=2e9, lease_seconds=30, limit=1000)
    return sorted(job.delivery_id for job in jobs)


async def test_submitters_are_answered_only_after_the_commit(
    store: SQLiteStore, tmp_path: Path,
) -> None:
    commits: list[int] = []
    committer = await started(store, on_commit=lambda: commits.append(1))
    other = lock_database(tmp_path)
    first = asyncio.ensure_future(committer.submit(delivery(1)))
    later = [asyncio.ensure_future(committer.submit(delivery(n))) for n in (2, 3, 1)]
    await asyncio.sleep(0.2)
    assert not first.done() and not any(f.done() for f in later)  # nobody answered early
    other.rollback()
    other.close()
    assert await first is True
    assert await asyncio.gather(*later) == [True, True, False]  # the first of a batch wins
    assert await stored_ids(store) == ["d-1", "d-2", "d-3"]
    assert await claimed_ids(store) == ["d-1", "d-2", "d-3"]  # one job per new delivery
    assert commits == [1]  # one batch, and it stored something new
    assert await committer.submit(delivery(2)) is False
    assert commits == [1]  # a duplicate does not wake the worker
    await committer.stop()


async def test_many_concurrent_deliveries_share_commits_and_each_gets_its_answer(
    store: SQLiteStore,
) -> None:
    batches: list[int] = []
    accept = store.accept

    async def counting(deliveries: list[NewDelivery]) -> list[bool]:
        batches.append(len(deliveries))
        return await accept(deliveries)

    store.accept = counting  # type: ignore[method-assign]
    committer = await started(store)
    ids = [delivery(n % 400) for n in range(1000)]  # 600 of them repeat an earlier id
    answers = await asyncio.gather(*(committer.submit(d) for d in ids))
    assert answers == [True] * 400 + [False] * 600
    assert await stored_ids(store) == sorted(f"d-{n}" for n in range(400))
    assert len(batches) < 10 and max(batches) <= committer.max_batch  # shared commits
    await committer.stop()


async def test_a_failed_transaction_fails_its_submitters_and_the_next_one_commits(
    store: SQLiteStore, tmp_path: Path,
) -> None:
    committer = await started(store)
    other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    other.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
    with capture_logs() as logs, pytest.raises(StoreError, match="no such table"):
        await committer.submit(delivery(1))
    assert [e["event"] for e in logs] == ["delivery_batch_not_stored"]
    other.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
    other.close()
    assert committer.running  # the writer lives on
    assert await committer.submit(delivery(2)) is True
    assert await stored_ids(store) == ["d-2"]
    await committer.stop()


async def test_stop_commits_everything_submitted_and_refuses_more(
    store: SQLiteStore, tmp_path: Path,
) -> None:
    committer = GroupCommitter(store)
    assert not committer.running
    await committer.start()
    assert committer.running
    other = lock_database(tmp_path)
    pending = [asyncio.ensure_future(committer.submit(delivery(n))) for n in range(5)]
    await asyncio.sleep(0)  # submitted
    stopping = asyncio.ensure_future(committer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # it waits for the commit
    other.rollback()
    other.close()
    await stopping
    assert await asyncio.gather(*pending) == [True] * 5
    assert not committer.running
    with pytest.raises(StoreError):
        await committer.submit(delivery(9))
    await committer.stop()  # twice is a no-op
    assert await stored_ids(store) == [f"d-{n}" for n in range(5)]
