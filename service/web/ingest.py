"""Group commit: concurrent deliveries share one durable transaction.

A request that must store a delivery calls ``submit`` and waits; a single
writer takes everything submitted so far (up to ``max_batch``), stores it in
one transaction (one fsync) and wakes every waiter with its own answer. Under
load many deliveries share a commit; alone, a delivery is committed at once.
Either way, nobody is answered before their delivery is durable (invariant I4).

Two writers, one contract (``committer_for`` picks): ``ProcessCommitter``, a
child process with an SQLite connection of its own
(``service.store.writer_process``), and ``GroupCommitter``, a task on the event
loop calling ``Store.accept`` (PostgreSQL, in-memory SQLite).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

from service import metrics
from service.errors import StoreError
from service.logging import get_logger
from service.store.base import NewDelivery, Store
from service.store.writer_protocol import (
    MAX_FRAME_BYTES,
    Batch,
    FrameBuffer,
    FrameError,
    Ready,
    Reply,
    Stored,
    decode_reply,
    encode,
)

log = get_logger("service.web.ingest")

_Pending = tuple[NewDelivery, "asyncio.Future[bool]"]


def answer(
    futures: Sequence[asyncio.Future[bool]], outcome: list[bool] | StoreError,
    on_commit: Callable[[], None] | None,
) -> None:
    """Wake every submitter of a batch with its answer, or all with the error;
    call ``on_commit`` if something new was stored."""
    if isinstance(outcome, StoreError):
        log.error("delivery_batch_not_stored", size=len(futures), error=str(outcome))
        fail(futures, outcome)
        return
    for future, is_new in zip(futures, outcome, strict=True):
        if not future.done():
            future.set_result(is_new)
    if on_commit is not None and any(outcome):
        on_commit()


def fail(futures: Iterable[asyncio.Future[bool]], error: StoreError) -> None:
    """Wake every submitter that still waits with ``error``."""
    for future in futures:
        if not future.done():
            future.set_exception(error)


class GroupCommitter:
    """Batches ``submit`` calls into ``Store.accept`` transactions."""

    def __init__(
        self, store: Store, *, max_batch: int = 512, on_commit: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Start the writer task (inside the running event loop)."""
        self._writer = asyncio.create_task(self._write_forever(), name="group-commit")

    @property
    def running(self) -> bool:
        """True from ``start`` until ``stop`` or the writer task's end: deliveries can
        be stored."""
        return not self._closed and self._writer is not None and not self._writer.done()

    async def submit(self, delivery: NewDelivery) -> bool:
        """Store ``delivery`` durably (its job queued); True if new, False if a duplicate.

        Raises ``StoreError`` if the batch could not be committed or the committer is closed.
        """
        if not self.running:
            raise StoreError("the delivery store is not accepting deliveries")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((delivery, future))
        return await future

    async def _write_forever(self) -> None:
        """Commit batches until the ``None`` sentinel from ``stop`` is reached."""
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            item = await self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= self.max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            stopping = item is None
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        outcome: list[bool] | StoreError
        try:
            outcome = await self.store.accept([delivery for delivery, _ in batch])
        except Exception as exc:
            outcome = exc if isinstance(exc, StoreError) else StoreError(str(exc))
        answer([future for _, future in batch], outcome, self.on_commit)

    async def stop(self) -> None:
        """Commit what was submitted, then stop; later ``submit`` calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None and not self._writer.done():
            await self._queue.put(None)
            await self._writer




#: Pauses before starting a new writer process after one died (the last one repeats).
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: How long ``start`` waits for a new writer to open the database.
START_TIMEOUT_SECONDS = 30.0
#: How long ``stop`` waits for the writer to commit what it was given and exit.
STOP_TIMEOUT_SECONDS = 30.0
#: A writer that ran this long before it stopped restarts after the first pause again.
_STABLE_SECONDS = 60.0
#: How long a writer whose socket closed may take to exit before it is killed.
_LINGER_SECONDS = 5.0
#: Environment variables the writer process inherits: it runs Python, and nothing of
#: the bridge's configuration (which may name secrets in ``env:`` references) is its.
_WRITER_ENVIRONMENT = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH")
_WRITER_ENVIRONMENT_PREFIXES = ("PYTHON", "LC_")


def writer_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The writer process's environment: what Python needs of ``environ`` (default
    ``os.environ``), and the bridge's own package on ``PYTHONPATH``."""
    source = os.environ if environ is None else environ
    env = {key: value for key, value in source.items()
           if key in _WRITER_ENVIRONMENT or key.startswith(_WRITER_ENVIRONMENT_PREFIXES)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
    return env


class _WriterConnection(asyncio.Protocol):
    """The bridge's end of the socket to one writer process.

    ``in_flight`` holds the submitters of each batch sent, oldest first; each reply
    answers the oldest. When the socket closes (the writer exited or was killed),
    everything still in flight fails: whether it was stored is unknown, and the
    tracker is told to deliver it again (503); a redelivery is a duplicate if it was.
    """

    def __init__(self, on_commit: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self.on_commit = on_commit
        self.ready: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.in_flight: collections.deque[list[asyncio.Future[bool]]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self._frames = FrameBuffer()

    @property
    def usable(self) -> bool:
        """Ready, and not closed: batches sent now are answered."""
        return self.ready.done() and not self.ready.exception() and not self.closed.done()

    def send(self, frame: bytes, futures: list[asyncio.Future[bool]]) -> None:
        """Send one encoded ``Batch``; its reply will answer ``futures``."""
        assert self.transport is not None
        self.transport.write(frame)
        self.in_flight.append(futures)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        try:
            while (payload := self._frames.next_payload()) is not None:
                self._handle(decode_reply(payload))
        except FrameError as exc:
            log.error("ingest_writer_out_of_step", error=str(exc))
            assert self.transport is not None
            self.transport.abort()

    def _handle(self, reply: Reply) -> None:
        if not self.ready.done():
            if isinstance(reply, Ready):
                self.ready.set_result(reply.pid)
                return
            error = reply.error if not isinstance(reply, Stored) else "an answer before Ready"
            self.ready.set_exception(StoreError(f"the ingest writer did not start: {error}"))
            return
        if isinstance(reply, Ready) or not self.in_flight:
            raise FrameError(f"unexpected {type(reply).__name__} reply")
        futures = self.in_flight.popleft()
        if isinstance(reply, Stored):
            for anomaly in reply.anomalies:
                log.error(anomaly.event, **anomaly.figures,
                          note="the deliveries are stored; some new ones were answered as "
                               "duplicates")
            answer(futures, reply.new, self.on_commit)
        else:
            answer(futures, StoreError(reply.error), None)

    def connection_lost(self, exc: Exception | None) -> None:
        stopped = StoreError("the ingest writer stopped")
        while self.in_flight:
            fail(self.in_flight.popleft(), stopped)
        if not self.ready.done():
            self.ready.set_exception(StoreError("the ingest writer exited before it was ready"))
        if not self.closed.done():
            self.closed.set_result(None)


class ProcessCommitter:
    """Group commit in a child process that owns an SQLite connection of its own.

    ``submit`` (on the event loop) queues the delivery and waits on a future; once
    per event-loop iteration, everything queued goes to the writer process as one
    ``Batch`` frame (``service.store.writer_protocol``). The writer commits every
    batch that has arrived in one transaction (one fsync), answers each, and the
    answers wake the submitters. While it commits, the next batches gather in the
    socket. Nobody is answered before their delivery is durable (invariant I4).

    Why a process and not a thread: see ``service.store.writer_process``. The event
    loop's share of a delivery is one encoded frame and one decoded answer.

    If the writer dies, whatever it was given fails with ``StoreError`` (the
    webhook answers 503, and the tracker's redelivery is a duplicate if it was
    stored after all); ``running`` is False, so readiness names ``ingest``; and a
    new writer starts after a pause (``RESTART_DELAYS``).
    """

    def __init__(
        self, database: str, *, max_batch: int = 512,
        on_commit: Callable[[], None] | None = None,
        restart_delays: Sequence[float] = RESTART_DELAYS,
        start_timeout: float = START_TIMEOUT_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.database = database
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.restart_delays = tuple(restart_delays) or (0.0,)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._connection: _WriterConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._queued: list[NewDelivery] = []
        self._waiting: list[asyncio.Future[bool]] = []
        self._flush_scheduled = False
        self._closed = False

    @property
    def running(self) -> bool:
        """True while a writer process is ready and the committer is not stopped:
        deliveries can be stored."""
        return not self._closed and self._connection is not None and self._connection.usable

    @property
    def writer_pid(self) -> int | None:
        """The current writer process's id (None before ``start`` and after it died)."""
        return self._process.pid if self.running and self._process is not None else None

    async def start(self) -> None:
        """Start the writer process and wait until it has opened the database.

        Raises ``StoreError`` if it cannot start.
        """
        self._loop = asyncio.get_running_loop()
        self._process, self._connection = await self._spawn()
        log.info("ingest_writer_started", pid=self._process.pid)
        self._supervisor = asyncio.create_task(self._supervise(), name="ingest-writer")

    async def submit(self, delivery: NewDelivery) -> bool:
        """Store ``delivery`` durably (its job queued); True if new, False if a duplicate.

        Raises ``StoreError`` if the batch could not be committed, the writer process
        stopped before answering, or the committer is not running.
        """
        if not self.running or self._loop is None:
            raise StoreError("the delivery store is not accepting deliveries")
        future: asyncio.Future[bool] = self._loop.create_future()
        self._queued.append(delivery)
        self._waiting.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return await future

    async def stop(self) -> None:
        """Commit what was submitted, then let the writer exit; later ``submit`` calls
        raise StoreError. Kills the writer if it has not exited after ``stop_timeout``."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        connection, supervisor = self._connection, self._supervisor
        if supervisor is None:
            return  # never started
        if connection is not None and connection.usable and connection.transport is not None:
            connection.transport.write_eof()  # the writer answers every batch, then exits
        else:
            supervisor.cancel()  # between writers: nothing is in flight
        done, _ = await asyncio.wait([supervisor], timeout=self.stop_timeout)
        if not done:
            log.error("ingest_writer_killed", note=f"it did not exit within {self.stop_timeout} s")
            supervisor.cancel()
            await asyncio.wait([supervisor])
        elif not supervisor.cancelled() and supervisor.exception() is not None:
            log.error("ingest_writer_supervisor_failed", error=repr(supervisor.exception()))
        process = self._process  # the supervisor may have started another meanwhile
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _flush(self) -> None:
        """Send everything queued to the writer, in batches of ``max_batch`` at most.

        Whatever cannot be sent fails with ``StoreError`` (a 503) at once: nobody waits
        for an answer that no frame will bring.
        """
        self._flush_scheduled = False
        deliveries, futures = self._queued, self._waiting
        if not deliveries:
            return
        self._queued, self._waiting = [], []
        connection = self._connection
        if self._closed or connection is None or not connection.usable:
            fail(futures, StoreError("the ingest writer stopped"))
            return
        sent = 0
        try:
            for start in range(0, len(deliveries), self.max_batch):
                end = start + self.max_batch
                _send_within_frame_limit(connection, deliveries[start:end], futures[start:end])
                sent = end
        except Exception as exc:
            log.exception("delivery_batch_not_sent")
            fail(futures[sent:], StoreError(f"the batch could not be sent: {exc}"))

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, _WriterConnection]:
        """A new writer process, ready; raises ``StoreError``."""
        loop = asyncio.get_running_loop()
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            raise StoreError(f"cannot start the ingest writer: {exc}") from exc
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    # -P: not the working directory first on sys.path (PYTHONPATH names
                    # the bridge's own package), so nothing there can stand in for it.
                    sys.executable, "-P", "-m", "service.store.writer_process",
                    "--fd", str(theirs.fileno()), "--max-batch", str(self.max_batch),
                    self.database, stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),), env=writer_environment())
            finally:
                theirs.close()
        except BaseException as exc:
            ours.close()
            if isinstance(exc, Exception):
                raise StoreError(f"cannot start the ingest writer: {exc}") from exc
            raise
        connection: _WriterConnection | None = None
        try:
            _, connection = await loop.connect_accepted_socket(
                lambda: _WriterConnection(self.on_commit), ours)
            await asyncio.wait_for(asyncio.shield(connection.ready), self.start_timeout)
        except BaseException as exc:
            if connection is not None and connection.transport is not None:
                connection.transport.abort()  # it owns the socket now
            else:
                ours.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, TimeoutError):
                raise StoreError(f"the ingest writer was not ready within "
                                 f"{self.start_timeout} s") from None
            raise
        return process, connection

    async def _supervise(self) -> None:
        """Wait for the writer to exit; unless stopping, start another after a pause."""
        failures = 0
        while True:
            assert self._process is not None and self._connection is not None
            started = time.monotonic()
            await self._connection.closed
            status = await _ended(self._process)
            if self._closed:
                return
            metrics.INGEST_WRITER_EXITS.inc()
            log.error("ingest_writer_stopped", exit_status=status,
                      note="deliveries are answered 503 until a new writer is ready")
            if time.monotonic() - started >= _STABLE_SECONDS:
                failures = 0  # it had been fine: start again quickly; else back off further
            while True:
                await asyncio.sleep(self.restart_delays[min(failures,
                                                            len(self.restart_delays) - 1)])
                failures += 1
                try:
                    self._process, self._connection = await self._spawn()
                except Exception as exc:  # whatever it is, try again after the next pause
                    log.error("ingest_writer_not_started", error=str(exc))
                    continue
                log.info("ingest_writer_restarted", pid=self._process.pid)
                break


def _send_within_frame_limit(
    connection: _WriterConnection, deliveries: list[NewDelivery],
    futures: list[asyncio.Future[bool]],
) -> None:
    """Send ``deliveries`` as one frame, or halves of them while the frame would be
    over ``MAX_FRAME_BYTES`` (the writer refuses such a frame as out of step); a single
    delivery over it fails alone. Encoding comes first: a frame that cannot be built
    leaves nothing in flight."""
    frame = encode(Batch(deliveries))
    if len(frame) <= MAX_FRAME_BYTES:
        connection.send(frame, futures)
    elif len(deliveries) == 1:
        log.error("delivery_too_large_to_store", bytes=len(frame), limit=MAX_FRAME_BYTES)
        fail(futures, StoreError(f"the delivery takes {len(frame)} bytes to store; "
                                 f"the ingest writer takes {MAX_FRAME_BYTES} at most"))
    else:
        half = len(deliveries) // 2
        _send_within_frame_limit(connection, deliveries[:half], futures[:half])
        _send_within_frame_limit(connection, deliveries[half:], futures[half:])


async def _ended(process: asyncio.subprocess.Process) -> int:
    """The exit status of a writer whose socket has closed; killed if it lingers (its
    socket was closed because it spoke out of step, say)."""
    try:
        return await asyncio.wait_for(process.wait(), _LINGER_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


DeliveryCommitter = GroupCommitter | ProcessCommitter
"""What the webhook endpoints submit deliveries to."""


@runtime_checkable
class OffersIngestFile(Protocol):
    """A store whose deliveries a writer process can store (an SQLite file)."""

    def ingest_database(self) -> str | None:
        """The database file's path; None where another connection cannot reach it."""
        ...


def committer_for(
    store: Store, *, on_commit: Callable[[], None] | None = None
) -> DeliveryCommitter:
    """A ``ProcessCommitter`` for an SQLite file, else a ``GroupCommitter`` (PostgreSQL:
    asyncpg already runs on the event loop, and the database works in its own
    processes; in-memory SQLite: another connection would be another database)."""
    database = store.ingest_database() if isinstance(store, OffersIngestFile) else None
    if database is None:
        return GroupCommitter(store, on_commit=on_commit)
    return ProcessCommitter(database, on_commit=on_commit)
