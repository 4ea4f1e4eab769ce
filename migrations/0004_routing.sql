-- Issue 7: routing and permissions.
--
-- * inbound_ledger: the refusal reason of a `dropped` entry; the event body is cleared ('') once
--   the entry is finished, and finished keys are deleted after `routing.dedupe_retention`.
-- * unregistered_senders: one row per (chat, sender, reason), the reasons CHECKed (v2 kept one
--   row per chat and overwrote the reason, counting one refusal twice: reference §12.13).
-- * sessions: the session mode it was created under. `agent-shared` sessions are one per agent
--   group (they serve every chat wired that way), the others one per (group, chat, thread).
-- * pending_sender_approvals / pending_channel_approvals: a status, so a denied sender stays
--   denied and the "which name for the new agent?" wait is a row, not memory. The approver is
--   chosen when the card is sent (the approvals issue): nullable until then.
-- * agent_destinations: names checked ([a-z0-9-], 1-64), as written by the one domain function.
-- Rebuilt tables run with foreign keys off (the store checks them afterwards).

ALTER TABLE inbound_ledger ADD COLUMN drop_reason TEXT;

CREATE TABLE unregistered_senders_new (
    channel_type       TEXT NOT NULL,
    platform_id        TEXT NOT NULL,
    user_id            TEXT NOT NULL DEFAULT '',
    reason             TEXT NOT NULL CHECK (reason IN ('unknown_chat','no_agent_wired','no_agent_engaged',
                           'unknown_sender_strict','unknown_sender_request_approval','sender_denied',
                           'channel_denied','command_filtered')),
    sender_name        TEXT,
    messaging_group_id TEXT,
    agent_group_id     TEXT,
    message_count      INTEGER NOT NULL DEFAULT 1 CHECK (message_count >= 1),
    first_seen         TEXT NOT NULL,
    last_seen          TEXT NOT NULL,
    PRIMARY KEY (channel_type, platform_id, user_id, reason)
);
INSERT INTO unregistered_senders_new (channel_type, platform_id, user_id, reason, sender_name, messaging_group_id,
                                      agent_group_id, message_count, first_seen, last_seen)
    SELECT channel_type, platform_id, user_id, reason, sender_name, messaging_group_id, agent_group_id,
           message_count, first_seen, last_seen
      FROM unregistered_senders;
DROP TABLE unregistered_senders;
ALTER TABLE unregistered_senders_new RENAME TO unregistered_senders;
CREATE INDEX unregistered_senders_last_seen ON unregistered_senders (last_seen);

ALTER TABLE sessions ADD COLUMN session_mode TEXT NOT NULL DEFAULT 'shared'
    CHECK (session_mode IN ('shared','per-thread','agent-shared'));
DROP INDEX sessions_open_unique;
CREATE UNIQUE INDEX sessions_open_unique ON sessions (agent_group_id, coalesce(messaging_group_id, ''), coalesce(thread_id, ''))
    WHERE status <> 'closed' AND session_mode <> 'agent-shared';
CREATE UNIQUE INDEX sessions_agent_shared_unique ON sessions (agent_group_id)
    WHERE status <> 'closed' AND session_mode = 'agent-shared';

DROP TABLE pending_sender_approvals;
CREATE TABLE pending_sender_approvals (
    id                 TEXT PRIMARY KEY,
    messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
    agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    sender_identity    TEXT NOT NULL,
    sender_name        TEXT,
    -- The ledger entry of the first refused message; its event is replayed on approval.
    ledger_id          TEXT NOT NULL,
    original_message   TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','denied')),
    approver_user_id   TEXT,
    decided_by         TEXT,
    created_at         TEXT NOT NULL,
    decided_at         TEXT,
    UNIQUE (messaging_group_id, sender_identity)
);

DROP TABLE pending_channel_approvals;
CREATE TABLE pending_channel_approvals (
    messaging_group_id TEXT PRIMARY KEY REFERENCES messaging_groups(id) ON DELETE CASCADE,
    sender_identity    TEXT,
    ledger_id          TEXT NOT NULL,
    original_message   TEXT NOT NULL,
    -- 'awaiting_name': the approver chose "a new agent" and the host waits for the name.
    status             TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','awaiting_name')),
    approver_user_id   TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);

CREATE TABLE agent_destinations_new (
    agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    local_name     TEXT NOT NULL CHECK (length(local_name) BETWEEN 1 AND 64 AND local_name NOT GLOB '*[^a-z0-9-]*'),
    target_type    TEXT NOT NULL DEFAULT 'channel' CHECK (target_type IN ('channel','agent')),
    target_id      TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (agent_group_id, local_name)
);
INSERT INTO agent_destinations_new SELECT * FROM agent_destinations;
DROP TABLE agent_destinations;
ALTER TABLE agent_destinations_new RENAME TO agent_destinations;
CREATE INDEX agent_destinations_target ON agent_destinations (target_type, target_id);
