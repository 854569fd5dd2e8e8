"""A blocking ``accept`` on a connection of its own, for the ingest writer process.

``SQLiteStore.accept`` goes through aiosqlite: every call is a hop to its thread
and back through the event loop, and the store's lock and shielded task add
more. Under load the webhook path waits on little else, so ingest keeps a
second connection in a process of its own (``service.store.writer_process``,
driven by ``service.web.ingest.ProcessCommitter``) and calls
:meth:`SQLiteBatchWriter.accept` there directly.

A batch of up to ``ACCEPT_CHUNK`` deliveries is ONE multi-row INSERT in autocommit
mode: its own transaction, one statement step, one fsync. (When this ran in a thread
of the bridge's process, every statement step handed the interpreter lock back and
forth with the busy event loop: ``BEGIN IMMEDIATE``, INSERT, ``COMMIT`` took about
15 % of ingest throughput against this single step.) ``RETURNING`` would add a step
per new row. The INSERT's change count tells whether
every row was new; only when it does not (a redelivery) does a second query read
which rows the statement added: their rowids are consecutive, ending at the
statement's last insert rowid (a new ``INTEGER PRIMARY KEY`` is the largest plus
one, and the statement holds the write lock throughout). Larger batches are one
``BEGIN IMMEDIATE`` transaction of ``INSERT ... RETURNING`` chunks.

Same durability as the store: WAL, ``synchronous=FULL``, so ``accept`` returns
only after its commit is on disk.

When the store's own connection (the worker's claims and updates, in role
``all``) holds the write lock, SQLite's busy handler would sleep 1, 2, 5, 10 ms
and more between attempts, and every delivery of the batch would wait that
long. This connection has no busy timeout; a statement refused with
``SQLITE_BUSY`` (which has changed nothing) is retried every
``BUSY_RETRY_SECONDS`` instead, for up to the store's busy timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from service.errors import StoreError
from service.store import first_wins
from service.store.base import NewDelivery
from service.store.sqlite_accept import (
    ACCEPT_CHUNK,
    BUSY_TIMEOUT_MS,
    SESSION_PRAGMAS,
    delivery_params,
    insert_deliveries_sql,
)

__all__ = ["BUSY_RETRY_SECONDS", "Report", "SQLiteBatchWriter"]

Report = Callable[[str, Mapping[str, int]], None]
"""Where the writer reports what should never happen: (event name, figures). It logs
nothing itself: it runs in the writer process, whose parent does the logging."""

#: The rows one ``_accept_in_one_statement`` INSERT added (rowid range, exclusive start).
_ADDED_BY_STATEMENT = "SELECT tracker, delivery_id FROM deliveries WHERE id > ? AND id <= ?"

#: Pause between attempts to take the write lock while another connection holds it.
BUSY_RETRY_SECONDS = 0.0002


class SQLiteBatchWriter:
    """``accept``/``close`` on one SQLite connection; use it from one thread at a time."""

    def __init__(self, path: str, *, report: Report | None = None) -> None:
        """Open ``path`` (already created and migrated by ``SQLiteStore``); anomalies
        go to ``report``.

        Raises ``StoreError`` if it cannot be opened or configured.
        """
        self._report = report
        try:
            # mode=rw: a file that has gone must be an error, not a new empty database.
            uri = Path(path).resolve().as_uri() + "?mode=rw"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                         check_same_thread=False)
            for pragma in SESSION_PRAGMAS:
                self._conn.execute(pragma)
            self._conn.execute("PRAGMA busy_timeout = 0")  # see _begin
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite ingest connection: {exc}") from exc

    def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store each delivery in ONE committed transaction (the next claim gives it its
        job: see ``service.store.sqlite``).

        The contract of ``Store.accept``: per input, True if new, False for a
        duplicate (the first of a batch wins). Raises ``StoreError``; then nothing
        of the batch is stored, with one exception: when a batch with redeliveries
        is committed but the read of which rows it added then fails, the batch is
        stored (and its jobs queued) although ``StoreError`` is raised. The tracker
        retries, and its retries are answered as duplicates: nothing is lost or doubled.
        """
        if not deliveries:
            return []
        try:
            if len(deliveries) <= ACCEPT_CHUNK:
                return self._accept_in_one_statement(deliveries)
            return self._accept_in_one_transaction(deliveries)
        except sqlite3.Error as exc:
            self._rollback_quietly()
            raise StoreError(f"SQLite: {exc}") from exc

    def close(self) -> None:
        """Close the connection (a transaction in progress is rolled back)."""
        self._conn.close()

    def _accept_in_one_statement(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """One INSERT in autocommit mode (its own transaction); see the module docstring."""
        sql = insert_deliveries_sql(len(deliveries), returning=False)
        params = delivery_params(deliveries)
        cursor = self._retry_while_busy(lambda: self._conn.execute(sql, params))
        inserted = cursor.rowcount
        if inserted == len(deliveries):
            return [True] * inserted
        if inserted <= 0:
            return [False] * len(deliveries)
        last = cursor.lastrowid
        assert last is not None  # set by every INSERT that added a row
        rows = self._conn.execute(_ADDED_BY_STATEMENT, (last - inserted, last)).fetchall()
        if len(rows) != inserted and self._report is not None:
            # SQLite assigns rowids otherwise only past 2**63 - 1. The deliveries are
            # stored; some new ones are answered as duplicates.
            self._report("delivery_batch_rowids_not_consecutive",
                         {"inserted": inserted, "found": len(rows)})
        return first_wins(deliveries, {(str(row[0]), str(row[1])) for row in rows})

    def _accept_in_one_transaction(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """More rows than one statement takes: chunks of ``INSERT ... RETURNING``."""
        conn = self._conn
        inserted: set[tuple[str, str]] = set()
        self._retry_while_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        for start in range(0, len(deliveries), ACCEPT_CHUNK):
            chunk = deliveries[start : start + ACCEPT_CHUNK]
            rows = conn.execute(insert_deliveries_sql(len(chunk)), delivery_params(chunk))
            inserted.update((str(row[0]), str(row[1])) for row in rows)
        conn.execute("COMMIT")
        return first_wins(deliveries, inserted)

    def _retry_while_busy(self, statement: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
        """Run ``statement``, again while another connection holds the write lock
        (``SQLITE_BUSY`` and its extended codes: nothing was changed)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return statement()
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
            time.sleep(BUSY_RETRY_SECONDS)

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error says more
                self._conn.execute("ROLLBACK")
