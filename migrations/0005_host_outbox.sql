-- Issue 7: the host's own outbox. A note the host itself sends to a chat (the refusal of an
-- admin-only command; later, approval cards) is a row here first, committed with the decision
-- that caused it, and delivered with the rule of every session outbox (DESIGN §5 invariant 3):
-- `sending` is committed before the send, so a crash mid-send is known at the next start (re-sent
-- with the same key on an idempotent channel, else failed, never sent twice). Finished rows are
-- deleted after `routing.dedupe_retention_days`.
CREATE TABLE host_outbox (
    id           TEXT PRIMARY KEY,
    channel_type TEXT NOT NULL,
    platform_id  TEXT NOT NULL,
    thread_id    TEXT,
    in_reply_to  TEXT,
    text         TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','sending','delivered','failed')),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error        TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX host_outbox_status ON host_outbox (status, created_at);
