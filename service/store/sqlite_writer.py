"""A blocking ``accept`` on a connection of its own, for the ingest writer thread.

``SQLiteStore.accept`` goes through aiosqlite: every call is a hop to its thread
and back through the event loop, and the store's lock and shielded task add
more. Under load the webhook path waits on little else, so ingest keeps a
second connection in one dedicated thread (``service.web.ingest.ThreadedCommitter``)
and calls :meth:`SQLiteBatchWriter.accept` there directly.

The common batch (no duplicate) is ``BEGIN IMMEDIATE``, one multi-row INSERT
without ``RETURNING``, ``COMMIT``: three statement steps. Python's sqlite3 releases
the GIL around every step and must take it back after each, which costs most
when the event loop is busy; ``RETURNING`` would add one step per new row. When
the insert count shows a duplicate, the transaction is rolled back and the batch
is stored the reference way (``INSERT ... RETURNING``) to learn which rows were new.

Same durability as the store: WAL, ``synchronous=FULL``, so ``accept`` returns
only after its commit is on disk.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence

from service.errors import StoreError
from service.store import first_wins
from service.store.base import NewDelivery
from service.store.sqlite import (
    ACCEPT_CHUNK,
    SESSION_PRAGMAS,
    delivery_params,
    insert_deliveries_sql,
)

__all__ = ["SQLiteBatchWriter"]


class SQLiteBatchWriter:
    """``accept``/``close`` on one SQLite connection; use it from one thread at a time."""

    def __init__(self, path: str) -> None:
        """Open ``path`` (already created and migrated by ``SQLiteStore``).

        Raises ``StoreError`` if it cannot be opened or configured.
        """
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in SESSION_PRAGMAS:
                self._conn.execute(pragma)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite ingest connection: {exc}") from exc

    def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store each delivery and enqueue its job in ONE committed transaction.

        The contract of ``Store.accept``: per input, True if new, False for a
        duplicate (the first of a batch wins). Raises ``StoreError``; then nothing
        of the batch is stored.
        """
        if not deliveries:
            return []
        try:
            if len(deliveries) <= ACCEPT_CHUNK and self._all_new(deliveries):
                return [True] * len(deliveries)
            return self._accept_returning(deliveries)
        except sqlite3.Error as exc:
            self._rollback_quietly()
            raise StoreError(f"SQLite: {exc}") from exc

    def close(self) -> None:
        """Close the connection (a transaction in progress is rolled back)."""
        self._conn.close()

    def _all_new(self, deliveries: Sequence[NewDelivery]) -> bool:
        """Insert without RETURNING; commit and True if every row was new, else roll
        back and False."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        inserted = conn.execute(insert_deliveries_sql(len(deliveries), returning=False),
                                delivery_params(deliveries)).rowcount
        if inserted == len(deliveries):
            conn.execute("COMMIT")
            return True
        conn.execute("ROLLBACK")
        return False

    def _accept_returning(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        conn = self._conn
        inserted: set[tuple[str, str]] = set()
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, len(deliveries), ACCEPT_CHUNK):
            chunk = deliveries[start : start + ACCEPT_CHUNK]
            rows = conn.execute(insert_deliveries_sql(len(chunk)), delivery_params(chunk))
            inserted.update((str(row[0]), str(row[1])) for row in rows)
        conn.execute("COMMIT")
        return first_wins(deliveries, inserted)

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error says more
                self._conn.execute("ROLLBACK")
