"""SQL shared by the SQLite and PostgreSQL backends, written once where the dialects agree.

Statements use PostgreSQL's numbered parameters (``$1``); ``for_sqlite`` turns them
into SQLite's (``?1``), which bind the same positional values. Where the dialects
differ (storing a batch, claiming jobs, migrations) each backend keeps its own SQL.
Column orders match the row mappers in ``service.store``.
"""

from __future__ import annotations

import re

_NUMBERED = re.compile(r"\$(\d+)")


def for_sqlite(sql: str) -> str:
    """``sql`` with ``$N`` parameters written as SQLite's ``?N``."""
    return _NUMBERED.sub(r"?\1", sql)


# -- jobs: each transition changes a job only while `owner` ($2) holds it (running) ----
RENEW_LEASE = """
UPDATE jobs SET lease_until = $3, updated_at = $4
WHERE id = $1 AND status = 'running' AND lease_owner = $2
"""
FINISH_JOB = """
UPDATE jobs SET status = 'done', updated_at = $3, outcome = $4
WHERE id = $1 AND status = 'running' AND lease_owner = $2
"""
RETRY_JOB = """
UPDATE jobs SET status = 'queued', run_at = $3, last_error = $4,
    lease_owner = NULL, lease_until = NULL, updated_at = $5
WHERE id = $1 AND status = 'running' AND lease_owner = $2
"""
FAIL_JOB = """
UPDATE jobs SET status = 'failed', last_error = $3, updated_at = $4, outcome = $5
WHERE id = $1 AND status = 'running' AND lease_owner = $2
"""
# $4: the new run_at, or NULL to keep it. The attempt is given back (never below 0).
RELEASE_JOB = """
UPDATE jobs SET status = 'queued',
    attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
    run_at = coalesce($4, run_at), lease_owner = NULL, lease_until = NULL, updated_at = $3
WHERE id = $1 AND status = 'running' AND lease_owner = $2
"""
QUEUE_STATS = """
SELECT
    (SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')),
    (SELECT min(oldest) FROM (
        SELECT min(run_at) AS oldest FROM jobs WHERE status = 'queued' AND run_at <= $1
        UNION ALL
        SELECT min(run_at) FROM jobs WHERE status = 'running' AND lease_until < $1) AS due)
"""

# -- workers ---------------------------------------------------------------------------
UPSERT_WORKER = """
INSERT INTO workers (id, started_at, heartbeat_at) VALUES ($1, $2, $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
"""
# Jobs of workers other than $1 whose heartbeat is older than $2 go back to the queue,
# to run at $3; then those workers are forgotten.
REQUEUE_JOBS_OF_STALE_WORKERS = """
UPDATE jobs SET status = 'queued', run_at = $3, lease_owner = NULL, lease_until = NULL,
    updated_at = $3
WHERE status = 'running'
  AND lease_owner IN (SELECT id FROM workers WHERE id <> $1 AND heartbeat_at < $2)
"""
DELETE_STALE_WORKERS = "DELETE FROM workers WHERE id <> $1 AND heartbeat_at < $2"
DELETE_WORKER = "DELETE FROM workers WHERE id = $1"

# -- deliveries ------------------------------------------------------------------------
# Each delivery with its newest job and the delegation it started (if it did), newest
# first; the event names the issue.
LIST_DELIVERIES = """
SELECT d.tracker, d.delivery_id, d.issue_key, d.received_at,
       j.status, coalesce(j.attempts, 0), j.last_error, g.state, g.task_url,
       d.kind, j.outcome, d.event_json
FROM deliveries AS d
LEFT JOIN jobs AS j
    ON j.id = (SELECT max(x.id) FROM jobs AS x WHERE x.delivery_ref = d.id)
LEFT JOIN delegations AS g
    ON g.id = (SELECT y.id FROM delegations AS y WHERE y.issue_key = d.issue_key
               AND y.delivery_id = d.delivery_id ORDER BY y.generation DESC LIMIT 1)
WHERE d.kind <> 'check'
ORDER BY d.id DESC
LIMIT $1
"""
DELIVERY_EXISTS = "SELECT 1 FROM deliveries WHERE delivery_id = $1 AND kind <> 'check' LIMIT 1"
# A fresh job for the newest delivery with this id unless one of its jobs is live; a
# concurrent requeue of the same delivery meets jobs_one_active_per_delivery and adds
# nothing.
REQUEUE_DELIVERY = """
INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
SELECT d.id, d.issue_key, $2, $2, $2 FROM deliveries AS d
WHERE d.id = (SELECT max(id) FROM deliveries WHERE delivery_id = $1)
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE delivery_ref = d.id
                  AND status IN ('queued', 'running'))
ON CONFLICT DO NOTHING
"""

