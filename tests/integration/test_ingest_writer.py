"""The ingest writer: ``ProcessCommitter`` with its real writer process on real SQLite
files, ``SQLiteBatchWriter`` itself, and ``committer_for``."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs

from service import metrics
from service.errors import StoreError
from service.store import open_store, sqlite_writer
from service.store.base import NewDelivery
from service.store.sqlite import SQLiteStore
from service.store.sqlite_writer import SQLiteBatchWriter
from service.store.writer_protocol import Anomaly, Stored, encode
from service.web import ingest
from service.web.ingest import (
    GroupCommitter,
    ProcessCommitter,
    _WriterConnection,
    committer_for,
    writer_environment,
)
from tests.conftest import eventually

REPO = str(Path(__file__).resolve().parents[2])


def delivery(number: int) -> NewDelivery:
    return NewDelivery(tracker="github", delivery_id=f"d-{number}",
                       issue_key=f"github:acme/app#{number}", event_json="{}",
                       received_at=1_700_000_000.0)


async def migrated(tmp_path: Path) -> SQLiteStore:
    store = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await store.migrate()
    assert isinstance(store, SQLiteStore)
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await migrated(tmp_path)
    yield opened
    await opened.close()


def database_of(store: SQLiteStore) -> str:
    path = store.ingest_database()
    assert path is not None
    return path


async def started(store: SQLiteStore, **options: Any) -> ProcessCommitter:
    """A ProcessCommitter for ``store``'s file, its writer ready."""
    committer = ProcessCommitter(database_of(store), **options)
    await committer.start()
    return committer


@pytest.fixture
async def committer(store: SQLiteStore) -> AsyncIterator[ProcessCommitter]:
    running = await started(store, restart_delays=(0.05,))
    yield running
    await running.stop()


