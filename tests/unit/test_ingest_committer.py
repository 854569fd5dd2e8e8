"""The ingest writers: ``ThreadedCommitter`` (its thread, batching, failures, stop)
and ``committer_for`` with real SQLite stores."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from service.errors import StoreError
from service.store import open_store, sqlite_writer
from service.store.base import NewDelivery
from service.store.sqlite import SQLiteStore
from service.web.ingest import GroupCommitter, ThreadedCommitter, committer_for
from tests.conftest import eventually


def delivery(number: int) -> NewDelivery:
    return NewDelivery(tracker="github", delivery_id=f"d-{number}",
                       issue_key=f"github:acme/app#{number}", event_json="{}",
                       received_at=1_700_000_000.0)


class RecordingWriter:
    """A ``BatchWriter`` that records its batches; ``gate`` holds ``accept`` until set,
    ``fail`` decides per batch what to raise (None: store it)."""

    def __init__(self, fail: Callable[[int], BaseException | None] = lambda _: None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail
        self.closed = False
        self._seen: set[str] = set()

    def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.gate.wait(10)
        error = self.fail(len(self.batches))
        self.batches.append([d.delivery_id for d in deliveries])
        if error is not None:
            raise error
        answers = [d.delivery_id not in self._seen for d in deliveries]
        self._seen.update(d.delivery_id for d in deliveries)
        return answers

    def close(self) -> None:
        self.closed = True


async def test_submitters_are_answered_after_their_batch_is_stored_in_the_writer_thread() -> None:
    writer = RecordingWriter()
    commits: list[int] = []
    committer = ThreadedCommitter(writer, on_commit=lambda: commits.append(1))
    committer.start()
    writer.gate.clear()
    first = asyncio.ensure_future(committer.submit(delivery(1)))
    await eventually(writer.entered.is_set, "the writer to take batch 1")  # and hold it
    later = [asyncio.ensure_future(committer.submit(delivery(n))) for n in (2, 3, 4)]
    await asyncio.sleep(0.05)
    assert not first.done() and not any(f.done() for f in later)  # nobody answered early
    writer.gate.set()
    assert await first is True
    assert await asyncio.gather(*later) == [True, True, True]
    assert writer.batches == [["d-1"], ["d-2", "d-3", "d-4"]]  # the rest shared one commit
    assert writer.threads == {"ingest-writer"}
    assert commits == [1, 1]
    await committer.stop()


async def test_a_duplicate_is_answered_false_and_does_not_wake_the_worker() -> None:
    writer = RecordingWriter()
    commits: list[int] = []
    committer = ThreadedCommitter(writer, on_commit=lambda: commits.append(1))
    committer.start()
    assert await committer.submit(delivery(1)) is True
    assert await committer.submit(delivery(1)) is False
    assert commits == [1]
    await committer.stop()


async def test_batches_never_exceed_max_batch() -> None:
    writer = RecordingWriter()
    committer = ThreadedCommitter(writer, max_batch=3)
    committer.start()
    writer.gate.clear()
    first = asyncio.ensure_future(committer.submit(delivery(0)))
    await eventually(writer.entered.is_set, "the writer to take a batch")
    rest = [asyncio.ensure_future(committer.submit(delivery(n))) for n in range(1, 8)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(batch) for batch in writer.batches] == [1, 3, 3, 1]
    await committer.stop()


@pytest.mark.parametrize("error", [StoreError("SQLite: disk I/O error"),
                                   ValueError("a bug in the writer")])
async def test_a_failed_batch_fails_its_submitters_and_the_next_batch_still_commits(
    error: Exception,
) -> None:
    writer = RecordingWriter(fail=lambda batch: error if batch == 0 else None)
    committer = ThreadedCommitter(writer)
    committer.start()
    with structlog.testing.capture_logs() as logs, pytest.raises(StoreError) as raised:
        await committer.submit(delivery(1))
    assert str(error) in str(raised.value)
    assert [e["event"] for e in logs] == ["delivery_batch_not_stored"]
    assert await committer.submit(delivery(2)) is True  # the thread lives on
    await committer.stop()


async def test_stop_commits_everything_submitted_then_refuses_and_closes_the_writer() -> None:
    writer = RecordingWriter()
    committer = ThreadedCommitter(writer)
    assert not committer.running
    committer.start()
    assert committer.running
    writer.gate.clear()
    pending = [asyncio.ensure_future(committer.submit(delivery(n))) for n in range(5)]
    await eventually(writer.entered.is_set, "the writer to take a batch")
    stopping = asyncio.ensure_future(committer.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()
    writer.gate.set()
    await stopping
    assert await asyncio.gather(*pending) == [True] * 5
    assert writer.closed and not committer.running
    with pytest.raises(StoreError):
        await committer.submit(delivery(9))
    await committer.stop()  # twice is a no-op


async def test_stop_before_start_closes_the_writer() -> None:
    writer = RecordingWriter()
    await ThreadedCommitter(writer).stop()
    assert writer.closed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_writer_thread_fails_waiting_and_later_deliveries() -> None:
    writer = RecordingWriter(fail=lambda batch: SystemExit() if batch == 0 else None)
    committer = ThreadedCommitter(writer)
    committer.start()
    writer.gate.clear()
    in_flight = asyncio.ensure_future(committer.submit(delivery(1)))
    await eventually(writer.entered.is_set, "the writer to take a batch")
    queued = asyncio.ensure_future(committer.submit(delivery(2)))
    with capture_logs() as logs:
        writer.gate.set()
        for waiting in (in_flight, queued):
            with pytest.raises(StoreError):
                await waiting
        await eventually(lambda: writer.closed, "the writer to be closed")
        with pytest.raises(StoreError):
            await committer.submit(delivery(3))
    assert "ingest_writer_stopped" in [e["event"] for e in logs]
    assert writer.batches == [["d-1"]]
    assert not committer.running
    await committer.stop()
    await eventually(lambda: "ingest-writer" not in {t.name for t in threading.enumerate()},
                     "the writer thread to end")  # its exception is reported in this test


async def test_committer_for_an_sqlite_file_writes_through_its_own_connection(
    tmp_path: Path,
) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await store.migrate()
    committer = committer_for(store)
    assert isinstance(committer, ThreadedCommitter)
    committer.start()
    try:
        ids = [delivery(n % 40) for n in range(100)]  # 60 of them repeat an earlier id
        answers = await asyncio.gather(*(committer.submit(d) for d in ids))
    finally:
        await committer.stop()
    assert answers.count(True) == 40
    records = await store.list_deliveries(limit=1000)
    assert sorted(r.delivery_id for r in records) == sorted(f"d-{n}" for n in range(40))
    assert (await store.queue_stats(now=2e9))[0] == 40  # one job per new delivery
    await store.close()


async def test_committer_for_in_memory_sqlite_stays_on_the_event_loop() -> None:
    store = await open_store("sqlite:///:memory:")
    await store.migrate()
    committer = committer_for(store)
    assert isinstance(committer, GroupCommitter)  # a second connection: another database
    committer.start()
    assert await committer.submit(delivery(1)) is True
    await committer.stop()
    await store.close()


async def test_the_batch_writer_waits_briefly_for_a_write_lock_held_elsewhere(
    tmp_path: Path,
) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await store.migrate()
    assert isinstance(store, SQLiteStore)
    writer = store.open_batch_writer()
    assert writer is not None
    other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. the worker's claim, on the store's connection
    threading.Timer(0.05, other.rollback).start()
    started = time.monotonic()
    assert await asyncio.to_thread(writer.accept, [delivery(1)]) == [True]
    waited = time.monotonic() - started
    assert 0.04 < waited < 1.0  # it waited for the lock, and took it once released
    writer.close()
    other.close()
    await store.close()


async def test_the_batch_writer_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_writer, "BUSY_TIMEOUT_MS", 100)
    store = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await store.migrate()
    assert isinstance(store, SQLiteStore)
    writer = store.open_batch_writer()
    assert writer is not None
    other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="locked"):
        await asyncio.to_thread(writer.accept, [delivery(1)])
    other.rollback()
    assert await asyncio.to_thread(writer.accept, [delivery(1)]) == [True]  # nothing half-done
    writer.close()
    other.close()
    await store.close()


async def opened_writer(tmp_path: Path) -> tuple[SQLiteStore, sqlite_writer.SQLiteBatchWriter]:
    store = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await store.migrate()
    assert isinstance(store, SQLiteStore)
    writer = store.open_batch_writer()
    assert isinstance(writer, sqlite_writer.SQLiteBatchWriter)
    return store, writer


async def test_a_batch_of_new_deliveries_is_one_statement_in_its_own_transaction(
    tmp_path: Path,
) -> None:
    store, writer = await opened_writer(tmp_path)
    statements: list[str] = []
    writer._conn.set_trace_callback(statements.append)  # also once per trigger run
    assert writer.accept([delivery(n) for n in range(5)]) == [True] * 5
    assert len(set(statements)) == 1  # no BEGIN, no COMMIT, no second query
    assert statements[0].startswith("INSERT INTO deliveries")
    writer.close()
    assert (await store.queue_stats(now=2e9))[0] == 5  # committed, one job each
    await store.close()


async def test_redeliveries_in_a_batch_are_told_apart_from_the_rows_it_added(
    tmp_path: Path,
) -> None:
    store, writer = await opened_writer(tmp_path)
    assert writer.accept([delivery(1), delivery(3)]) == [True, True]
    # A finished extra job: job ids no longer match delivery ids, so the lookup must
    # use the deliveries' last rowid, not the trigger's.
    writer._conn.execute("INSERT INTO jobs (delivery_ref, issue_key, status, run_at, created_at,"
                         " updated_at) VALUES (1, 'github:acme/app#1', 'done', 0, 0, 0)")
    batch = [delivery(2), delivery(1), delivery(4), delivery(2), delivery(3), delivery(5)]
    assert writer.accept(batch) == [True, False, True, False, False, True]
    assert writer.accept([delivery(4), delivery(5)]) == [False, False]
    writer.close()
    records = await store.list_deliveries(limit=100)
    assert sorted(r.delivery_id for r in records) == [f"d-{n}" for n in range(1, 6)]
    assert (await store.queue_stats(now=2e9))[0] == 5
    await store.close()


async def test_rows_the_statement_added_that_cannot_be_found_are_logged_never_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, writer = await opened_writer(tmp_path)
    assert writer.accept([delivery(1)]) == [True]
    # As if the rowids of one statement were not consecutive: the lookup finds one of two.
    monkeypatch.setattr(sqlite_writer, "_ADDED_BY_STATEMENT",
                        sqlite_writer._ADDED_BY_STATEMENT + " LIMIT 1")
    with capture_logs() as logs:
        answers = writer.accept([delivery(1), delivery(2), delivery(3)])
    assert answers[0] is False and answers[1:].count(True) == 1
    assert [entry["event"] for entry in logs] == ["delivery_batch_rowids_not_consecutive"]
    writer.close()
    assert (await store.queue_stats(now=2e9))[0] == 3  # every new delivery is stored and queued
    await store.close()
