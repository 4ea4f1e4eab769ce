-- Sessions gain the statuses 'quarantined' (its container broke the rules for container files:
-- see docs/architecture.md) and 'paused' (its workspace is over its size cap), with the reason and
-- since when; and `work_pending`, set while the session has work the host must come back to
-- (pending inbound rows, output not yet final), so start-up finds every such session with one
-- indexed query instead of opening every session's files.
-- SQLite cannot change a CHECK in place: the table is rebuilt (the store runs migrations with
-- foreign keys off and checks them afterwards).
CREATE TABLE sessions_new (
    id                   TEXT PRIMARY KEY,
    agent_group_id       TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    messaging_group_id   TEXT REFERENCES messaging_groups(id) ON DELETE SET NULL,
    thread_id            TEXT,
    agent_provider       TEXT,
    status               TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','quarantined','paused','closed')),
    status_reason        TEXT,
    status_since         TEXT,
    container_status     TEXT NOT NULL DEFAULT 'stopped' CHECK (container_status IN ('starting','running','stopping','stopped')),
    container_generation INTEGER NOT NULL DEFAULT 0 CHECK (container_generation >= 0),
    tries_counted_generation INTEGER NOT NULL DEFAULT 0,
    work_pending         INTEGER NOT NULL DEFAULT 1 CHECK (work_pending IN (0,1)),
    last_active          TEXT,
    created_at           TEXT NOT NULL
);
INSERT INTO sessions_new (id, agent_group_id, messaging_group_id, thread_id, agent_provider, status,
                          container_status, container_generation, tries_counted_generation, last_active, created_at)
    SELECT id, agent_group_id, messaging_group_id, thread_id, agent_provider, status,
           container_status, container_generation, tries_counted_generation, last_active, created_at
      FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_ag ON sessions (agent_group_id);
CREATE INDEX sessions_mg_thread ON sessions (messaging_group_id, thread_id);
-- One open session per (agent group, messaging group, thread): a quarantined or paused session
-- still owns its chat (its messages are kept for when it is released).
CREATE UNIQUE INDEX sessions_open_unique ON sessions (agent_group_id, coalesce(messaging_group_id, ''), coalesce(thread_id, ''))
    WHERE status <> 'closed';
CREATE INDEX sessions_work ON sessions (work_pending) WHERE work_pending = 1;