def lock_database(store: SQLiteStore) -> sqlite3.Connection:
    """Another connection holding the write lock, as the worker's claim would."""
    other = sqlite3.connect(database_of(store), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


async def stored_ids(store: SQLiteStore) -> list[str]:
    return sorted(r.delivery_id for r in await store.list_deliveries(limit=1000))


async def claimed_ids(store: SQLiteStore) -> list[str]:
    """Every job a worker can claim now (the test deliveries are of distinct issues)."""
    jobs = await store.claim("test", now=2e9, lease_seconds=30, limit=1000)
    return sorted(job.delivery_id for job in jobs)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- ProcessCommitter ------------------------------------------------------------------
async def test_submitters_are_answered_after_the_writer_process_has_committed(
    store: SQLiteStore,
) -> None:
    commits: list[int] = []
    committer = await started(store, on_commit=lambda: commits.append(1))
    assert committer.writer_pid not in (None, os.getpid())
    other = lock_database(store)
    first = asyncio.ensure_future(committer.submit(delivery(1)))
    later = [asyncio.ensure_future(committer.submit(delivery(n))) for n in (2, 3, 1)]
    await asyncio.sleep(0.2)
    assert not first.done() and not any(f.done() for f in later)  # nobody answered early
    other.rollback()
    assert await first is True
    assert await asyncio.gather(*later) == [True, True, False]  # the first of a batch wins
    assert await stored_ids(store) == ["d-1", "d-2", "d-3"]
    assert await claimed_ids(store) == ["d-1", "d-2", "d-3"]  # one job per new delivery
    assert commits == [1]  # one batch, and it stored something new
    assert await committer.submit(delivery(2)) is False
    assert commits == [1]  # a duplicate does not wake the worker
    other.close()
    await committer.stop()


async def test_many_concurrent_deliveries_share_commits_and_each_gets_its_answer(
    store: SQLiteStore, committer: ProcessCommitter,
) -> None:
    ids = [delivery(n % 400) for n in range(1000)]  # 600 of them repeat an earlier id
    answers = await asyncio.gather(*(committer.submit(d) for d in ids))
    assert answers == [True] * 400 + [False] * 600
    assert await stored_ids(store) == sorted(f"d-{n}" for n in range(400))


async def test_a_failed_transaction_fails_its_submitters_and_the_next_one_commits(
    store: SQLiteStore, committer: ProcessCommitter,
) -> None:
    other = sqlite3.connect(database_of(store), isolation_level=None)
    other.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
    with capture_logs() as logs, pytest.raises(StoreError, match="no such table"):
        await committer.submit(delivery(1))
    assert [e["event"] for e in logs] == ["delivery_batch_not_stored"]
    other.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
    other.close()
    assert committer.running  # the writer lives on
    assert await committer.submit(delivery(2)) is True
    assert await stored_ids(store) == ["d-2"]


async def test_stop_commits_everything_submitted_then_the_writer_exits(
    store: SQLiteStore,
) -> None:
    committer = ProcessCommitter(database_of(store))
    assert not committer.running
    await committer.start()
    assert committer.running
    pid = committer.writer_pid
    assert pid is not None
    other = lock_database(store)
    pending = [asyncio.ensure_future(committer.submit(delivery(n))) for n in range(5)]
    await asyncio.sleep(0)  # submitted: queued for this loop iteration's batch
    stopping = asyncio.ensure_future(committer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # it waits for the commit
    other.rollback()
    other.close()
    await stopping
    assert await asyncio.gather(*pending) == [True] * 5
    assert not committer.running and not process_exists(pid)
    with pytest.raises(StoreError):
        await committer.submit(delivery(9))
    await committer.stop()  # twice is a no-op
    assert await stored_ids(store) == [f"d-{n}" for n in range(5)]


def record_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of deliveries of each frame sent to a writer from now on."""
    sizes: list[int] = []
    send = _WriterConnection.send

    def recording(self: _WriterConnection, frame: bytes,
                  futures: list[asyncio.Future[bool]]) -> None:
        sizes.append(len(futures))
        send(self, frame, futures)

    monkeypatch.setattr(_WriterConnection, "send", recording)
    return sizes


async def test_a_loop_iteration_sends_frames_of_max_batch_deliveries_at_most(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    committer = await started(store, max_batch=3)
    frames = record_frames(monkeypatch)
    try:
        answers = await asyncio.gather(*(committer.submit(delivery(n)) for n in range(8)))
    finally:
        await committer.stop()
    assert answers == [True] * 8
    assert frames == [3, 3, 2]
    assert await stored_ids(store) == [f"d-{n}" for n in range(8)]


async def test_frames_stay_under_the_writers_limit_and_a_delivery_over_it_fails_alone(
    store: SQLiteStore, committer: ProcessCommitter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "MAX_FRAME_BYTES", 4000)  # the writer's own stays larger
    frames = record_frames(monkeypatch)

    def sized(number: int, size: int) -> NewDelivery:
        return replace(delivery(number), event_json='"' + "x" * size + '"')

    batch = [sized(1, 1500), sized(2, 1500), sized(3, 6000), sized(4, 1500), sized(5, 10)]
    with capture_logs() as logs:
        answers = await asyncio.gather(*(committer.submit(d) for d in batch),
                                       return_exceptions=True)
    assert answers[:2] == [True, True] and answers[3:] == [True, True]
    assert isinstance(answers[2], StoreError) and "4000 at most" in str(answers[2])
    assert "delivery_too_large_to_store" in [e["event"] for e in logs]
    assert sum(frames) == 4 and max(frames) <= 2  # split into frames under the limit
    assert await stored_ids(store) == ["d-1", "d-2", "d-4", "d-5"]


async def test_a_batch_that_cannot_be_encoded_fails_and_the_next_is_answered_in_step(
    store: SQLiteStore, committer: ProcessCommitter,
) -> None:
    broken = replace(delivery(1), event_json="\ud800")  # a lone surrogate: no UTF-8 for it
    with capture_logs() as logs, pytest.raises(StoreError, match="could not be sent"):
        await committer.submit(broken)
    assert "delivery_batch_not_sent" in [e["event"] for e in logs]
    assert await committer.submit(delivery(2)) is True  # its own answer, not a stale one
    assert await committer.submit(delivery(2)) is False
    assert await stored_ids(store) == ["d-2"]


async def test_every_batch_in_flight_fails_when_the_writer_dies(
    store: SQLiteStore, committer: ProcessCommitter,
) -> None:
    pid = committer.writer_pid
    assert pid is not None
    other = lock_database(store)
    first = asyncio.ensure_future(committer.submit(delivery(1)))
    await asyncio.sleep(0.1)  # the writer has taken it and waits for the lock
    second = asyncio.ensure_future(committer.submit(delivery(2)))  # a frame of its own
    await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    for in_flight in (first, second):
        with pytest.raises(StoreError, match="ingest writer stopped"):
            await in_flight
    other.rollback()
    other.close()
    await eventually(lambda: committer.running, "a new writer")
    assert await committer.submit(delivery(3)) is True
    assert await stored_ids(store) == ["d-3"]


async def test_stop_while_a_new_writer_is_awaited_leaves_no_process(
    store: SQLiteStore,
) -> None:
    committer = await started(store, restart_delays=(30.0,))
    pid = committer.writer_pid
    assert pid is not None
    with capture_logs():
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: not committer.running, "the writer's death to be seen")
        stopping = time.monotonic()
        await committer.stop()  # during the 30 s pause before a new writer
    assert time.monotonic() - stopping < 5
    assert not process_exists(pid)
    with pytest.raises(StoreError):
        await committer.submit(delivery(1))


async def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    committer = ProcessCommitter(str(tmp_path / "never.db"))
    await committer.stop()
    with pytest.raises(StoreError):
        await committer.submit(delivery(1))


async def test_a_killed_writer_fails_what_it_held_and_a_new_one_takes_over(
    store: SQLiteStore, committer: ProcessCommitter,
) -> None:
    assert await committer.submit(delivery(1)) is True
    pid = committer.writer_pid
    assert pid is not None
    exits = metrics.REGISTRY.get_sample_value("coder_bridge_ingest_writer_exits_total")
    other = lock_database(store)  # the writer waits for the lock inside its transaction
    in_flight = asyncio.ensure_future(committer.submit(delivery(2)))
    await asyncio.sleep(0.1)
    with capture_logs() as logs:
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(StoreError, match="ingest writer stopped"):
            await in_flight
        assert not committer.running  # readiness names `ingest` meanwhile
        with pytest.raises(StoreError):
            await committer.submit(delivery(3))
        other.rollback()
        other.close()
        await eventually(lambda: committer.running, "a new writer")
    events = [e["event"] for e in logs]
    assert events[:1] == ["ingest_writer_stopped"] and "ingest_writer_restarted" in events
    assert metrics.REGISTRY.get_sample_value(
        "coder_bridge_ingest_writer_exits_total") == (exits or 0) + 1
    assert committer.writer_pid not in (None, pid)
    assert await committer.submit(delivery(2)) is True  # it was not stored before
    assert await stored_ids(store) == ["d-1", "d-2"]


async def test_a_new_writer_is_tried_again_until_it_can_start(
    store: SQLiteStore, committer: ProcessCommitter, tmp_path: Path,
) -> None:
    pid = committer.writer_pid
    assert pid is not None
    (tmp_path / "bridge.db").rename(tmp_path / "away.db")  # a new writer cannot open it
    with capture_logs() as logs:
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: [e["event"] for e in logs].count("ingest_writer_not_started")
                         >= 2, "two failed starts")
        assert not committer.running
        (tmp_path / "away.db").rename(tmp_path / "bridge.db")
        await eventually(lambda: committer.running, "a new writer")
    assert "unable to open" in next(e["error"] for e in logs
                                    if e["event"] == "ingest_writer_not_started")
    assert await committer.submit(delivery(1)) is True
    assert await stored_ids(store) == ["d-1"]


async def test_a_writer_never_creates_a_database_that_is_missing(tmp_path: Path) -> None:
    committer = ProcessCommitter(str(tmp_path / "missing.db"))
    with pytest.raises(StoreError, match="ingest writer did not start"):
        await committer.start()
    assert not (tmp_path / "missing.db").exists()


async def test_a_writer_that_cannot_open_the_database_fails_start(tmp_path: Path) -> None:
    not_a_database = tmp_path / "bridge.db"
    not_a_database.write_bytes(b"this is not an SQLite file, it is much longer than its header")
    committer = ProcessCommitter(str(not_a_database))
    with pytest.raises(StoreError, match=r"ingest writer did not start: .*not a database"):
        await committer.start()
    assert not committer.running


async def test_the_writer_process_sees_no_secret_of_the_bridges_environment(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert writer_environment({"GITHUB_TOKEN": "ghp_x", "CODER_BRIDGE_KEY": "k", "PATH": "/bin",
                               "PYTHONPATH": "/x", "LC_ALL": "C"}) == {
        "PATH": "/bin", "LC_ALL": "C",
        "PYTHONPATH": os.pathsep.join([REPO, "/x"])}
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "s3cret" * 8)
    monkeypatch.setenv("CODER_BRIDGE_KEY", "a-key-that-must-stay-in-the-bridge")
    committer = await started(store)
    try:
        with open(f"/proc/{committer.writer_pid}/environ", "rb") as handle:  # noqa: ASYNC230
            environ = handle.read()
        with open(f"/proc/{committer.writer_pid}/cmdline", "rb") as handle:  # noqa: ASYNC230
            cmdline = handle.read()
    finally:
        await committer.stop()
    for secret in (b"s3cret", b"a-key-that-must-stay"):
        assert secret not in environ and secret not in cmdline
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert names <= {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH"} | {
        name for name in names if name.startswith(("PYTHON", "LC_"))}
    assert "PYTHONPATH" in names


PARENT = """
import asyncio, sys
from service.web.ingest import ProcessCommitter
async def main():
    committer = ProcessCommitter(sys.argv[1])
    await committer.start()
    print("writer-pid", committer.writer_pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_the_writer_exits_when_the_bridge_is_killed(store: SQLiteStore) -> None:
    parent = subprocess.Popen(  # noqa: ASYNC220 - it must be killable on its own
        [sys.executable, "-c", PARENT, database_of(store)], stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO}, text=True)
    try:
        assert parent.stdout is not None
        line = ""
        while not line.startswith("writer-pid "):  # structlog writes to stdout as well
            line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 30)
            assert line, "the bridge exited before it started its writer"
        writer = int(line.split()[1])
        assert process_exists(writer)
        parent.kill()  # SIGKILL: no clean-up of any kind
        parent.wait(10)
        await eventually(lambda: not process_exists(writer), "the orphaned writer to exit")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_writer_connection_logs_anomalies_and_answers_the_oldest_batch() -> None:
    async def scenario() -> None:
        connection = _WriterConnection(on_commit=None)
        connection.ready.set_result(1)
        loop = asyncio.get_running_loop()
        first: list[asyncio.Future[bool]] = [loop.create_future(), loop.create_future()]
        second: list[asyncio.Future[bool]] = [loop.create_future()]
        connection.in_flight.extend([first, second])
        anomaly = Anomaly("delivery_batch_rowids_not_consecutive", {"inserted": 2, "found": 1})
        with capture_logs() as logs:
            connection.data_received(encode(Stored([True, False], [anomaly])))
        assert [f.result() for f in first] == [True, False] and not second[0].done()
        assert logs[0]["event"] == "delivery_batch_rowids_not_consecutive"
        assert (logs[0]["inserted"], logs[0]["found"], logs[0]["log_level"]) == (2, 1, "error")

    asyncio.run(scenario())


# -- committer_for ---------------------------------------------------------------------
async def test_committer_for_an_sqlite_file_is_a_writer_process(store: SQLiteStore) -> None:
    committer = committer_for(store)
    assert isinstance(committer, ProcessCommitter)
    await committer.start()
    try:
        assert await committer.submit(delivery(1)) is True
    finally:
        await committer.stop()
    assert await stored_ids(store) == ["d-1"]


async def test_committer_for_in_memory_sqlite_stays_on_the_event_loop() -> None:
    store = await open_store("sqlite:///:memory:")
    await store.migrate()
    committer = committer_for(store)
    assert isinstance(committer, GroupCommitter)  # a second connection: another database
    await committer.start()
    assert await committer.submit(delivery(1)) is True
    await committer.stop()
    await store.close()


# -- SQLiteBatchWriter -----------------------------------------------------------------
Reported = list[tuple[str, Mapping[str, int]]]


def open_writer(store: SQLiteStore, reported: Reported | None = None) -> SQLiteBatchWriter:
    return SQLiteBatchWriter(database_of(store), report=None if reported is None else
                             lambda event, figures: reported.append((event, figures)))


async def in_thread(call: Callable[[], list[bool]]) -> list[bool]:
    return await asyncio.to_thread(call)


async def test_the_batch_writer_waits_briefly_for_a_write_lock_held_elsewhere(
    store: SQLiteStore,
) -> None:
    writer = open_writer(store)
    other = lock_database(store)
    threading.Timer(0.05, other.rollback).start()
    started = time.monotonic()
    assert await in_thread(lambda: writer.accept([delivery(1)])) == [True]
    waited = time.monotonic() - started
    assert 0.04 < waited < 1.0  # it waited for the lock, and took it once released
    writer.close()
    other.close()


async def test_the_batch_writer_gives_up_after_the_busy_timeout(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_writer, "BUSY_TIMEOUT_MS", 100)
    writer = open_writer(store)
    other = lock_database(store)
    with pytest.raises(StoreError, match="locked"):
        await in_thread(lambda: writer.accept([delivery(1)]))
    other.rollback()
    assert writer.accept([delivery(1)]) == [True]  # nothing half-done
    writer.close()
    other.close()


async def test_a_batch_of_new_deliveries_is_one_statement_in_its_own_transaction(
    store: SQLiteStore,
) -> None:
    writer = open_writer(store)
    statements: list[str] = []
    writer._conn.set_trace_callback(statements.append)
    assert writer.accept([delivery(n) for n in range(5)]) == [True] * 5
    assert len(set(statements)) == 1  # no BEGIN, no COMMIT, no second query
    assert statements[0].startswith("INSERT INTO deliveries")
    writer.close()
    assert await claimed_ids(store) == [f"d-{n}" for n in range(5)]  # committed


async def test_redeliveries_in_a_batch_are_told_apart_from_the_rows_it_added(
    store: SQLiteStore,
) -> None:
    writer = open_writer(store)
    assert writer.accept([delivery(1), delivery(3)]) == [True, True]
    batch = [delivery(2), delivery(1), delivery(4), delivery(2), delivery(3), delivery(5)]
    assert writer.accept(batch) == [True, False, True, False, False, True]
    assert writer.accept([delivery(4), delivery(5)]) == [False, False]
    writer.close()
    assert await stored_ids(store) == [f"d-{n}" for n in range(1, 6)]
    assert await claimed_ids(store) == [f"d-{n}" for n in range(1, 6)]  # one job each


async def test_rows_the_statement_added_that_cannot_be_found_are_reported_never_lost(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: Reported = []
    writer = open_writer(store, reported)
    assert writer.accept([delivery(1)]) == [True]
    # As if the rowids of one statement were not consecutive: the lookup finds one of two.
    monkeypatch.setattr(sqlite_writer, "_ADDED_BY_STATEMENT",
                        sqlite_writer._ADDED_BY_STATEMENT + " LIMIT 1")
    answers = writer.accept([delivery(1), delivery(2), delivery(3)])
    assert answers[0] is False and answers[1:].count(True) == 1
    assert reported == [("delivery_batch_rowids_not_consecutive", {"inserted": 2, "found": 1})]
    writer.close()
    assert len(await claimed_ids(store)) == 3  # every new delivery is stored and runs


def test_a_writer_out_of_step_is_cut_off() -> None:
    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    async def scenario() -> None:
        connection = _WriterConnection(on_commit=None)
        connection.ready.set_result(1)
        transport = Transport()
        connection.transport = transport  # type: ignore[assignment]
        with capture_logs() as logs:
            connection.data_received(encode(Stored([True])))  # no batch is in flight
        assert transport.aborted
        assert [e["event"] for e in logs] == ["ingest_writer_out_of_step"]

    asyncio.run(scenario())
