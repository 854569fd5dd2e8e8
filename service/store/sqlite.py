"""The SQLite backend of :class:`service.store.base.Store` (one file; WAL lets replicas share it).

Durability and isolation:

* WAL journal with ``synchronous=FULL``: a method that returned has its commit
  fsynced, so an acknowledged delivery survives a crash or a power loss.
* ONE aiosqlite connection; an ``asyncio.Lock`` serialises every use of it, so
  the statements of concurrent coroutines never interleave inside a transaction.
* Multi-statement writes run in ``BEGIN IMMEDIATE`` (the write lock is taken
  first, so they never fail half-way on a lock upgrade). Single-statement writes
  (``accept``, the job transitions) run as SQLite's implicit transaction of that
  one statement, which is atomic and takes the write lock at its first step
  exactly as ``BEGIN IMMEDIATE`` would, and costs one thread round trip instead
  of three.
* Every operation runs in its own task shielded from the caller's cancellation:
  a cancelled caller cannot leave a transaction open on the shared connection,
  and a commit that started completes.

``accept`` stores a batch with one multi-row ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` (chunked above ``ACCEPT_CHUNK`` rows, then inside ``BEGIN
IMMEDIATE``), and nothing else: a stored delivery becomes a job in the
transaction of the next ``claim`` (or ``requeue_delivery``), which first gives
every delivery newer than the newest one with a job its first job, in arrival
order (``_ENQUEUE_NEW_DELIVERIES``; migration 0003 says why). Until then
``queue_stats`` and ``list_deliveries`` count and show it as queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import aiosqlite

from service.core.events import Tracker
from service.errors import StoreError
from service.store import (
    Migration,
    account_from_row,
    delegation_from_row,
    delivery_record_from_row,
    first_wins,
    identity_from_row,
    job_from_row,
    load_migrations,
)
from service.store.base import (
    Account,
    Delegation,
    DeliveryRecord,
    Identity,
    Job,
    NewDelivery,
)
from service.store.sqlite_accept import (
    ACCEPT_CHUNK,
    SESSION_PRAGMAS,
    delivery_params,
    insert_deliveries_sql,
)

__all__ = ["SQLiteStore", "split_statements"]

_T = TypeVar("_T")
_Row = Sequence[Any]
_Body = Callable[[aiosqlite.Connection], Awaitable[_T]]

_MIN_SQLITE = (3, 37, 0)  # STRICT tables; RETURNING and UPSERT are older

# -- SQL ------------------------------------------------------------------------
# The schema lives in migrations/sqlite/*.sql; the queries below are its API.

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

# The newest delivery that has a job (on jobs_by_delivery). Deliveries still without a
# job are those above it. Nothing below it lacks a job, because
# deliveries get growing ids, every job insert first runs this, and neither deliveries
# nor jobs are ever deleted. (A clean-up that deletes rows must keep the newest
# delivery and its jobs: a smaller max(delivery_ref) would give deliveries that ran
# long ago a second job, and a reused id would be skipped.)
# This gives the oldest 1,000 of them their first job, queued at their arrival, in
# arrival order (which the claim order by (run_at, id) and the per-issue order by id
# rely on). The limit keeps the write lock short after a long backlog (200,000
# deliveries took 1.7 s in one statement; the ingest writer gives up after 5 s); the
# rest follow at the next claims.
_NEWEST_WITH_A_JOB = "(SELECT coalesce(max(delivery_ref), 0) FROM jobs)"
_ENQUEUE_NEW_DELIVERIES = """
INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
SELECT id, issue_key, received_at, received_at, received_at FROM deliveries
WHERE id > {newest_with_a_job}
ORDER BY id
LIMIT 1000
"""
_ENQUEUE_NEW_DELIVERIES = _ENQUEUE_NEW_DELIVERIES.format(newest_with_a_job=_NEWEST_WITH_A_JOB)

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
    attempts, lease_owner, lease_until, run_at
"""

