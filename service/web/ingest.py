"""Group commit: concurrent deliveries share one durable transaction.

A request that must store a delivery calls ``submit`` and waits; a single
writer takes everything submitted so far (up to ``max_batch``), stores it in
one transaction (one fsync) and wakes every waiter with its own answer. Under
load many deliveries share a commit; alone, a delivery is committed at once.
Either way, nobody is answered before their delivery is durable (invariant I4).

Two writers, one contract (``committer_for`` picks): ``ThreadedCommitter``, a
thread with a blocking SQLite connection of its own, and ``GroupCommitter``, a
task on the event loop calling ``Store.accept`` (PostgreSQL, in-memory SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from service.errors import StoreError
from service.logging import get_logger
from service.store.base import NewDelivery, Store

log = get_logger("service.web.ingest")

_Pending = tuple[NewDelivery, "asyncio.Future[bool]"]


def answer(
    batch: list[_Pending], outcome: list[bool] | StoreError,
    on_commit: Callable[[], None] | None,
) -> None:
    """Wake every submitter of ``batch`` with its answer, or all with the error;
    call ``on_commit`` if something new was stored."""
    if isinstance(outcome, StoreError):
        log.error("delivery_batch_not_stored", size=len(batch), error=str(outcome))
        for _, future in batch:
            if not future.done():
                future.set_exception(outcome)
        return
    for (_, future), is_new in zip(batch, outcome, strict=True):
        if not future.done():
            future.set_result(is_new)
    if on_commit is not None and any(outcome):
        on_commit()


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

    def start(self) -> None:
        """Start the writer task (inside the running event loop)."""
        self._writer = asyncio.create_task(self._write_forever(), name="group-commit")

    @property
    def running(self) -> bool:
        """True from ``start`` until ``stop`` or the writer task's end: deliveries can
        be stored."""
        return not self._closed and self._writer is not None and not self._writer.done()

    async def submit(self, delivery: NewDelivery) -> bool:
        """Store ``delivery`` and enqueue its job durably; True if new, False if a duplicate.

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
        answer(batch, outcome, self.on_commit)

    async def stop(self) -> None:
        """Commit what was submitted, then stop; later ``submit`` calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None and not self._writer.done():
            await self._queue.put(None)
            await self._writer


class BatchWriter(Protocol):
    """A blocking ``Store.accept`` for one thread (``SQLiteBatchWriter``)."""

    def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """The contract of ``Store.accept``; raises ``StoreError``."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class OffersBatchWriter(Protocol):
    """A store that can open a ``BatchWriter`` (SQLite files; None where it cannot)."""

    def open_batch_writer(self) -> BatchWriter | None:
        """A new blocking writer, or None; raises ``StoreError``."""
        ...


class ThreadedCommitter:
    """Group commit in one dedicated thread that owns a ``BatchWriter``.

    ``submit`` (on the event loop) puts the delivery on a thread-safe queue and
    waits on a future. The thread takes everything queued (up to ``max_batch``),
    stores it with ``writer.accept`` (one transaction, one fsync) and hands all the
    answers back with one ``call_soon_threadsafe``. While it commits, the next
    batch gathers in the queue, and the thread starts on it without waiting for
    the event loop: under load the loop is busy, and each of its turns that a
    commit had to wait for (``GroupCommitter``: the writer task, aiosqlite's
    thread, the store's lock) cost a batch a millisecond. Nobody is answered
    before their delivery is durable (invariant I4).
    """

    def __init__(
        self, writer: BatchWriter, *, max_batch: int = 512,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._writer = writer
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the writer thread (inside the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._thread = threading.Thread(target=self._write_forever, name="ingest-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True from ``start`` until ``stop`` or the thread's end: deliveries can be
        stored."""
        return not self._closed and self._exited is not None and not self._exited.done()

    async def submit(self, delivery: NewDelivery) -> bool:
        """Store ``delivery`` and enqueue its job durably; True if new, False if a duplicate.

        Raises ``StoreError`` if the batch could not be committed or the committer is
        stopped (or its thread has ended).
        """
        if not self.running or self._loop is None:
            raise StoreError("the delivery store is not accepting deliveries")
        future: asyncio.Future[bool] = self._loop.create_future()
        self._queue.put((delivery, future))
        return await future

    async def stop(self) -> None:
        """Commit what was submitted, then stop the thread and close the writer;
        later ``submit`` calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        if self._exited is None:  # never started
            self._writer.close()
            return
        self._queue.put(None)
        await self._exited

    # -- in the writer thread -------------------------------------------------------
    def _write_forever(self) -> None:
        """Commit batches until the ``None`` sentinel from ``stop``; then close."""
        try:
            stopping = False
            while not stopping:
                batch: list[_Pending] = []
                item = self._queue.get()
                while item is not None:
                    batch.append(item)
                    if len(batch) >= self.max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                stopping = item is None
                if batch:
                    self._commit(batch)
        finally:
            with contextlib.suppress(Exception):  # closing cannot undo a commit
                self._writer.close()
            self._to_loop(self._thread_ended)

    def _commit(self, batch: list[_Pending]) -> None:
        outcome: list[bool] | StoreError
        try:
            outcome = self._writer.accept([delivery for delivery, _ in batch])
        except StoreError as exc:
            outcome = exc
        except Exception as exc:  # a bug must fail the batch, not kill the thread
            outcome = StoreError(f"{type(exc).__name__}: {exc}")
        except BaseException:  # the thread ends (see _thread_ended); nobody waits forever
            self._to_loop(answer, batch, StoreError("the ingest writer stopped"), None)
            raise
        self._to_loop(answer, batch, outcome, self.on_commit)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop --------------------------------------------------------------
    def _thread_ended(self) -> None:
        """Fail whatever is still queued (only if the thread died), then mark it ended."""
        if not self._closed:
            log.error("ingest_writer_stopped", note="deliveries are answered 503 until restart")
        failure = StoreError("the delivery store is not accepting deliveries")
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None and not item[1].done():
                    item[1].set_exception(failure)
        assert self._exited is not None
        if not self._exited.done():
            self._exited.set_result(None)


DeliveryCommitter = GroupCommitter | ThreadedCommitter
"""What the webhook endpoints submit deliveries to."""


def committer_for(
    store: Store, *, on_commit: Callable[[], None] | None = None
) -> DeliveryCommitter:
    """A ``ThreadedCommitter`` when the store offers a blocking batch writer (an
    SQLite file), else a ``GroupCommitter`` (PostgreSQL: asyncpg already runs on
    the event loop, and the database works in its own processes).

    Raises ``StoreError`` if the writer cannot be opened.
    """
    writer = store.open_batch_writer() if isinstance(store, OffersBatchWriter) else None
    if writer is None:
        return GroupCommitter(store, on_commit=on_commit)
    return ThreadedCommitter(writer, on_commit=on_commit)
