-- Status sync, commands in comments and consent (issue 14).

-- What a delivery holds: a trigger, a comment (a command), a change (label removed,
-- issue closed), or a status check the bridge asked itself for.
ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'trigger';

-- A delegation keeps its trigger (the issue, who asked), whose tracker account runs
-- it, what its comment shows besides the state, until when status checks follow it,
-- and what the last status check saw.
ALTER TABLE delegations ADD COLUMN trigger_json TEXT;
ALTER TABLE delegations ADD COLUMN acting_id TEXT;
ALTER TABLE delegations ADD COLUMN progress_json TEXT;
ALTER TABLE delegations ADD COLUMN follow_until REAL;
ALTER TABLE delegations ADD COLUMN checked TEXT;
-- The states the issue shows: a task that exists is starting or working until a
-- status check says otherwise. (Delegations made before this version kept no trigger,
-- so the bridge cannot comment for them: status checks leave them alone.)
UPDATE delegations SET state = 'starting' WHERE state = 'task_created';
UPDATE delegations SET state = 'working' WHERE state = 'active';
CREATE INDEX delegations_by_state ON delegations (state, updated_at);
CREATE INDEX delegations_followed ON delegations (account_id, follow_until)
    WHERE follow_until IS NOT NULL;

-- Whether others may delegate this person's issues to their account (consent), and
-- the schedule of status checks of the work running with it.
ALTER TABLE accounts ADD COLUMN allow_others INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN check_at REAL;
ALTER TABLE accounts ADD COLUMN check_owner TEXT;
ALTER TABLE accounts ADD COLUMN check_until REAL;
ALTER TABLE accounts ADD COLUMN check_failures INTEGER NOT NULL DEFAULT 0;

-- Follow-up messages for a task that cannot take them yet: the Tasks API has no
-- queue, so the bridge holds them until the agent is ready.
CREATE TABLE followups (
    id            INTEGER PRIMARY KEY,
    delegation_id INTEGER NOT NULL REFERENCES delegations (id) ON DELETE CASCADE,
    source        TEXT NOT NULL,
    text          TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'dropped')),
    created_at    REAL NOT NULL,
    sent_at       REAL,
    UNIQUE (delegation_id, source)
) STRICT;
CREATE INDEX followups_queued ON followups (delegation_id, id) WHERE status = 'queued';
