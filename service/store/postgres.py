"""The PostgreSQL backend of :class:`service.store.base.Store` (several processes).

* An asyncpg pool; each method is one statement or one transaction on one
  pooled connection (READ COMMITTED). Commits are durable on return under the
  server's default ``synchronous_commit = on``.
* ``accept`` is ONE statement: ``unnest`` of per-column arrays feeds an
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (either unique key: delivery id
  or body hash) whose rows a second CTE turns into jobs, so a batch is one round
  trip and one transaction.
* Workers beat in ``workers``; a heartbeat takes back the running jobs of workers
  that stopped beating, so a killed worker's jobs run again within seconds.
* ``claim`` locks its candidates ``FOR UPDATE SKIP LOCKED``: concurrent workers
  never wait for nor take each other's jobs. Only the oldest live job of an issue
  is ever a candidate, so two workers cannot lease two jobs of one issue.
* Migrations run each in a transaction holding an advisory lock, so replicas
  starting together apply each version once.

Objects live in the connection's ``search_path`` (``public`` by default); add
``?search_path=NAME`` to the URL to use another schema.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import asyncpg
import orjson

from service.core.pacing import Window, delay_needed
from service.errors import StoreError
from service.store import (
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

__all__ = ["PostgresStore"]

_MIGRATION_LOCK = 0x636F646572  # pg_advisory_xact_lock key: b"coder" as an integer

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""
_APPLIED_VERSIONS = "SELECT version FROM schema_migrations ORDER BY version"
_HAS_MIGRATIONS_TABLE = "SELECT to_regclass('schema_migrations') IS NOT NULL"
_RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)"

_ACCEPT = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[],
                         $6::text[], $7::text[])
        WITH ORDINALITY AS t (tracker, delivery_id, issue_key, event_json, received_at,
                              body_sha256, kind, ord)
), stored AS (
    INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, received_at,
                            body_sha256, kind)
    SELECT tracker, delivery_id, issue_key, event_json, received_at, body_sha256, kind
    FROM input ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id, tracker, delivery_id, issue_key, received_at
), enqueued AS (
    INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
    SELECT id, issue_key, received_at, received_at, received_at FROM stored
)
SELECT tracker, delivery_id FROM stored
"""

# Two candidate streams, each walked in (run_at, id) order on its partial index and
# locked SKIP LOCKED: due queued jobs, and running jobs whose lease ended (their worker
# died). A candidate is skipped if its issue has a job under a lease valid at $2 or an
# older live job (by id: arrival order, whatever the run_at), so only the oldest live
# job of an issue can ever be chosen, and a job retried or deferred to later keeps its
# issue's newer jobs waiting behind it.
_CLAIM = """
WITH due AS (
    SELECT j.id, j.run_at FROM jobs AS j
    WHERE j.status = 'queued' AND j.run_at <= $2
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status = 'running' AND o.lease_until >= $2)
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status IN ('queued', 'running')
                AND o.id < j.id)
    ORDER BY j.run_at, j.id
    LIMIT $4
    FOR UPDATE OF j SKIP LOCKED
), expired AS (
    SELECT j.id, j.run_at FROM jobs AS j
    WHERE j.status = 'running' AND j.lease_until < $2
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status = 'running' AND o.lease_until >= $2)
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS o
              WHERE o.issue_key = j.issue_key AND o.status IN ('queued', 'running')
                AND o.id < j.id)
    ORDER BY j.run_at, j.id
    LIMIT $4
    FOR UPDATE OF j SKIP LOCKED
), chosen AS (
    SELECT id FROM (SELECT id, run_at FROM due UNION ALL SELECT id, run_at FROM expired) AS c
    ORDER BY run_at, id
    LIMIT $4
)
UPDATE jobs
SET status = 'running', lease_owner = $1, lease_until = $3,
    attempts = jobs.attempts + 1, updated_at = $2
FROM chosen, deliveries AS d
WHERE jobs.id = chosen.id AND d.id = jobs.delivery_ref
RETURNING jobs.id, d.tracker, d.delivery_id, jobs.issue_key, d.event_json,
    jobs.attempts, jobs.lease_owner, jobs.lease_until, jobs.run_at, d.kind
"""
# Accounts due for a status check, oldest schedule first, locked SKIP LOCKED and leased.
_CLAIM_CHECKS = """
WITH due AS (
    SELECT a.id FROM accounts AS a
    WHERE a.token_status = 'valid'
      AND (a.check_at IS NULL OR a.check_at <= $2)
      AND (a.check_owner IS NULL OR a.check_until < $2)
      AND EXISTS (SELECT 1 FROM delegations AS g
                  WHERE g.account_id = a.id AND g.follow_until >= $2)
    ORDER BY coalesce(a.check_at, 0), a.id
    LIMIT $4
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE accounts SET check_owner = $1, check_until = $3
FROM due WHERE accounts.id = due.id
RETURNING accounts.id, accounts.check_failures
"""
_INSERT_CHECK = """
WITH stored AS (
    INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, received_at, kind)
    VALUES ($1, $2, $3, $4, $5, 'check')
    RETURNING id, issue_key, received_at
)
INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
SELECT id, issue_key, received_at, received_at, received_at FROM stored
"""

