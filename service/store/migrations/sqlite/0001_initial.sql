-- coder-bridge schema, version 1 (SQLite >= 3.37: STRICT tables, RETURNING, UPSERT).
-- Applied inside one transaction by SQLiteStore.migrate(); never edit once released:
-- add 0002_*.sql instead. Times are UNIX seconds (REAL).

-- One row per accepted delivery; (tracker, delivery_id) is the dedupe key.
CREATE TABLE deliveries (
    id          INTEGER PRIMARY KEY,
    tracker     TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    issue_key   TEXT NOT NULL,
    event_json  TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (tracker, delivery_id)
) STRICT;

CREATE INDEX deliveries_by_received ON deliveries (received_at, id);
CREATE INDEX deliveries_by_delivery_id ON deliveries (delivery_id);

-- The durable queue. A job is leased by claim(): status 'running' with an owner and
-- lease_until; a running job whose lease has ended is claimable again.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    delivery_ref INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    issue_key    TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed')),
    run_at       REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  REAL,
    last_error   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
) STRICT;

-- claim(): due queued jobs in (run_at, id) order, and running jobs whose lease ended.
CREATE INDEX jobs_queued_by_run_at ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running_by_lease ON jobs (lease_until) WHERE status = 'running';
-- claim(): per-issue exclusivity (a leased job of the issue; an older live job of it).
CREATE INDEX jobs_running_by_issue ON jobs (issue_key, lease_until) WHERE status = 'running';
CREATE INDEX jobs_live_by_issue ON jobs (issue_key, run_at, id)
    WHERE status IN ('queued', 'running');
-- list_deliveries(): the newest job of a delivery.
CREATE INDEX jobs_by_delivery ON jobs (delivery_ref, id);
-- Never two live jobs for one delivery (I1 at the database level).
CREATE UNIQUE INDEX jobs_one_active_per_delivery ON jobs (delivery_ref)
    WHERE status IN ('queued', 'running');

-- Storing a delivery enqueues its job in the same statement, so accept() is a
-- single INSERT ... RETURNING: one atomic, durable implicit transaction.
CREATE TRIGGER deliveries_enqueue_job AFTER INSERT ON deliveries
BEGIN
    INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
    VALUES (NEW.id, NEW.issue_key, NEW.received_at, NEW.received_at, NEW.received_at);
END;

-- Linked Coder users; the token is AES-GCM ciphertext under vault key `key_id`.
CREATE TABLE accounts (
    id             INTEGER PRIMARY KEY,
    coder_user_id  TEXT NOT NULL UNIQUE,
    coder_username TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    ciphertext     BLOB NOT NULL,
    token_status   TEXT NOT NULL DEFAULT 'valid' CHECK (token_status IN ('valid', 'invalid')),
    last_used_at   REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;

CREATE INDEX accounts_by_username ON accounts (coder_username);
CREATE INDEX accounts_by_key_id ON accounts (key_id);

-- Tracker identities; each belongs to exactly one account.
CREATE TABLE identities (
    provider    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    login       TEXT NOT NULL DEFAULT '',
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    linked_at   REAL NOT NULL,
    PRIMARY KEY (provider, external_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX identities_by_account ON identities (account_id);

-- What the bridge did about one trigger of one issue; one row per generation.
CREATE TABLE delegations (
    id          INTEGER PRIMARY KEY,
    issue_key   TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    tracker     TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    account_id  INTEGER REFERENCES accounts (id) ON DELETE SET NULL,
    task_kind   TEXT,
    task_id     TEXT,
    task_name   TEXT,
    task_url    TEXT,
    comment_id  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    UNIQUE (issue_key, generation)
) STRICT;

CREATE INDEX delegations_by_account ON delegations (account_id);
