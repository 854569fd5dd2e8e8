-- One ingest path (the in-process group commit) and one accept contract for both
-- backends: a delivery's job is made in the transaction that stores it.
--
-- 1. Every stored delivery still without a job (migration 0003 made jobs at the next
--    claim) gets its first job now, queued at its arrival, in arrival order.
INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
SELECT d.id, d.issue_key, d.received_at, d.received_at, d.received_at
FROM deliveries AS d
WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.delivery_ref = d.id)
ORDER BY d.id;

-- 2. From now on, storing a delivery enqueues its job in the same statement again.
CREATE TRIGGER deliveries_enqueue_job AFTER INSERT ON deliveries
BEGIN
    INSERT INTO jobs (delivery_ref, issue_key, run_at, created_at, updated_at)
    VALUES (NEW.id, NEW.issue_key, NEW.received_at, NEW.received_at, NEW.received_at);
END;

-- 3. The same signed bytes under a new delivery id are the same delivery (a replay):
--    deliveries are also unique per tracker and SHA-256 of the body. Rows stored
--    before this version have none (NULLs never conflict).
ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT;
CREATE UNIQUE INDEX deliveries_unique_body ON deliveries (tracker, body_sha256);

-- 4. Serving processes that run jobs, with their heartbeat: a job whose holder has
--    stopped beating is taken back within seconds instead of after its lease.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL
) STRICT, WITHOUT ROWID;

-- What the delegation's comment shows now (SHA-256 of its body): it is edited only
-- when that changes.
ALTER TABLE delegations ADD COLUMN comment_sha256 TEXT;
