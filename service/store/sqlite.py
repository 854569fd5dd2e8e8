"""The SQLite backend of :class:`service.store.base.Store`: one file, one bridge process.

One process serves a database file (``serve --role web`` and ``--role worker`` may
share one on one host; to scale out, use PostgreSQL). Durability and isolation:

* WAL journal with ``synchronous=FULL``: a method that returned has its commit
  fsynced, so an acknowledged delivery survives a crash or a power loss.
* ONE aiosqlite connection; an ``asyncio.Lock`` serialises every use of it, so
  the statements of concurrent coroutines never interleave inside a transaction.
* Multi-statement writes run in ``BEGIN IMMEDIATE`` (the write lock is taken
  first, so they never fail half-way on a lock upgrade). Single-statement writes
  (``accept``, the job transitions) run as SQLite's implicit transaction of that
  one statement, which is atomic and takes the write lock at its first step
  exactly as ``BEGIN IMMEDIATE`` would.
* Every operation runs in its own task shielded from the caller's cancellation:
  a cancelled caller cannot leave a transaction open on the shared connection,
  and a commit that started completes.

``accept`` stores a batch with one multi-row ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` (chunked above ``ACCEPT_CHUNK`` rows, then inside ``BEGIN IMMEDIATE``);
the ``deliveries_enqueue_job`` trigger makes each new delivery's job in the same
statement. The directory the database is created in is private to the bridge's
user (0700), and so is the file (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from service.core.pacing import Window, delay_needed
from service.errors import StoreError
from service.store import (
    Migration,
    account_from_row,
    delegation_from_row,
    delivery_record_from_row,
    first_wins,
    followup_from_row,
    identity_from_row,
    job_from_row,
    load_migrations,
    queries,
)
from service.store.base import (
    Account,
    CheckTarget,
    Delegation,
    DeliveryRecord,
    Followup,
    Identity,
    Job,
    NewDelivery,
    TokenKind,
)
from service.store.queries import ACCOUNT_WIDTH, for_sqlite

__all__ = ["ACCEPT_CHUNK", "SQLiteStore", "split_statements"]

_T = TypeVar("_T")
_Row = Sequence[Any]
_Body = Callable[[aiosqlite.Connection], Awaitable[_T]]

_MIN_SQLITE = (3, 37, 0)  # STRICT tables; RETURNING and UPSERT are older
#: Rows per INSERT statement in ``accept`` (7 parameters each, well under SQLite's
#: default limit of 32766 bound parameters).
ACCEPT_CHUNK = 1000
_SESSION_PRAGMAS = (
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)

# -- SQL ------------------------------------------------------------------------
# The schema lives in migrations/sqlite/*.sql; service.store.queries holds what both
# backends share, and what follows is SQLite's own.

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
) STRICT
"""
_APPLIED_VERSIONS = "SELECT version FROM schema_migrations ORDER BY version"
_HAS_MIGRATIONS_TABLE = (
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
)
_RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"


_INSERT_DELIVERIES = (
    "INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, received_at,"
    " body_sha256, kind) VALUES "
)
_ON_CONFLICT_RETURNING = " ON CONFLICT DO NOTHING RETURNING tracker, delivery_id"


@lru_cache(maxsize=64)
def _insert_deliveries(rows: int) -> str:
    """The multi-row INSERT of ``accept`` for ``rows`` deliveries; it returns (tracker,
    delivery_id) of each new row. A conflict on either unique key (delivery id, body
    hash) skips the row."""
    return _INSERT_DELIVERIES + ",".join(["(?,?,?,?,?,?,?)"] * rows) + _ON_CONFLICT_RETURNING