# Job transitions change a job only while `owner` holds it (running, its lease).
_RENEW_LEASE = """
UPDATE jobs SET lease_until = :until, updated_at = :wall
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""
_FINISH_JOB = """
UPDATE jobs SET status = 'done', updated_at = :wall
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""
_RETRY_JOB = """
UPDATE jobs SET status = 'queued', run_at = :run_at, last_error = :error,
    lease_owner = NULL, lease_until = NULL, updated_at = :wall
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""
_FAIL_JOB = """
UPDATE jobs SET status = 'failed', last_error = :error, updated_at = :wall
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""
_RELEASE_JOB = """
UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0),
    run_at = coalesce(:run_at, run_at), lease_owner = NULL, lease_until = NULL,
    updated_at = :wall
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""
# Deliveries still without a job count as queued jobs whose run_at is their arrival.
_QUEUE_STATS = """
SELECT
    (SELECT count(*) FROM jobs WHERE status IN ('queued', 'running'))
        + (SELECT count(*) FROM deliveries
           WHERE id > {newest_with_a_job}),
    (SELECT min(run_at) FROM (
        SELECT min(run_at) AS run_at FROM jobs WHERE status = 'queued' AND run_at <= :now
        UNION ALL
        SELECT min(run_at) FROM jobs WHERE status = 'running' AND lease_until < :now
        UNION ALL
        SELECT min(received_at) FROM deliveries
        WHERE id > {newest_with_a_job} AND received_at <= :now))
"""
_QUEUE_STATS = _QUEUE_STATS.format(newest_with_a_job=_NEWEST_WITH_A_JOB)

# A delivery without a job is waiting for its first claim: queued.
_LIST_DELIVERIES = """
SELECT d.tracker, d.delivery_id, d.issue_key, d.received_at,
       coalesce(j.status, 'queued'), coalesce(j.attempts, 0), j.last_error, g.state, g.task_url
FROM deliveries AS d
LEFT JOIN jobs AS j
    ON j.id = (SELECT max(x.id) FROM jobs AS x WHERE x.delivery_ref = d.id)
LEFT JOIN delegations AS g
    ON g.id = (SELECT y.id FROM delegations AS y WHERE y.issue_key = d.issue_key
               ORDER BY y.generation DESC LIMIT 1)
ORDER BY d.id DESC
LIMIT :limit
"""
# Only a delivery that has had a job: one still without (stored after the
# _ENQUEUE_NEW_DELIVERIES that requeue_delivery runs first) is queued already, and a
# job for it would hide the deliveries between from _ENQUEUE_NEW_DELIVERIES.
_REQUEUE_DELIVERY = """
INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
SELECT d.id, d.issue_key, :now, :now, :now FROM deliveries AS d
WHERE d.id = (SELECT id FROM deliveries
              WHERE tracker IN ({trackers}) AND delivery_id = :delivery_id
              ORDER BY id DESC LIMIT 1)
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE delivery_ref = d.id
                  AND status IN ('queued', 'running'))
  AND d.id <= {newest_with_a_job}
"""

# IN over every tracker lets SQLite use the (tracker, delivery_id) unique key.
_REQUEUE_DELIVERY = _REQUEUE_DELIVERY.format(
    trackers=", ".join(f"'{tracker}'" for tracker in get_args(Tracker)),
    newest_with_a_job=_NEWEST_WITH_A_JOB)

_CURRENT_DELEGATION = """
SELECT id, issue_key, generation, tracker, delivery_id, state, account_id, task_kind, task_id,
task_name, task_url, comment_id, attempts, last_error, created_at, updated_at
FROM delegations WHERE issue_key = ?
ORDER BY generation DESC LIMIT 1
"""
_INSERT_DELEGATION = """
INSERT INTO delegations
    (issue_key, generation, tracker, delivery_id, state, created_at, updated_at)
