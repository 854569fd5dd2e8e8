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

When the store's own connection (the worker's claims and updates, in role
``all``) holds the write lock, SQLite's busy handler would sleep 1, 2, 5, 10 ms
and more between attempts, and every delivery of the batch would wait that
long. This connection has no busy timeout; ``BEGIN IMMEDIATE`` is retried every
``BUSY_RETRY_SECONDS`` instead, for up to the store's busy timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence

from service.errors import StoreError
from service.store import first_wins
from service.store.base import NewDelivery
from service.store.sqlite import (
    ACCEPT_CHUNK,
    BUSY_TIMEOUT_MS,
    SESSION_PRAGMAS,
    delivery_params,
    insert_deliveries_sql,
)

__all__ = ["BUSY_RETRY_SECONDS", "SQLiteBatchWriter"]

#: Pause between attempts to take the write lock while another connection holds it.
BUSY_RETRY_SECONDS = 0.0002


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
            self._conn.execute("PRAGMA busy_timeout = 0")  # see _begin
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
        self._begin()
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
        self._begin()
        for start in range(0, len(deliveries), ACCEPT_CHUNK):
            chunk = deliveries[start : start + ACCEPT_CHUNK]
            rows = conn.execute(insert_deliveries_sql(len(chunk)), delivery_params(chunk))
            inserted.update((str(row[0]), str(row[1])) for row in rows)
        conn.execute("COMMIT")
        return first_wins(deliveries, inserted)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, retried while another connection holds the write lock."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(BUSY_RETRY_SECONDS)

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error says more
                self._conn.execute("ROLLBACK")