# -- delegations -----------------------------------------------------------------------
_DELEGATION_COLUMNS = """
g.id, g.issue_key, g.generation, g.tracker, g.delivery_id, g.state, g.account_id, g.task_kind,
g.task_id, g.task_name, g.task_url, g.comment_id, g.attempts, g.last_error, g.created_at,
g.updated_at, g.comment_sha256, g.trigger_json, g.acting_id, g.progress_json, g.follow_until,
g.checked
"""
_DELEGATION_SELECT = "SELECT" + _DELEGATION_COLUMNS + "FROM delegations AS g"
CURRENT_DELEGATION = (_DELEGATION_SELECT
                      + " WHERE g.issue_key = $1 ORDER BY g.generation DESC LIMIT 1")
GET_DELEGATION = _DELEGATION_SELECT + " WHERE g.issue_key = $1 AND g.generation = $2"
GET_DELEGATION_BY_ID = _DELEGATION_SELECT + " WHERE g.id = $1"
# The newest generation of each issue, newest change first, with its Coder username;
# $2 is a comma-separated list of states, or '' for every state.
LIST_DELEGATIONS = ("SELECT" + _DELEGATION_COLUMNS + ", a.coder_username"  # noqa: S608 (constants)
                    + " FROM delegations AS g LEFT JOIN accounts AS a ON a.id = g.account_id"
                    + " WHERE g.generation = (SELECT max(x.generation) FROM delegations AS x"
                    + " WHERE x.issue_key = g.issue_key)"
                    + " AND ($2 = '' OR (',' || $2 || ',') LIKE ('%,' || g.state || ',%'))"
                    + " ORDER BY g.updated_at DESC, g.id DESC LIMIT $1")
COUNT_DELEGATIONS = """
SELECT g.state, count(*) FROM delegations AS g
WHERE g.generation = (SELECT max(x.generation) FROM delegations AS x
                      WHERE x.issue_key = g.issue_key)
GROUP BY g.state
"""
FOLLOWED_DELEGATIONS = (_DELEGATION_SELECT
                        + " WHERE g.account_id = $1 AND g.follow_until >= $2 ORDER BY g.id")
INSERT_DELEGATION = """
INSERT INTO delegations
    (issue_key, generation, tracker, delivery_id, state, created_at, updated_at)
VALUES ($1, $2, $3, $4, 'pending', $5, $5)
ON CONFLICT (issue_key, generation) DO NOTHING
"""
SAVE_DELEGATION = """
UPDATE delegations
SET state = $2, account_id = $3, task_kind = $4, task_id = $5, task_name = $6,
    task_url = $7, comment_id = $8, attempts = $9, last_error = $10, updated_at = $11,
    comment_sha256 = $12, trigger_json = $13, acting_id = $14, progress_json = $15,
    follow_until = $16, checked = $17
WHERE id = $1
"""
# A queued status check of the issue exists already ($1: issue key).
CHECK_QUEUED = """
SELECT 1 FROM jobs AS j JOIN deliveries AS d ON d.id = j.delivery_ref
WHERE j.issue_key = $1 AND j.status = 'queued' AND d.kind = 'check'
"""

# -- status checks ---------------------------------------------------------------------
FINISH_CHECKS = """
UPDATE accounts SET check_at = $3, check_failures = $4, check_owner = NULL, check_until = NULL
WHERE id = $1 AND check_owner = $2
"""

# -- sweeps: periodic work one replica at a time ---------------------------------------------
# Returns a row when $2 now holds sweep $1 (free, or its holder's lease ended before $3).
CLAIM_SWEEP = """
INSERT INTO sweeps (name, owner, until) VALUES ($1, $2, $4)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE sweeps.owner IS NULL OR sweeps.until < $3
RETURNING name
"""
FINISH_SWEEP = """
UPDATE sweeps SET owner = NULL, until = NULL, last_at = $3 WHERE name = $1 AND owner = $2
"""
LAST_SWEEP = "SELECT last_at FROM sweeps WHERE name = $1"

# -- shared budgets ------------------------------------------------------------------------
FORGET_SPENDS = "DELETE FROM budget_spends WHERE budget = $1 AND at <= $2"
LIST_SPENDS = "SELECT at FROM budget_spends WHERE budget = $1 ORDER BY at"
ADD_SPEND = "INSERT INTO budget_spends (budget, at) VALUES ($1, $2)"

