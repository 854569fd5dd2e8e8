"""Group commit: concurrent deliveries share one durable transaction.

A request that must store a delivery calls ``submit`` and waits; a single
writer task takes everything submitted so far (up to ``max_batch``), stores it
with one ``Store.accept`` (one transaction, one fsync) and wakes every waiter
with its own answer. Under load many deliveries share a commit; alone, a
delivery is committed at once. Either way, nobody is answered before their
delivery is durable (invariant I4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.errors import StoreError
from service.logging import get_logger
from service.store.base import NewDelivery, Store

log = get_logger("service.web.ingest")

_Pending = tuple[NewDelivery, "asyncio.Future[bool]"]


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
        """Store ``batch`` and wake each submitter with its answer, or all with the error;
        call ``on_commit`` if something new was stored."""
        try:
            outcome = await self.store.accept([delivery for delivery, _ in batch])
        except Exception as exc:
            error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            log.error("delivery_batch_not_stored", size=len(batch), error=str(error))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), is_new in zip(batch, outcome, strict=True):
            if not future.done():
                future.set_result(is_new)
        if self.on_commit is not None and any(outcome):
            self.on_commit()

    async def stop(self) -> None:
        """Commit what was submitted, then stop; later ``submit`` calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None and not self._writer.done():
            await self._queue.put(None)
            await self._writer
