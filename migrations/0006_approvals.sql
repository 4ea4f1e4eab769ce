-- Issue 8: approvals as supervised actors.
--
-- * pending_approvals: rebuilt (nothing wrote it before this issue). One row per request of a
--   human decision: an agent's action, an unknown sender, a chat waiting for registration, or an
--   agent's question. The id is 6 base32 characters from a counter that only grows
--   (`approval_ids`), so an id is never reused, and fits a 64-byte button callback. The payload
--   is canonical JSON (sorted keys) and `payload_hash` its SHA-256 as shown on the card. Rows
--   stay 90 days after they are decided, for audit.
-- * pending_questions: the question's text and options; its id is the approval id of the
--   `question` row that carries its status, card, expiry and answer (`result`).
-- Rebuilt tables run with foreign keys off (the store checks them afterwards).

DROP TABLE pending_approvals;
CREATE TABLE pending_approvals (
    approval_id         TEXT PRIMARY KEY
                        CHECK (length(approval_id) = 6 AND approval_id NOT GLOB '*[^a-z2-7]*'),
    kind                TEXT NOT NULL CHECK (kind IN ('action','sender','channel','question')),
    action              TEXT NOT NULL,
    -- What asked: `<session id>:<messages_out id>` for an agent's action or question, the
    -- pending sender request's id, or the chat's messaging group id.
    request_id          TEXT NOT NULL,
    payload             TEXT NOT NULL,
    payload_hash        TEXT NOT NULL,
    agent_group_id      TEXT REFERENCES agent_groups(id) ON DELETE CASCADE,
    session_id          TEXT REFERENCES sessions(id) ON DELETE SET NULL,
    -- The chat and sender whose turn caused the request.
    origin_channel_type TEXT,
    origin_platform_id  TEXT,
    origin_thread_id    TEXT,
    origin_sender_id    TEXT,
    -- The approver the card went to, and where it is.
    approver_user_id    TEXT,
    card_channel_type   TEXT,
    card_platform_id    TEXT,
    card_thread_id      TEXT,
    card_message_id     TEXT,
    card_attempts       INTEGER NOT NULL DEFAULT 0 CHECK (card_attempts >= 0),
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending','approved','executed','failed','denied','expired','cancelled')),
    decided_by          TEXT,
    decided_via         TEXT CHECK (decided_via IN ('button','reply','ncl')),
    decided_at          TEXT,
    -- The option the decider picked on a card with more than approve / deny: for a chat waiting
    -- for registration, `connect:<agent group id>` or `new:<agent name>`.
    choice              TEXT,
    exec_attempts       INTEGER NOT NULL DEFAULT 0 CHECK (exec_attempts >= 0),
    result              TEXT,
    created_at          TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
-- One open approval per request (a repeat of the request finds it).
CREATE UNIQUE INDEX pending_approvals_open_request ON pending_approvals (kind, request_id)
    WHERE status IN ('pending','approved');
CREATE INDEX pending_approvals_status ON pending_approvals (status, approval_id);
CREATE INDEX pending_approvals_updated ON pending_approvals (updated_at);

CREATE TABLE approval_ids (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL CHECK (next >= 0)
);
-- Counter 0 would give `aaaaaa`: start at 1.
INSERT INTO approval_ids (id, next) VALUES (1, 1);

DROP TABLE pending_questions;
CREATE TABLE pending_questions (
    question_id    TEXT PRIMARY KEY REFERENCES pending_approvals(approval_id) ON DELETE CASCADE,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    message_out_id TEXT NOT NULL,
    -- The container generation that asked: only it waits for the answer as its tool's result;
    -- after a restart the answer is a note that wakes the agent.
    generation     INTEGER NOT NULL DEFAULT 0,
    channel_type   TEXT NOT NULL,
    platform_id    TEXT NOT NULL,
    thread_id      TEXT,
    title          TEXT NOT NULL,
    question       TEXT NOT NULL,
    options_json   TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE INDEX pending_questions_chat ON pending_questions (channel_type, platform_id);