# -- follow-ups --------------------------------------------------------------------------
ADD_FOLLOWUP = """
INSERT INTO followups (delegation_id, source, text, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (delegation_id, source) DO NOTHING
"""
QUEUED_FOLLOWUPS = """
SELECT id, delegation_id, source, text, created_at FROM followups
WHERE delegation_id = $1 AND status = 'queued' ORDER BY id
"""
SETTLE_FOLLOWUP = "UPDATE followups SET status = $2, sent_at = $3 WHERE id = $1"

# -- accounts --------------------------------------------------------------------------
_ACCOUNT_COLUMNS = """
a.id, a.coder_user_id, a.coder_username, a.key_id, a.ciphertext, a.token_status, a.last_used_at,
a.allow_others, a.token_kind, a.token_expires_at
"""
#: The number of account columns (identity columns follow them in LIST_ACCOUNTS).
ACCOUNT_WIDTH = 10
UPSERT_ACCOUNT = """
INSERT INTO accounts
    (coder_user_id, coder_username, key_id, ciphertext, token_status, created_at, updated_at,
     token_kind, token_expires_at)
VALUES ($1, $2, $3, $4, 'valid', $5, $5, $6, $7)
ON CONFLICT (coder_user_id) DO UPDATE
SET coder_username = excluded.coder_username, key_id = excluded.key_id,
    ciphertext = excluded.ciphertext, token_status = 'valid', updated_at = excluded.updated_at,
    token_kind = excluded.token_kind, token_expires_at = excluded.token_expires_at
RETURNING id, coder_user_id, coder_username, key_id, ciphertext, token_status, last_used_at,
    allow_others, token_kind, token_expires_at
"""
UPSERT_IDENTITY = """
INSERT INTO identities (provider, external_id, login, account_id, linked_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (provider, external_id) DO UPDATE
SET account_id = excluded.account_id, linked_at = excluded.linked_at,
    login = CASE WHEN excluded.login <> '' THEN excluded.login ELSE identities.login END
"""
DELETE_ORPHAN_ACCOUNTS_EXCEPT = """
DELETE FROM accounts
WHERE id <> $1 AND NOT EXISTS (SELECT 1 FROM identities AS i WHERE i.account_id = accounts.id)
"""
FIND_ACCOUNT = ("SELECT" + _ACCOUNT_COLUMNS
                + "FROM identities AS i JOIN accounts AS a ON a.id = i.account_id"
                + " WHERE i.provider = $1 AND i.external_id = $2")
GET_ACCOUNT = "SELECT" + _ACCOUNT_COLUMNS + "FROM accounts AS a WHERE a.id = $1"
TOKEN_KEYS = "SELECT key_id, count(*) FROM accounts GROUP BY key_id"
LIST_ACCOUNTS = ("SELECT" + _ACCOUNT_COLUMNS + ", i.provider, i.external_id, i.login"
                 + " FROM accounts AS a LEFT JOIN identities AS i ON i.account_id = a.id"
                 + " ORDER BY a.coder_username, a.id, i.provider, i.external_id")
DELETE_IDENTITY = """
DELETE FROM identities WHERE provider = $1 AND external_id = $2 RETURNING account_id
"""
DELETE_ACCOUNT_IF_ORPHAN = """
DELETE FROM accounts
WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM identities WHERE account_id = $1)
"""
DELETE_IDENTITIES_OF_USERNAME = """
DELETE FROM identities
WHERE account_id IN (SELECT id FROM accounts WHERE coder_username = $1)
"""
DELETE_ACCOUNTS_OF_USERNAME = "DELETE FROM accounts WHERE coder_username = $1"
SET_ACCOUNT_INVALID = """
UPDATE accounts SET token_status = 'invalid', updated_at = $2 WHERE id = $1 AND ciphertext = $3
"""
SET_ACCOUNT_USED = """
UPDATE accounts SET last_used_at = $2
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)
"""
SET_ALLOW_OTHERS_BY_IDENTITY = """
UPDATE accounts SET allow_others = $3
WHERE id = (SELECT account_id FROM identities WHERE provider = $1 AND external_id = $2)
"""
SET_ALLOW_OTHERS_BY_USERNAME = "UPDATE accounts SET allow_others = $2 WHERE coder_username = $1"
# A refreshed OAuth token pair replaces the one it was refreshed from ($2), only.
REPLACE_TOKENS = """
UPDATE accounts SET key_id = $3, ciphertext = $4, token_expires_at = $5, token_status = 'valid',
    updated_at = $6
WHERE id = $1 AND ciphertext = $2
"""
REPLACE_CIPHERTEXT = """
UPDATE accounts SET key_id = $3, ciphertext = $4, updated_at = $5
WHERE id = $1 AND ciphertext = $2
"""