VALUES (:issue_key, :generation, :tracker, :delivery_id, 'pending', :now, :now)
ON CONFLICT (issue_key, generation) DO NOTHING
"""
_GET_DELEGATION = """
SELECT id, issue_key, generation, tracker, delivery_id, state, account_id, task_kind, task_id,
task_name, task_url, comment_id, attempts, last_error, created_at, updated_at
FROM delegations WHERE issue_key = ? AND generation = ?
"""
_SAVE_DELEGATION = """
UPDATE delegations
SET state = :state, account_id = :account_id, task_kind = :task_kind, task_id = :task_id,
    task_name = :task_name, task_url = :task_url, comment_id = :comment_id,
    attempts = :attempts, last_error = :last_error, updated_at = :updated_at
WHERE id = :id
"""

_UPSERT_ACCOUNT = """
INSERT INTO accounts
    (coder_user_id, coder_username, key_id, ciphertext, token_status, created_at, updated_at)
VALUES (:coder_user_id, :coder_username, :key_id, :ciphertext, 'valid', :wall, :wall)
ON CONFLICT (coder_user_id) DO UPDATE
SET coder_username = excluded.coder_username, key_id = excluded.key_id,
    ciphertext = excluded.ciphertext, token_status = 'valid', updated_at = excluded.updated_at