# Two candidate streams merged in (run_at, id) order: due queued jobs (walked on
# jobs_queued_by_run_at, so the scan stops after :limit hits) and running jobs whose
# lease ended (few: their worker died). A candidate is skipped if its issue has a job
# under a lease valid at :now, or an older live job (by id, the order the deliveries
# came in, whatever their run_at): so one job per issue, in arrival order. A job
# retried or deferred to later keeps its issue's newer jobs waiting behind it.
_CLAIM = """
UPDATE jobs
SET status = 'running', lease_owner = :owner, lease_until = :until,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT j.id, j.run_at FROM jobs AS j
        WHERE j.status = 'queued' AND j.run_at <= :now
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status = 'running'
                AND o.lease_until >= :now)
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status IN ('queued', 'running')
                AND o.id < j.id)
        UNION ALL
        SELECT j.id, j.run_at FROM jobs AS j
        WHERE j.status = 'running' AND j.lease_until < :now
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status = 'running'
                AND o.lease_until >= :now)
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status IN ('queued', 'running')
                AND o.id < j.id)
        ORDER BY 2, 1
        LIMIT :limit
    )
)
RETURNING id,
    (SELECT d.tracker FROM deliveries AS d WHERE d.id = jobs.delivery_ref),
    (SELECT d.delivery_id FROM deliveries AS d WHERE d.id = jobs.delivery_ref),
    issue_key,
    (SELECT d.event_json FROM deliveries AS d WHERE d.id = jobs.delivery_ref),
    attempts, lease_owner, lease_until, run_at,
    (SELECT d.kind FROM deliveries AS d WHERE d.id = jobs.delivery_ref)
"""
# One process serves an SQLite database: whatever another owner holds is left over
# from the process before this one.
_REQUEUE_JOBS_OF_OTHERS = """
UPDATE jobs SET status = 'queued', run_at = ?2, lease_owner = NULL, lease_until = NULL,
    updated_at = ?2
WHERE status = 'running' AND lease_owner <> ?1
"""
_DELETE_OTHER_WORKERS = "DELETE FROM workers WHERE id <> ?1"
# Accounts due for a status check, oldest schedule first, leased to :owner.
_CLAIM_CHECKS = """
UPDATE accounts SET check_owner = :owner, check_until = :until
WHERE id IN (
    SELECT a.id FROM accounts AS a
    WHERE a.token_status = 'valid'
      AND (a.check_at IS NULL OR a.check_at <= :now)
      AND (a.check_owner IS NULL OR a.check_until < :now)
      AND EXISTS (SELECT 1 FROM delegations AS g
                  WHERE g.account_id = a.id AND g.follow_until >= :now)
    ORDER BY coalesce(a.check_at, 0), a.id
    LIMIT :limit)
RETURNING id, check_failures
"""
_INSERT_CHECK = """
INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, received_at, kind)
VALUES (?1, ?2, ?3, ?4, ?5, 'check')
"""

#: The shared statements, in SQLite's parameter style, by name.
_Q = {name: for_sqlite(value) for name, value in vars(queries).items()
      if name.isupper() and not name.startswith("_") and isinstance(value, str)}


