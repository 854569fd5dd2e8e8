-- The same signed bytes under a new delivery id are the same delivery (a replay):
-- deliveries are also unique per tracker and SHA-256 of the body. Rows stored before
-- this version have none (NULLs never conflict).
ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT;
CREATE UNIQUE INDEX deliveries_unique_body ON deliveries (tracker, body_sha256);

-- Serving processes that run jobs, with their heartbeat: a job whose holder has
-- stopped beating is taken back within seconds instead of after its lease.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

-- What the delegation's comment shows now (SHA-256 of its body): it is edited only
-- when that changes.
ALTER TABLE delegations ADD COLUMN comment_sha256 TEXT;