RETURNING id, coder_user_id, coder_username, key_id, ciphertext, token_status, last_used_at
"""
_UPSERT_IDENTITY = """
INSERT INTO identities (provider, external_id, login, account_id, linked_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (provider, external_id) DO UPDATE
SET account_id = excluded.account_id, linked_at = excluded.linked_at,
    login = CASE WHEN excluded.login <> '' THEN excluded.login ELSE identities.login END
"""
_DELETE_ORPHAN_ACCOUNTS_EXCEPT = """
DELETE FROM accounts
WHERE id <> ? AND NOT EXISTS (SELECT 1 FROM identities AS i WHERE i.account_id = accounts.id)
"""
_FIND_ACCOUNT = """
SELECT a.id, a.coder_user_id, a.coder_username, a.key_id, a.ciphertext, a.token_status,
a.last_used_at FROM identities AS i JOIN accounts AS a ON a.id = i.account_id
WHERE i.provider = ? AND i.external_id = ?
"""
_GET_ACCOUNT = """
SELECT a.id, a.coder_user_id, a.coder_username, a.key_id, a.ciphertext, a.token_status,
a.last_used_at FROM accounts AS a WHERE a.id = ?
"""
_LIST_ACCOUNTS = """
SELECT a.id, a.coder_user_id, a.coder_username, a.key_id, a.ciphertext, a.token_status,
a.last_used_at, i.provider, i.external_id, i.login
FROM accounts AS a LEFT JOIN identities AS i ON i.account_id = a.id
ORDER BY a.coder_username, a.id, i.provider, i.external_id
"""
_DELETE_IDENTITY = """
DELETE FROM identities WHERE provider = ? AND external_id = ? RETURNING account_id
"""
_DELETE_ACCOUNT_IF_ORPHAN = """
DELETE FROM accounts
WHERE id = ? AND NOT EXISTS (SELECT 1 FROM identities WHERE account_id = ?)
"""
_DELETE_IDENTITIES_OF_USERNAME = """
DELETE FROM identities
WHERE account_id IN (SELECT id FROM accounts WHERE coder_username = ?)
"""
_DELETE_ACCOUNTS_OF_USERNAME = "DELETE FROM accounts WHERE coder_username = ?"
_SET_ACCOUNT_INVALID = """
UPDATE accounts SET token_status = 'invalid', updated_at = ? WHERE id = ? AND ciphertext = ?
"""
_SET_ACCOUNT_USED = """
UPDATE accounts SET last_used_at = max(coalesce(last_used_at, :now), :now) WHERE id = :id
"""
_REPLACE_CIPHERTEXT = """
UPDATE accounts SET key_id = :key_id, ciphertext = :ciphertext, updated_at = :wall
WHERE id = :id AND ciphertext = :old_ciphertext
"""


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
        """Open (creating the file and its parent directory) and configure the database.

        Raises ``StoreError`` if SQLite is older than 3.37, or the file cannot be
        opened or switched to WAL.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old: 3.37 or newer needed")
        target = str(path)
        try:
            if target != ":memory:":
                Path(target).parent.mkdir(parents=True, exist_ok=True)
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
    def ingest_database(self) -> str | None:
        """The file, for the ingest writer process's connection of its own
        (``service.web.ingest.ProcessCommitter``); None for ``:memory:``, where a
        second connection would be another database."""
        return None if self._path == ":memory:" else self._path

    async def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store each delivery, in ONE committed transaction; the next ``claim`` gives
        each its job (see the module docstring).

        Up to ``ACCEPT_CHUNK`` deliveries take one statement and one thread round
        trip; larger batches run one statement per chunk inside ``BEGIN IMMEDIATE``.
        Returns, per input, True if new and False for a duplicate (including a
        repeat of an earlier input of the same batch: the first wins).
        """
        if not deliveries:
            return []
        chunks = [deliveries[i : i + ACCEPT_CHUNK] for i in range(0, len(deliveries), ACCEPT_CHUNK)]

        async def body(conn: aiosqlite.Connection) -> set[tuple[str, str]]:
            inserted: set[tuple[str, str]] = set()
            for chunk in chunks:
                rows = await conn.execute_fetchall(insert_deliveries_sql(len(chunk)),
                                                 delivery_params(chunk))
                inserted.update((row[0], row[1]) for row in rows)
            return inserted

        inserted = await self._run(body, begin="BEGIN IMMEDIATE" if len(chunks) > 1 else None)
        return first_wins(deliveries, inserted)

    # -- jobs -----------------------------------------------------------------------
    async def claim(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Give new deliveries their jobs, then lease up to ``limit`` runnable jobs to
        ``owner`` in one ``UPDATE ... RETURNING``.

        Two statements, each its own transaction: in one transaction the write lock
        would be held between them while the event loop runs other work, and the
        ingest writer's commits would wait for it. Giving jobs is complete by itself.

        Runnable: ``queued`` with ``run_at <= now``, or ``running`` whose lease
        ended before ``now`` (``lease_until < now``; a lease is valid through
        ``lease_until`` itself). At most one job per
        ``issue_key``, none of an issue with a job under a lease still valid at
        ``now``. Oldest ``run_at`` (then id) first; ``attempts`` is incremented.
        """
        if limit <= 0:
            return []
        params = {"owner": owner, "now": now, "until": now + lease_seconds, "limit": limit}

        async def body(conn: aiosqlite.Connection) -> list[_Row]:
            await conn.execute(_ENQUEUE_NEW_DELIVERIES)
            return list(await conn.execute_fetchall(_CLAIM, params))

        rows = await self._run(body)
        rows.sort(key=lambda row: (float(row[8]), int(row[0])))
        return [job_from_row(row) for row in rows]

    async def renew_lease(self, job_id: int, owner: str, *, until: float) -> bool:
        """Set the lease end to ``until``; False (and no change) if ``owner`` no longer
        holds the job. An owner whose lease ran out but whose job nobody re-claimed
        still holds it."""
        params = {"id": job_id, "owner": owner, "until": until, "wall": time.time()}
        return await self._rowcount(_RENEW_LEASE, params) == 1

    async def finish_job(self, job_id: int, owner: str) -> None:
        """Mark the job ``done``; a no-op unless ``owner`` holds it (running, its lease)."""
        await self._rowcount(_FINISH_JOB, {"id": job_id, "owner": owner, "wall": time.time()})

    async def retry_job(self, job_id: int, owner: str, *, run_at: float, error: str) -> None:
        """Queue the job again at ``run_at`` with ``last_error``, dropping the lease;
        a no-op unless ``owner`` holds it."""
        params = {"id": job_id, "owner": owner, "run_at": run_at, "error": error}
        await self._rowcount(_RETRY_JOB, {**params, "wall": time.time()})

    async def fail_job(self, job_id: int, owner: str, *, error: str) -> None:
        """Mark the job ``failed`` with ``last_error``; a no-op unless ``owner`` holds it."""
        params = {"id": job_id, "owner": owner, "error": error, "wall": time.time()}
        await self._rowcount(_FAIL_JOB, params)

    async def release_job(self, job_id: int, owner: str, *, run_at: float | None = None) -> None:
        """Give the job back: ``queued`` at ``run_at`` (None: its old one), lease
        dropped, this attempt not counted; a no-op unless ``owner`` holds it."""
        await self._rowcount(_RELEASE_JOB, {"id": job_id, "owner": owner, "run_at": run_at,
                                            "wall": time.time()})

    async def queue_stats(self, *, now: float) -> tuple[int, float]:
        """(jobs queued or running, seconds since the oldest runnable job's ``run_at``);
        a delivery still without its job counts as a job queued at its arrival."""
        row = await self._fetchone(_QUEUE_STATS, {"now": now})
        assert row is not None
        oldest = row[1]
        return int(row[0]), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)

    # -- deliveries (CLI) -----------------------------------------------------------
    async def list_deliveries(self, *, limit: int) -> list[DeliveryRecord]:
        """Newest ``received_at`` first, each with its newest job and the issue's
        newest delegation."""
        rows = await self._fetchall(_LIST_DELIVERIES, {"limit": limit})
        return [delivery_record_from_row(row) for row in rows]

    async def requeue_delivery(self, delivery_id: str, *, now: float) -> bool:
        """Enqueue a fresh job (attempts 0, ``run_at = now``) for the delivery unless
        it has a queued or running job. False if unknown or already live. Should two
        trackers share the id, the most recently received delivery is meant."""
        params = {"delivery_id": delivery_id, "now": now}

        async def body(conn: aiosqlite.Connection) -> int:
            await conn.execute(_ENQUEUE_NEW_DELIVERIES)
            cursor = await conn.execute(_REQUEUE_DELIVERY, params)
            return int(cursor.rowcount)

        return await self._run(body) == 1

    # -- delegations ----------------------------------------------------------------
    async def current_delegation(self, issue_key: str) -> Delegation | None:
        """The issue's delegation with the highest generation, if any."""
        row = await self._fetchone(_CURRENT_DELEGATION, (issue_key,))
        return delegation_from_row(row) if row is not None else None

    async def create_delegation(
        self, *, issue_key: str, tracker: str, delivery_id: str, generation: int, now: float
    ) -> Delegation:
        """Insert ``generation`` of the issue as ``pending``; if it exists, return the
        stored row unchanged (whatever its delivery)."""
        params = {
            "issue_key": issue_key,
            "generation": generation,
            "tracker": tracker,
            "delivery_id": delivery_id,
            "now": now,
        }

        async def body(conn: aiosqlite.Connection) -> _Row:
            await conn.execute(_INSERT_DELEGATION, params)
            rows = list(await conn.execute_fetchall(_GET_DELEGATION, (issue_key, generation)))
            return rows[0]

        return delegation_from_row(await self._run(body, begin="BEGIN IMMEDIATE"))

    async def save_delegation(self, delegation: Delegation) -> None:
        """Write the mutable fields (state, account, task_*, comment_id, attempts,
        last_error, updated_at) of the row with ``delegation.id``.

        Raises ``StoreError`` if no such row exists.
        """
        params = {
            "id": delegation.id,
            "state": delegation.state,
            "account_id": delegation.account_id,
            "task_kind": delegation.task_kind,
            "task_id": delegation.task_id,
            "task_name": delegation.task_name,
            "task_url": delegation.task_url,
            "comment_id": delegation.comment_id,
            "attempts": delegation.attempts,
            "last_error": delegation.last_error,
            "updated_at": delegation.updated_at,
        }
        if await self._rowcount(_SAVE_DELEGATION, params) != 1:
            raise StoreError(f"delegation {delegation.id} does not exist")

    # -- accounts -------------------------------------------------------------------
    async def link_account(
        self,
        *,
        coder_user_id: str,
        coder_username: str,
        key_id: str,
        ciphertext: bytes,
        identities: Sequence[Identity],
    ) -> Account:
        """Create or update the account of ``coder_user_id`` (token replaced, status
        ``valid``, username refreshed) and attach ``identities``.

        An identity linked elsewhere moves here; another account left without any
        identity is deleted with its token. An empty ``login`` keeps the stored one.
        """
        account = {
            "coder_user_id": coder_user_id,
            "coder_username": coder_username,
            "key_id": key_id,
            "ciphertext": ciphertext,
            "wall": time.time(),
        }

        async def body(conn: aiosqlite.Connection) -> _Row:
            row = next(iter(await conn.execute_fetchall(_UPSERT_ACCOUNT, account)))
            links = [
                (i.provider, i.external_id, i.login, row[0], account["wall"]) for i in identities
            ]
            await conn.executemany(_UPSERT_IDENTITY, links)
            await conn.execute(_DELETE_ORPHAN_ACCOUNTS_EXCEPT, (row[0],))
            return row

        return account_from_row(await self._run(body, begin="BEGIN IMMEDIATE"))

    async def find_account(self, provider: str, external_id: str) -> Account | None:
        """The account this tracker identity is linked to, if any."""
        row = await self._fetchone(_FIND_ACCOUNT, (provider, external_id))
        return account_from_row(row) if row is not None else None

    async def get_account(self, account_id: int) -> Account | None:
        """The account with this id, if any."""
        row = await self._fetchone(_GET_ACCOUNT, (account_id,))
        return account_from_row(row) if row is not None else None

    async def list_accounts(self) -> list[tuple[Account, list[Identity]]]:
        """Every account with its identities (by provider, id), ordered by username."""
        grouped: dict[int, tuple[Account, list[Identity]]] = {}
        for row in await self._fetchall(_LIST_ACCOUNTS):
            entry = grouped.setdefault(int(row[0]), (account_from_row(row), []))
            if row[7] is not None:
                entry[1].append(identity_from_row(row[7:]))
        return list(grouped.values())

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
            rows = list(await conn.execute_fetchall(_DELETE_IDENTITY, (provider, external_id)))
            if not rows:
                return 0
            account_id = rows[0][0]
            cursor = await conn.execute(_DELETE_ACCOUNT_IF_ORPHAN, (account_id, account_id))
            return 1 + int(cursor.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def _unlink_username(self, coder_username: str) -> int:
        async def body(conn: aiosqlite.Connection) -> int:
            identities = await conn.execute(_DELETE_IDENTITIES_OF_USERNAME, (coder_username,))
            removed = int(identities.rowcount)
            accounts = await conn.execute(_DELETE_ACCOUNTS_OF_USERNAME, (coder_username,))
            return removed + int(accounts.rowcount)

        return await self._run(body, begin="BEGIN IMMEDIATE")

    async def mark_token_invalid(self, account_id: int, *, ciphertext: bytes) -> None:
        """Set ``token_status`` to ``invalid`` (a re-link makes it ``valid`` again)."""
        await self._rowcount(_SET_ACCOUNT_INVALID, (time.time(), account_id, ciphertext))

    async def mark_token_used(self, account_id: int, *, now: float) -> None:
        """Set ``last_used_at`` to ``now`` unless it is already later."""
        await self._rowcount(_SET_ACCOUNT_USED, {"id": account_id, "now": now})

    async def replace_ciphertext(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes
    ) -> bool:
        """Compare-and-swap: store (``key_id``, ``ciphertext``) only if the row is still
        under ``old_key_id``; True if swapped."""
        params = {
            "id": account_id,
            "old_ciphertext": old_ciphertext,
            "key_id": key_id,
            "ciphertext": ciphertext,
            "wall": time.time(),
        }
        return await self._rowcount(_REPLACE_CIPHERTEXT, params) == 1


# -- connection helpers ---------------------------------------------------------------


async def _configure(conn: aiosqlite.Connection, *, in_memory: bool) -> None:
    """WAL, synchronous=FULL, busy_timeout, foreign keys; StoreError if refused."""
    try:
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        mode = str(rows[0][0]).lower()
        if mode != "wal" and not in_memory:
            raise StoreError(f"SQLite refused WAL journal mode (got {mode!r})")
        for pragma in SESSION_PRAGMAS:
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