class SQLiteStore:
    """:class:`~service.store.base.Store` on one SQLite file (see the module docstring).

    Create with ``await SQLiteStore.open(path)``; every method is one transaction.
    """

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        """Wrap an opened, configured connection; prefer :meth:`open`."""
        self._conn: aiosqlite.Connection | None = conn
        self._path = path
        self._inode: int | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        """Open (creating the file and its parent directories, private to this user) and
        configure the database.

        Raises ``StoreError`` if SQLite is older than 3.37, or the file cannot be
        opened or switched to WAL.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old: 3.37 or newer needed")
        target = str(path)
        try:
            if target != ":memory:":
                _create_private(Path(target))
            conn = await aiosqlite.connect(target, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {target!r}: {exc}") from exc
        try:
            await _configure(conn, in_memory=target == ":memory:")
        except BaseException:
            await conn.close()
            raise
        store = cls(conn, target)
        if target != ":memory:":
            store._inode = os.stat(target).st_ino
        return store

    # -- plumbing -----------------------------------------------------------------
    async def _run(self, body: _Body[_T], *, begin: str | None = None) -> _T:
        """Run ``body`` under the lock in its own task, shielded from cancellation.

        With ``begin`` (e.g. ``"BEGIN IMMEDIATE"``) the body runs in that transaction,
        committed on success and rolled back on any exception. SQLite errors become
        ``StoreError``.
        """
        task = asyncio.ensure_future(self._locked(body, begin))
        task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(task)

    async def _locked(self, body: _Body[_T], begin: str | None) -> _T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            try:
                if begin is None:
                    return await body(conn)
                return await _in_transaction(conn, begin, body)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite: {exc}") from exc

    async def _fetchall(self, sql: str, params: Any = ()) -> list[_Row]:
        """One statement (its own implicit transaction); all its rows."""

        async def body(conn: aiosqlite.Connection) -> list[_Row]:
            return list(await conn.execute_fetchall(sql, params))

        return await self._run(body)

    async def _fetchone(self, sql: str, params: Any = ()) -> _Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _rowcount(self, sql: str, params: Any = ()) -> int:
        """One write statement (its own implicit transaction); the rows it changed."""

        async def body(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return int(cursor.rowcount)

        return await self._run(body)

    # -- lifecycle and health -------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply pending migrations, each in its own ``BEGIN IMMEDIATE`` transaction.

        Safe against a concurrent migrator (another process): a version applied
        meanwhile is skipped. Raises ``StoreError`` if the database is newer than
        this code (a downgrade), before changing anything.
        """
        migrations = load_migrations("sqlite")

        async def body(conn: aiosqlite.Connection) -> list[int]:
            await conn.execute(_CREATE_MIGRATIONS_TABLE)
            applied = await _applied_versions(conn)
            newest = migrations[-1].version if migrations else 0
            if applied and max(applied) > newest:
                raise StoreError(
                    f"the database schema is version {max(applied)}, newer than this "
                    f"coder-bridge knows ({newest}): upgrade coder-bridge"
                )
            done: list[int] = []
            for migration in migrations:
                if migration.version not in applied and await _apply(conn, migration):
                    done.append(migration.version)
            return done

        return await self._run(body)

    async def schema_status(self) -> tuple[int, int]:
        """(highest version applied, 0 on an empty database; newest version known)."""
        migrations = load_migrations("sqlite")
        newest = migrations[-1].version if migrations else 0

        async def body(conn: aiosqlite.Connection) -> int:
            rows = await conn.execute_fetchall(_HAS_MIGRATIONS_TABLE)
            if not next(iter(rows))[0]:
                return 0
            applied = await _applied_versions(conn)
            return max(applied, default=0)

        return await self._run(body), newest

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database file is still the one we opened and
        readable, and ``SELECT 1`` answers.

        The file check matters: SQLite keeps serving from its open descriptor and the
        WAL after the file was removed, replaced or made unreadable (a lost volume),
        while every write would be going nowhere that survives.
        """
        if self._inode is not None:
            self._check_file()
        row = await self._fetchone("SELECT 1")
        if row is None or row[0] != 1:
            raise StoreError("SQLite did not answer SELECT 1")

    def _check_file(self) -> None:
        # Never open() the file here: POSIX locks belong to the process, and closing ANY
        # descriptor of the database file drops all of SQLite's locks on it, after which
        # another process may reset the WAL under us and committed writes are lost.
        try:
            inode = os.stat(self._path).st_ino
        except OSError as exc:
            raise StoreError(f"the database file is not readable: {exc.strerror}") from None
        if inode != self._inode:
            raise StoreError("the database file was replaced since it was opened")
        if not os.access(self._path, os.R_OK | os.W_OK):
            raise StoreError("the database file is not readable and writable")

    async def close(self) -> None:
        """Wait for the operation in progress, then close; later calls raise StoreError.

        Closing twice is a no-op.
        """
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    # -- ingest ---------------------------------------------------------------------
    async def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store each delivery and its job, in ONE committed transaction.

        Up to ``ACCEPT_CHUNK`` deliveries take one statement and one thread round
        trip; larger batches run one statement per chunk inside ``BEGIN IMMEDIATE``.
        Returns, per input, True if new and False for a duplicate (same delivery id
        or same body; including a repeat of an earlier input of the same batch: the
        first wins).
        """
        if not deliveries:
            return []
        chunks = [deliveries[i : i + ACCEPT_CHUNK] for i in range(0, len(deliveries), ACCEPT_CHUNK)]

        async def body(conn: aiosqlite.Connection) -> set[tuple[str, str]]:
            inserted: set[tuple[str, str]] = set()
            for chunk in chunks:
                params: list[Any] = []
                for d in chunk:
                    params += (d.tracker, d.delivery_id, d.issue_key, d.event_json,
                               float(d.received_at), d.body_sha256, d.kind)
                rows = await conn.execute_fetchall(_insert_deliveries(len(chunk)), params)
                inserted.update((row[0], row[1]) for row in rows)
            return inserted

        inserted = await self._run(body, begin="BEGIN IMMEDIATE" if len(chunks) > 1 else None)
        return first_wins(deliveries, inserted)

    # -- jobs -----------------------------------------------------------------------
    async def claim(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` runnable jobs to ``owner`` in one ``UPDATE ... RETURNING``.

        Runnable: ``queued`` with ``run_at <= now``, or ``running`` whose lease
        ended before ``now`` (``lease_until < now``; a lease is valid through
        ``lease_until`` itself). At most one job per ``issue_key``, none of an issue
        with a job under a lease still valid at ``now``. Oldest ``run_at`` (then id)
        first; ``attempts`` is incremented.
        """
        if limit <= 0:
            return []
        params = {"owner": owner, "now": now, "until": now + lease_seconds, "limit": limit}
        rows = await self._fetchall(_CLAIM, params)
        rows.sort(key=lambda row: (float(row[8]), int(row[0])))
        return [job_from_row(row) for row in rows]

    async def renew_lease(self, job_id: int, owner: str, *, until: float) -> bool:
        """Set the lease end to ``until``; False (and no change) if ``owner`` no longer
        holds the job. An owner whose lease ran out but whose job nobody re-claimed
        still holds it."""
        return await self._rowcount(_Q["RENEW_LEASE"], (job_id, owner, until, time.time())) == 1

    async def finish_job(self, job_id: int, owner: str, *, outcome: str = "") -> None:
        """Mark the job ``done``; a no-op unless ``owner`` holds it (running, its lease)."""
        await self._rowcount(_Q["FINISH_JOB"], (job_id, owner, time.time(), outcome or None))

    async def retry_job(self, job_id: int, owner: str, *, run_at: float, error: str) -> None:
        """Queue the job again at ``run_at`` with ``last_error``, dropping the lease;
        a no-op unless ``owner`` holds it."""
        await self._rowcount(_Q["RETRY_JOB"], (job_id, owner, run_at, error, time.time()))

    async def fail_job(self, job_id: int, owner: str, *, error: str, outcome: str = "") -> None:
        """Mark the job ``failed`` with ``last_error``; a no-op unless ``owner`` holds it."""
        await self._rowcount(_Q["FAIL_JOB"], (job_id, owner, error, time.time(),
                                              outcome or None))

    async def release_job(self, job_id: int, owner: str, *, run_at: float | None = None) -> None:
        """Give the job back: ``queued`` at ``run_at`` (None: its old one), lease
        dropped, this attempt not counted; a no-op unless ``owner`` holds it."""
        await self._rowcount(_Q["RELEASE_JOB"], (job_id, owner, time.time(), run_at))

    async def queue_stats(self, *, now: float) -> tuple[int, float]:
        """(jobs queued or running, seconds since the oldest runnable job's ``run_at``)."""
        row = await self._fetchone(_Q["QUEUE_STATS"], (now,))
        assert row is not None
        oldest = row[1]
        return int(row[0]), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)

    # -- workers --------------------------------------------------------------------
    async def register_worker(self, owner: str, *, now: float) -> int:
        """Record ``owner``, and take back every job another owner holds: one process
        serves an SQLite database, so they are left over from the process before."""

        async def body(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(_REQUEUE_JOBS_OF_OTHERS, (owner, now))
            await conn.execute(_DELETE_OTHER_WORKERS, (owner,))
            await conn.execute(_Q["UPSERT_WORKER"], (owner, now))
            return int(cursor.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def heartbeat(self, owner: str, *, now: float, stale_after: float) -> int:
        """See ``Store.heartbeat``: beat, then take back the jobs of stale workers."""

        async def body(conn: aiosqlite.Connection) -> int:
            await conn.execute(_Q["UPSERT_WORKER"], (owner, now))
            params = (owner, now - stale_after, now)
            cursor = await conn.execute(_Q["REQUEUE_JOBS_OF_STALE_WORKERS"], params)
            await conn.execute(_Q["DELETE_STALE_WORKERS"], params[:2])
            return int(cursor.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def unregister_worker(self, owner: str) -> None:
        """Forget ``owner``."""
        await self._rowcount(_Q["DELETE_WORKER"], (owner,))

    # -- deliveries (CLI) -----------------------------------------------------------
    async def list_deliveries(self, *, limit: int) -> list[DeliveryRecord]:
        """Newest first (by arrival), each with its newest job and the issue's newest
        delegation."""
        rows = await self._fetchall(_Q["LIST_DELIVERIES"], (limit,))
        return [delivery_record_from_row(row) for row in rows]

    async def delivery_exists(self, delivery_id: str) -> bool:
        """See ``Store.delivery_exists``."""
        return await self._fetchone(_Q["DELIVERY_EXISTS"], (delivery_id,)) is not None

    async def requeue_delivery(self, delivery_id: str, *, now: float) -> bool:
        """Enqueue a fresh job (attempts 0, ``run_at = now``) for the delivery unless
        it has a queued or running job. False if unknown or already live. Should two
        trackers share the id, the most recently received delivery is meant."""
        return await self._rowcount(_Q["REQUEUE_DELIVERY"], (delivery_id, now)) == 1

    # -- delegations ----------------------------------------------------------------
    async def current_delegation(self, issue_key: str) -> Delegation | None:
        """The issue's delegation with the highest generation, if any."""
        row = await self._fetchone(_Q["CURRENT_DELEGATION"], (issue_key,))
        return delegation_from_row(row) if row is not None else None

    async def create_delegation(
        self, *, issue_key: str, tracker: str, delivery_id: str, generation: int, now: float
    ) -> Delegation:
        """Insert ``generation`` of the issue as ``pending``; if it exists, return the
        stored row unchanged (whatever its delivery)."""

        async def body(conn: aiosqlite.Connection) -> _Row:
            await conn.execute(_Q["INSERT_DELEGATION"],
                               (issue_key, generation, tracker, delivery_id, now))
            rows = list(await conn.execute_fetchall(_Q["GET_DELEGATION"],
                                                    (issue_key, generation)))
            return rows[0]

        return delegation_from_row(await self._run(body, begin="BEGIN IMMEDIATE"))

    async def save_delegation(self, delegation: Delegation) -> None:
        """Write the mutable fields (state, account, task_*, comment_id, attempts,
        last_error, updated_at) of the row with ``delegation.id``.

        Raises ``StoreError`` if no such row exists.
        """
        if await self._rowcount(_Q["SAVE_DELEGATION"], _save_params(delegation)) != 1:
            raise StoreError(f"delegation {delegation.id} does not exist")

    async def get_delegation(self, delegation_id: int) -> Delegation | None:
        """The delegation with this id, if any."""
        row = await self._fetchone(_Q["GET_DELEGATION_BY_ID"], (delegation_id,))
        return delegation_from_row(row) if row is not None else None

    async def list_delegations(
        self, *, states: Sequence[str] | None, limit: int
    ) -> list[tuple[Delegation, str | None]]:
        """Newest change first (the newest generation of each issue), with the Coder
        username each runs as."""
        rows = await self._fetchall(_Q["LIST_DELEGATIONS"], (limit, ",".join(states or ())))
        return [(delegation_from_row(row), row[22]) for row in rows]

    async def count_delegations(self) -> dict[str, int]:
        """How many issues' newest delegations are in each state."""
        return {str(row[0]): int(row[1])
                for row in await self._fetchall(_Q["COUNT_DELEGATIONS"])}

    # -- status checks ------------------------------------------------------------
    async def claim_checks(
        self, owner: str, *, now: float, lease_seconds: float, limit: int
    ) -> list[CheckTarget]:
        """See ``Store.claim_checks``."""
        if limit <= 0:
            return []
        params = {"owner": owner, "now": now, "until": now + lease_seconds, "limit": limit}
        claimed = sorted((int(row[0]), int(row[1]))
                         for row in await self._fetchall(_CLAIM_CHECKS, params))
        targets = []
        for account_id, failures in claimed:
            account = await self.get_account(account_id)
            rows = await self._fetchall(_Q["FOLLOWED_DELEGATIONS"], (account_id, now))
            if account is not None:
                targets.append(CheckTarget(account, [delegation_from_row(r) for r in rows],
                                           failures))
        return targets

    async def finish_checks(
        self, account_id: int, owner: str, *, next_at: float, failures: int
    ) -> None:
        """See ``Store.finish_checks``."""
        await self._rowcount(_Q["FINISH_CHECKS"], (account_id, owner, next_at, failures))

    async def request_check(
        self, delegation: Delegation, *, seen: str, now: float, reason: str
    ) -> bool:
        """See ``Store.request_check``: the check is a delivery of kind ``check`` (its job
        made with it), so it runs in the issue's turn among its other jobs."""
        event = orjson.dumps({"delegation_id": delegation.id, "reason": reason,
                             "seen": seen}).decode()
        delivery_id = f"check:{delegation.id}:{now:.6f}"

        async def body(conn: aiosqlite.Connection) -> bool:
            if list(await conn.execute_fetchall(_Q["CHECK_QUEUED"], (delegation.issue_key,))):
                return False
            await conn.execute(_INSERT_CHECK, (delegation.tracker, delivery_id,
                                               delegation.issue_key, event, now))
            return True

        return await self._run(body, begin="BEGIN IMMEDIATE")

    # -- sweeps and shared budgets ---------------------------------------------------
    async def claim_sweep(self, name: str, owner: str, *, now: float, lease: float) -> bool:
        """See ``Store.claim_sweep``."""
        return await self._fetchone(_Q["CLAIM_SWEEP"], (name, owner, now, now + lease)) \
            is not None

    async def finish_sweep(self, name: str, owner: str, *, now: float) -> None:
        """See ``Store.finish_sweep``."""
        await self._rowcount(_Q["FINISH_SWEEP"], (name, owner, now))

    async def last_sweep(self, name: str) -> float | None:
        """See ``Store.last_sweep``."""
        row = await self._fetchone(_Q["LAST_SWEEP"], (name,))
        return float(row[0]) if row is not None and row[0] is not None else None

    async def take_budget(self, budget: str, *, now: float, windows: Sequence[Window],
                          take: bool = True) -> float:
        """See ``Store.take_budget`` (one write transaction)."""
        longest = max((span for _, span in windows), default=0.0)

        async def body(conn: aiosqlite.Connection) -> float:
            await conn.execute(_Q["FORGET_SPENDS"], (budget, now - longest))
            spends = [float(r[0]) for r in await conn.execute_fetchall(_Q["LIST_SPENDS"],
                                                                       (budget,))]
            wait = delay_needed(spends, windows, now)
            if wait <= 0 and take:
                await conn.execute(_Q["ADD_SPEND"], (budget, max([now, *spends[-1:]])))
            return wait

        return await self._run(body, begin="BEGIN IMMEDIATE")

    # -- follow-ups ---------------------------------------------------------------
    async def add_followup(
        self, delegation_id: int, *, source: str, text: str, now: float
    ) -> bool:
        """Hold a follow-up; False if ``source`` was added before."""
        return await self._rowcount(_Q["ADD_FOLLOWUP"], (delegation_id, source, text, now)) == 1

    async def queued_followups(self, delegation_id: int) -> list[Followup]:
        """The follow-ups still waiting, oldest first."""
        return [followup_from_row(row)
                for row in await self._fetchall(_Q["QUEUED_FOLLOWUPS"], (delegation_id,))]

    async def settle_followup(self, followup_id: int, *, sent: bool, now: float) -> None:
        """Mark a follow-up sent or dropped."""
        await self._rowcount(_Q["SETTLE_FOLLOWUP"],
                             (followup_id, "sent" if sent else "dropped", now))

    # -- accounts -------------------------------------------------------------------
    async def link_account(
        self,
        *,
        coder_user_id: str,
        coder_username: str,
        key_id: str,
        ciphertext: bytes,
        identities: Sequence[Identity],
        token_kind: TokenKind = "token",
        token_expires_at: float | None = None,
    ) -> Account:
        """Create or update the account of ``coder_user_id`` (token replaced, status
        ``valid``, username refreshed) and attach ``identities``.

        An identity linked elsewhere moves here; another account left without any
        identity is deleted with its token. An empty ``login`` keeps the stored one.
        """
        wall = time.time()

        async def body(conn: aiosqlite.Connection) -> _Row:
            params = (coder_user_id, coder_username, key_id, ciphertext, wall, token_kind,
                      token_expires_at)
            row = next(iter(await conn.execute_fetchall(_Q["UPSERT_ACCOUNT"], params)))
            links = [(i.provider, i.external_id, i.login, row[0], wall) for i in identities]
            await conn.executemany(_Q["UPSERT_IDENTITY"], links)
            await conn.execute(_Q["DELETE_ORPHAN_ACCOUNTS_EXCEPT"], (row[0],))
            return row

        return account_from_row(await self._run(body, begin="BEGIN IMMEDIATE"))

    async def add_identity(self, account_id: int, identity: Identity, *, now: float) -> None:
        """See ``Store.add_identity``."""
        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute(_Q["UPSERT_IDENTITY"], (identity.provider, identity.external_id,
                                                       identity.login, account_id, now))
            await conn.execute(_Q["DELETE_ORPHAN_ACCOUNTS_EXCEPT"], (account_id,))

        await self._run(body, begin="BEGIN IMMEDIATE")

    async def find_account(self, provider: str, external_id: str) -> Account | None:
        """The account this tracker identity is linked to, if any."""
        row = await self._fetchone(_Q["FIND_ACCOUNT"], (provider, external_id))
        return account_from_row(row) if row is not None else None

    async def get_account(self, account_id: int) -> Account | None:
        """The account with this id, if any."""
        row = await self._fetchone(_Q["GET_ACCOUNT"], (account_id,))
        return account_from_row(row) if row is not None else None

    async def list_accounts(self) -> list[tuple[Account, list[Identity]]]:
        """Every account with its identities (by provider, id), ordered by username."""
        grouped: dict[int, tuple[Account, list[Identity]]] = {}
        for row in await self._fetchall(_Q["LIST_ACCOUNTS"]):
            entry = grouped.setdefault(int(row[0]), (account_from_row(row), []))
            if row[ACCOUNT_WIDTH] is not None:
                entry[1].append(identity_from_row(row[ACCOUNT_WIDTH:]))
        return list(grouped.values())

    async def token_keys(self) -> dict[str, int]:
        """See ``Store.token_keys``."""
        return {str(row[0]): int(row[1]) for row in await self._fetchall(_Q["TOKEN_KEYS"])}

    async def unlink(
        self,
        *,
        provider: str | None = None,
        external_id: str | None = None,
        coder_username: str | None = None,
    ) -> int:
        """Remove one identity (``provider`` + ``external_id``) or every account named
        ``coder_username`` with its identities. An account left without identities
        is deleted with its token.

        Returns the rows removed: identities plus accounts (0: nothing matched).
        Raises ``ValueError`` unless exactly one of the two forms is given.
        """
        usage = "unlink takes provider and external_id, or coder_username"
        if coder_username is not None:
            if provider is not None or external_id is not None:
                raise ValueError(usage)
            return await self._unlink_username(coder_username)
        if provider is None or external_id is None:
            raise ValueError(usage)
        return await self._unlink_identity(provider, external_id)

    async def _unlink_identity(self, provider: str, external_id: str) -> int:
        async def body(conn: aiosqlite.Connection) -> int:
            rows = list(await conn.execute_fetchall(_Q["DELETE_IDENTITY"],
                                                    (provider, external_id)))
            if not rows:
                return 0
            cursor = await conn.execute(_Q["DELETE_ACCOUNT_IF_ORPHAN"], (rows[0][0],))
            return 1 + int(cursor.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def _unlink_username(self, coder_username: str) -> int:
        async def body(conn: aiosqlite.Connection) -> int:
            identities = await conn.execute(_Q["DELETE_IDENTITIES_OF_USERNAME"],
                                            (coder_username,))
            removed = int(identities.rowcount)
            accounts = await conn.execute(_Q["DELETE_ACCOUNTS_OF_USERNAME"], (coder_username,))
            return removed + int(accounts.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def mark_token_invalid(self, account_id: int, *, ciphertext: bytes) -> None:
        """Set ``token_status`` to ``invalid`` (a re-link makes it ``valid`` again)."""
        await self._rowcount(_Q["SET_ACCOUNT_INVALID"], (account_id, time.time(), ciphertext))

    async def mark_token_used(self, account_id: int, *, now: float) -> None:
        """Set ``last_used_at`` to ``now`` unless it is already later."""
        await self._rowcount(_Q["SET_ACCOUNT_USED"], (account_id, now))

    async def set_allow_others(
        self, *, provider: str | None = None, external_id: str | None = None,
        coder_username: str | None = None, allow: bool,
    ) -> int:
        """See ``Store.set_allow_others``."""
        if coder_username is not None:
            return await self._rowcount(_Q["SET_ALLOW_OTHERS_BY_USERNAME"],
                                        (coder_username, int(allow)))
        return await self._rowcount(_Q["SET_ALLOW_OTHERS_BY_IDENTITY"],
                                    (provider, external_id, int(allow)))

    async def replace_tokens(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes,
        expires_at: float | None, now: float,
    ) -> bool:
        """See ``Store.replace_tokens`` (a compare-and-swap)."""
        params = (account_id, old_ciphertext, key_id, ciphertext, expires_at, now)
        return await self._rowcount(_Q["REPLACE_TOKENS"], params) == 1

    async def replace_ciphertext(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes
    ) -> bool:
        """Compare-and-swap: store (``key_id``, ``ciphertext``) only if the row still
        holds ``old_ciphertext``; True if swapped."""
        params = (account_id, old_ciphertext, key_id, ciphertext, time.time())
        return await self._rowcount(_Q["REPLACE_CIPHERTEXT"], params) == 1


def _save_params(d: Delegation) -> tuple[Any, ...]:
    """The parameters of ``SAVE_DELEGATION``, in its order."""
    return (d.id, d.state, d.account_id, d.task_kind, d.task_id, d.task_name, d.task_url,
            d.comment_id, d.attempts, d.last_error, d.updated_at, d.comment_sha256,
            d.trigger_json, d.acting_id, d.progress_json, d.follow_until, d.checked)


# -- connection helpers ---------------------------------------------------------------


def _create_private(path: Path) -> None:
    """Create the missing directories of ``path`` (0700) and the file itself (0600), so
    that nobody else on the host reads the deliveries or the encrypted tokens. SQLite
    gives its -wal and -shm files the database file's mode."""
    missing = [parent for parent in reversed(path.parents) if not parent.exists()]
    for directory in missing:
        directory.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def _configure(conn: aiosqlite.Connection, *, in_memory: bool) -> None:
    """WAL, synchronous=FULL, busy_timeout, foreign keys; StoreError if refused."""
    try:
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        mode = str(rows[0][0]).lower()
        if mode != "wal" and not in_memory:
            raise StoreError(f"SQLite refused WAL journal mode (got {mode!r})")
        for pragma in _SESSION_PRAGMAS:
            await conn.execute(pragma)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot configure SQLite: {exc}") from exc


async def _in_transaction(conn: aiosqlite.Connection, begin: str, body: _Body[_T]) -> _T:
    """``begin``; body; COMMIT, or ROLLBACK on any exception (then re-raised)."""
    await conn.execute(begin)
    try:
        result = await body(conn)
        await conn.execute("COMMIT")
    except BaseException:
        await _rollback_quietly(conn)
        raise
    return result


async def _rollback_quietly(conn: aiosqlite.Connection) -> None:
    """ROLLBACK if a transaction is open; errors here would hide the original one."""
    with contextlib.suppress(sqlite3.Error):  # no transaction was active any more
        await conn.execute("ROLLBACK")


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Mark a shielded task's exception as seen when its caller was cancelled."""
    if not task.cancelled():
        task.exception()


async def _applied_versions(conn: aiosqlite.Connection) -> set[int]:
    return {int(row[0]) for row in await conn.execute_fetchall(_APPLIED_VERSIONS)}


async def _apply(conn: aiosqlite.Connection, migration: Migration) -> bool:
    """Apply one migration in BEGIN IMMEDIATE; False if another process applied it first."""

    async def body(tx: aiosqlite.Connection) -> bool:
        if migration.version in await _applied_versions(tx):
            return False
        for statement in split_statements(migration.sql):
            await tx.execute(statement)
        await tx.execute(_RECORD_MIGRATION, (migration.version, migration.name, time.time()))
        return True

    try:
        return await _in_transaction(conn, "BEGIN IMMEDIATE", body)
    except sqlite3.Error as exc:
        raise StoreError(f"migration {migration.version:04d}_{migration.name}: {exc}") from exc


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements, using SQLite's own notion of a complete
    statement (so ``;`` inside strings, comments and trigger bodies is handled).

    Raises ``StoreError`` on trailing text that is not a complete statement.
    """
    statements: list[str] = []
    start = 0
    for match in re.finditer(";", script):
        candidate = script[start : match.end()]
        if sqlite3.complete_statement(candidate):
            if _COMMENTS.sub("", candidate).strip() != ";":
                statements.append(candidate.strip())
            start = match.end()
    if _COMMENTS.sub("", script[start:]).strip():
        raise StoreError("a migration ends with an incomplete SQL statement")
    return statements