def _changed(status: str) -> int:
    """Rows changed, from asyncpg's command tag (``"UPDATE 3"``, ``"INSERT 0 1"``)."""
    return int(status.rsplit(" ", 1)[-1])


def connection_failure(url: str, exc: BaseException) -> str:
    """Why connecting to ``url`` failed, for an operator: where it tried (without the
    password) and what the server or the network said."""
    parsed = urlparse(url)
    try:
        port = parsed.port or 5432
    except ValueError:
        port = 5432
    where = (f"PostgreSQL at {parsed.hostname or 'localhost'}:{port}, database "
             f"{parsed.path.lstrip('/') or '(default)'}, user {parsed.username or '(default)'}")
    reason = str(exc) if isinstance(exc, OSError | asyncpg.PostgresError) else ""
    if parsed.password:
        reason = reason.replace(parsed.password, "***")
    reason = reason or type(exc).__name__
    return f"cannot connect to {where} (storage.url): {reason}"


class PostgresStore:
    """:class:`~service.store.base.Store` on PostgreSQL (see the module docstring).

    Create with ``await PostgresStore.open(url)``; every method is one transaction.
    """

    def __init__(self, pool: Any) -> None:
        """Wrap an opened asyncpg pool; prefer :meth:`open`."""
        self._pool: Any = pool

    def __repr__(self) -> str:
        return "PostgresStore()"  # never the URL: it may carry a password

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connect a pool to ``url``; ``StoreError`` if that fails, naming the server, the
        database, the user and the key ``storage.url``, never the password."""
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(connection_failure(url, exc)) from None
        return cls(pool)

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._require_pool().fetch(sql, *args))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def _execute(self, sql: str, *args: Any) -> int:
        """Run one write statement; the rows it changed."""
        try:
            return _changed(await self._require_pool().execute(sql, *args))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    async def _transaction(self, body: Any) -> Any:
        """Run ``body(conn)`` in one transaction on one pooled connection."""
        try:
            async with self._require_pool().acquire() as conn, conn.transaction():
                return await body(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    # -- lifecycle and health -------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply pending migrations, each in a transaction under an advisory lock.

        Raises ``StoreError`` if the database is newer than this code (a downgrade).
        """
        migrations = load_migrations("postgres")
        newest = migrations[-1].version if migrations else 0
        done: list[int] = []
        for migration in migrations:

            async def body(conn: Any, migration: Any = migration) -> bool:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(_CREATE_MIGRATIONS_TABLE)
                applied = {row[0] for row in await conn.fetch(_APPLIED_VERSIONS)}
                if applied and max(applied) > newest:
                    raise StoreError(
                        f"the database schema is version {max(applied)}, newer than this "
                        f"coder-bridge knows ({newest}): upgrade coder-bridge"
                    )
                if migration.version in applied:
                    return False
                await conn.execute(migration.sql)
                await conn.execute(
                    _RECORD_MIGRATION, migration.version, migration.name, time.time()
                )
                return True

            if await self._transaction(body):
                done.append(migration.version)
        return done

    async def schema_status(self) -> tuple[int, int]:
        """(highest version applied, 0 on an empty schema; newest version known)."""
        migrations = load_migrations("postgres")
        newest = migrations[-1].version if migrations else 0

        async def body(conn: Any) -> int:
            if not await conn.fetchval(_HAS_MIGRATIONS_TABLE):
                return 0
            versions = [row[0] for row in await conn.fetch(_APPLIED_VERSIONS)]
            return max(versions, default=0)

        return int(await self._transaction(body)), newest

    async def ping(self) -> None:
        """Raise ``StoreError`` unless ``SELECT 1`` answers."""
        row = await self._fetchrow("SELECT 1")
        if row is None or row[0] != 1:
            raise StoreError("PostgreSQL did not answer SELECT 1")

    async def close(self) -> None:
        """Close the pool (waiting for checked-out connections); idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- ingest ---------------------------------------------------------------------
    async def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store and enqueue the batch in ONE statement (one round trip, one
        transaction). Per input: True if new, False if a duplicate (same delivery id
        or same body; first wins)."""
        if not deliveries:
            return []
        rows = await self._fetch(
            _ACCEPT,
            [d.tracker for d in deliveries],
            [d.delivery_id for d in deliveries],
            [d.issue_key for d in deliveries],
            [d.event_json for d in deliveries],
            [float(d.received_at) for d in deliveries],
            [d.body_sha256 for d in deliveries],
            [d.kind for d in deliveries],
        )
        return first_wins(deliveries, {(row[0], row[1]) for row in rows})

    # -- jobs -----------------------------------------------------------------------
    async def claim(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` runnable jobs (``FOR UPDATE SKIP LOCKED``); see
        ``Store.claim``. A lease is valid through ``lease_until`` itself."""
        if limit <= 0:
            return []
        rows = await self._fetch(_CLAIM, owner, now, now + lease_seconds, limit)
        rows.sort(key=lambda row: (float(row[8]), int(row[0])))
        return [job_from_row(row) for row in rows]

    async def renew_lease(self, job_id: int, owner: str, *, until: float) -> bool:
        """Set the lease end; False (no change) if ``owner`` no longer holds the job."""
        return await self._execute(queries.RENEW_LEASE, job_id, owner, until, time.time()) == 1

    async def finish_job(self, job_id: int, owner: str, *, outcome: str = "") -> None:
        """Mark the job ``done``; a no-op unless ``owner`` holds it."""
        await self._execute(queries.FINISH_JOB, job_id, owner, time.time(), outcome or None)

    async def retry_job(self, job_id: int, owner: str, *, run_at: float, error: str) -> None:
        """Queue the job again at ``run_at`` with ``last_error``; a no-op unless
        ``owner`` holds it."""
        await self._execute(queries.RETRY_JOB, job_id, owner, run_at, error, time.time())

    async def fail_job(self, job_id: int, owner: str, *, error: str, outcome: str = "") -> None:
        """Mark the job ``failed``; a no-op unless ``owner`` holds it."""
        await self._execute(queries.FAIL_JOB, job_id, owner, error, time.time(),
                            outcome or None)

    async def release_job(self, job_id: int, owner: str, *, run_at: float | None = None) -> None:
        """Give the job back uncounted, at ``run_at`` (None: its old one); a no-op
        unless ``owner`` holds it."""
        await self._execute(queries.RELEASE_JOB, job_id, owner, time.time(), run_at)

    async def queue_stats(self, *, now: float) -> tuple[int, float]:
        """(jobs queued or running, seconds since the oldest runnable job's ``run_at``)."""
        row = await self._fetchrow(queries.QUEUE_STATS, now)
        oldest = row[1]
        return int(row[0]), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)

    # -- workers --------------------------------------------------------------------
    async def register_worker(self, owner: str, *, now: float) -> int:
        """Record ``owner``; replicas share the database, so nothing is taken back here
        (``heartbeat`` takes back the jobs of workers that stopped beating)."""
        await self._execute(queries.UPSERT_WORKER, owner, now)
        return 0

    async def heartbeat(self, owner: str, *, now: float, stale_after: float) -> int:
        """See ``Store.heartbeat``: beat, then take back the jobs of stale workers."""

        async def body(conn: Any) -> int:
            await conn.execute(queries.UPSERT_WORKER, owner, now)
            cutoff = now - stale_after
            taken = _changed(await conn.execute(queries.REQUEUE_JOBS_OF_STALE_WORKERS,
                                                owner, cutoff, now))
            await conn.execute(queries.DELETE_STALE_WORKERS, owner, cutoff)
            return taken

        return int(await self._transaction(body))

    async def unregister_worker(self, owner: str) -> None:
        """Forget ``owner``."""
        await self._execute(queries.DELETE_WORKER, owner)

    # -- deliveries (CLI) -----------------------------------------------------------
    async def list_deliveries(self, *, limit: int) -> list[DeliveryRecord]:
        """Newest first (by arrival), with the newest job and the issue's newest
        delegation."""
        rows = await self._fetch(queries.LIST_DELIVERIES, limit)
        return [delivery_record_from_row(row) for row in rows]

    async def delivery_exists(self, delivery_id: str) -> bool:
        """See ``Store.delivery_exists``."""
        return bool(await self._fetch(queries.DELIVERY_EXISTS, delivery_id))

    async def requeue_delivery(self, delivery_id: str, *, now: float) -> bool:
        """Enqueue a fresh job unless one is live; see ``SQLiteStore.requeue_delivery``."""
        return await self._execute(queries.REQUEUE_DELIVERY, delivery_id, now) == 1

    # -- delegations ----------------------------------------------------------------
    async def current_delegation(self, issue_key: str) -> Delegation | None:
        """The issue's delegation with the highest generation, if any."""
        row = await self._fetchrow(queries.CURRENT_DELEGATION, issue_key)
        return delegation_from_row(row) if row is not None else None

    async def create_delegation(
        self, *, issue_key: str, tracker: str, delivery_id: str, generation: int, now: float
    ) -> Delegation:
        """Insert ``generation`` as ``pending``; if it exists, return it unchanged."""

        async def body(conn: Any) -> Any:
            await conn.execute(queries.INSERT_DELEGATION, issue_key, generation, tracker,
                               delivery_id, now)
            return await conn.fetchrow(queries.GET_DELEGATION, issue_key, generation)

        return delegation_from_row(await self._transaction(body))

    async def save_delegation(self, delegation: Delegation) -> None:
        """Write the mutable fields; ``StoreError`` if the row does not exist."""
        d = delegation
        changed = await self._execute(
            queries.SAVE_DELEGATION, d.id, d.state, d.account_id, d.task_kind, d.task_id,
            d.task_name, d.task_url, d.comment_id, d.attempts, d.last_error, d.updated_at,
            d.comment_sha256, d.trigger_json, d.acting_id, d.progress_json, d.follow_until,
            d.checked)
        if changed != 1:
            raise StoreError(f"delegation {delegation.id} does not exist")

    async def get_delegation(self, delegation_id: int) -> Delegation | None:
        """The delegation with this id, if any."""
        row = await self._fetchrow(queries.GET_DELEGATION_BY_ID, delegation_id)
        return delegation_from_row(row) if row is not None else None

    async def list_delegations(
        self, *, states: Sequence[str] | None, limit: int
    ) -> list[tuple[Delegation, str | None]]:
        """See ``SQLiteStore.list_delegations``."""
        rows = await self._fetch(queries.LIST_DELEGATIONS, limit, ",".join(states or ()))
        return [(delegation_from_row(row), row[22]) for row in rows]

    async def count_delegations(self) -> dict[str, int]:
        """How many issues' newest delegations are in each state."""
        return {str(row[0]): int(row[1]) for row in await self._fetch(queries.COUNT_DELEGATIONS)}

    # -- status checks ------------------------------------------------------------
    async def claim_checks(
        self, owner: str, *, now: float, lease_seconds: float, limit: int
    ) -> list[CheckTarget]:
        """See ``Store.claim_checks`` (``FOR UPDATE SKIP LOCKED``)."""
        if limit <= 0:
            return []
        rows = await self._fetch(_CLAIM_CHECKS, owner, now, now + lease_seconds, limit)
        targets = []
        for account_id, failures in sorted((int(row[0]), int(row[1])) for row in rows):
            account = await self.get_account(account_id)
            followed = await self._fetch(queries.FOLLOWED_DELEGATIONS, account_id, now)
            if account is not None:
                targets.append(CheckTarget(account, [delegation_from_row(r) for r in followed],
                                           failures))
        return targets

    async def finish_checks(
        self, account_id: int, owner: str, *, next_at: float, failures: int
    ) -> None:
        """See ``Store.finish_checks``."""
        await self._execute(queries.FINISH_CHECKS, account_id, owner, next_at, failures)

    async def request_check(
        self, delegation: Delegation, *, seen: str, now: float, reason: str
    ) -> bool:
        """See ``SQLiteStore.request_check``."""
        event = orjson.dumps({"delegation_id": delegation.id, "reason": reason,
                             "seen": seen}).decode()
        delivery_id = f"check:{delegation.id}:{now:.6f}"

        async def body(conn: Any) -> bool:
            # Serialise the checks of one issue (two replicas must not both queue one).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               delegation.issue_key)
            if await conn.fetchval(queries.CHECK_QUEUED, delegation.issue_key):
                return False
            await conn.execute(_INSERT_CHECK, delegation.tracker, delivery_id,
                               delegation.issue_key, event, now)
            return True

        return bool(await self._transaction(body))

    # -- sweeps and shared budgets ---------------------------------------------------
    async def claim_sweep(self, name: str, owner: str, *, now: float, lease: float) -> bool:
        """See ``Store.claim_sweep``."""
        return bool(await self._fetch(queries.CLAIM_SWEEP, name, owner, now, now + lease))

    async def finish_sweep(self, name: str, owner: str, *, now: float) -> None:
        """See ``Store.finish_sweep``."""
        await self._execute(queries.FINISH_SWEEP, name, owner, now)

    async def last_sweep(self, name: str) -> float | None:
        """See ``Store.last_sweep``."""
        rows = await self._fetch(queries.LAST_SWEEP, name)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def take_budget(self, budget: str, *, now: float, windows: Sequence[Window],
                          take: bool = True) -> float:
        """See ``Store.take_budget``: serialised per budget with an advisory lock."""
        longest = max((span for _, span in windows), default=0.0)

        async def body(conn: Any) -> float:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"budget:{budget}")
            await conn.execute(queries.FORGET_SPENDS, budget, now - longest)
            spends = [float(r[0]) for r in await conn.fetch(queries.LIST_SPENDS, budget)]
            wait = delay_needed(spends, windows, now)
            if wait <= 0 and take:
                await conn.execute(queries.ADD_SPEND, budget, max([now, *spends[-1:]]))
            return wait

        return float(await self._transaction(body))

    # -- follow-ups ---------------------------------------------------------------
    async def add_followup(
        self, delegation_id: int, *, source: str, text: str, now: float
    ) -> bool:
        """Hold a follow-up; False if ``source`` was added before."""
        return await self._execute(queries.ADD_FOLLOWUP, delegation_id, source, text, now) == 1

    async def queued_followups(self, delegation_id: int) -> list[Followup]:
        """The follow-ups still waiting, oldest first."""
        return [followup_from_row(row)
                for row in await self._fetch(queries.QUEUED_FOLLOWUPS, delegation_id)]

    async def settle_followup(self, followup_id: int, *, sent: bool, now: float) -> None:
        """Mark a follow-up sent or dropped."""
        await self._execute(queries.SETTLE_FOLLOWUP, followup_id,
                            "sent" if sent else "dropped", now)

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
        """See ``SQLiteStore.link_account``: same semantics."""
        wall = time.time()

        async def body(conn: Any) -> Any:
            row = await conn.fetchrow(
                queries.UPSERT_ACCOUNT, coder_user_id, coder_username, key_id, ciphertext, wall,
                token_kind, token_expires_at)
            links = [(i.provider, i.external_id, i.login, row[0], wall) for i in identities]
            if links:
                await conn.executemany(queries.UPSERT_IDENTITY, links)
            await conn.execute(queries.DELETE_ORPHAN_ACCOUNTS_EXCEPT, row[0])
            return row

        return account_from_row(await self._transaction(body))

    async def add_identity(self, account_id: int, identity: Identity, *, now: float) -> None:
        """See ``Store.add_identity``."""
        async def body(conn: Any) -> None:
            await conn.execute(queries.UPSERT_IDENTITY, identity.provider, identity.external_id,
                               identity.login, account_id, now)
            await conn.execute(queries.DELETE_ORPHAN_ACCOUNTS_EXCEPT, account_id)

        await self._transaction(body)

    async def find_account(self, provider: str, external_id: str) -> Account | None:
        """The account this tracker identity is linked to, if any."""
        row = await self._fetchrow(queries.FIND_ACCOUNT, provider, external_id)
        return account_from_row(row) if row is not None else None

    async def get_account(self, account_id: int) -> Account | None:
        """The account with this id, if any."""
        row = await self._fetchrow(queries.GET_ACCOUNT, account_id)
        return account_from_row(row) if row is not None else None

    async def list_accounts(self) -> list[tuple[Account, list[Identity]]]:
        """Every account with its identities, ordered by username."""
        grouped: dict[int, tuple[Account, list[Identity]]] = {}
        for row in await self._fetch(queries.LIST_ACCOUNTS):
            entry = grouped.setdefault(int(row[0]), (account_from_row(row), []))
            if row[queries.ACCOUNT_WIDTH] is not None:
                entry[1].append(identity_from_row(tuple(row)[queries.ACCOUNT_WIDTH:]))
        return list(grouped.values())

    async def token_keys(self) -> dict[str, int]:
        """See ``Store.token_keys``."""
        return {str(row[0]): int(row[1]) for row in await self._fetch(queries.TOKEN_KEYS)}

    async def unlink(
        self,
        *,
        provider: str | None = None,
        external_id: str | None = None,
        coder_username: str | None = None,
    ) -> int:
        """See ``SQLiteStore.unlink``: identities plus accounts removed."""
        usage = "unlink takes provider and external_id, or coder_username"
        if coder_username is not None:
            if provider is not None or external_id is not None:
                raise ValueError(usage)
            return int(await self._transaction(_unlink_username(coder_username)))
        if provider is None or external_id is None:
            raise ValueError(usage)
        return int(await self._transaction(_unlink_identity(provider, external_id)))

    async def mark_token_invalid(self, account_id: int, *, ciphertext: bytes) -> None:
        """Set ``token_status`` to ``invalid``."""
        await self._execute(queries.SET_ACCOUNT_INVALID, account_id, time.time(), ciphertext)

    async def mark_token_used(self, account_id: int, *, now: float) -> None:
        """Set ``last_used_at`` to ``now`` unless it is already later."""
        await self._execute(queries.SET_ACCOUNT_USED, account_id, now)

    async def set_allow_others(
        self, *, provider: str | None = None, external_id: str | None = None,
        coder_username: str | None = None, allow: bool,
    ) -> int:
        """See ``Store.set_allow_others``."""
        if coder_username is not None:
            return await self._execute(queries.SET_ALLOW_OTHERS_BY_USERNAME, coder_username,
                                       allow)
        return await self._execute(queries.SET_ALLOW_OTHERS_BY_IDENTITY, provider, external_id,
                                   allow)

    async def replace_tokens(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes,
        expires_at: float | None, now: float,
    ) -> bool:
        """See ``Store.replace_tokens`` (a compare-and-swap)."""
        changed = await self._execute(queries.REPLACE_TOKENS, account_id, old_ciphertext,
                                      key_id, ciphertext, expires_at, now)
        return changed == 1

    async def replace_ciphertext(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes
    ) -> bool:
        """Compare-and-swap on the key id; True if swapped."""
        changed = await self._execute(
            queries.REPLACE_CIPHERTEXT, account_id, old_ciphertext, key_id, ciphertext, time.time()
        )
        return changed == 1


def _unlink_identity(provider: str, external_id: str) -> Any:
    async def body(conn: Any) -> int:
        account_id = await conn.fetchval(queries.DELETE_IDENTITY, provider, external_id)
        if account_id is None:
            return 0
        return 1 + _changed(await conn.execute(queries.DELETE_ACCOUNT_IF_ORPHAN, account_id))

    return body


def _unlink_username(coder_username: str) -> Any:
    async def body(conn: Any) -> int:
        identities = await conn.execute(queries.DELETE_IDENTITIES_OF_USERNAME, coder_username)
        accounts = await conn.execute(queries.DELETE_ACCOUNTS_OF_USERNAME, coder_username)
        return _changed(identities) + _changed(accounts)

    return body
