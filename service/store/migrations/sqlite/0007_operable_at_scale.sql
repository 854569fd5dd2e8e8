-- Operable at scale (issue 16).

-- Periodic work that one replica at a time does (the reconciliation sweep): who holds it,
-- until when, and when it last finished.
CREATE TABLE sweeps (
    name      TEXT PRIMARY KEY,
    owner     TEXT,
    until     REAL,
    last_at   REAL
) STRICT;

-- Writes that count against a budget shared by every replica (GitHub's content
-- limits are per token, not per process): one row per write, kept for an hour.
CREATE TABLE budget_spends (
    id      INTEGER PRIMARY KEY,
    budget  TEXT NOT NULL,
    at      REAL NOT NULL
) STRICT;
CREATE INDEX budget_spends_by_budget ON budget_spends (budget, at);
