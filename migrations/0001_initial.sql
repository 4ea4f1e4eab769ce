-- nanoclaw central DB, schema 1.
-- Tables follow NanoClaw v2 (reference §2.1) plus what DESIGN §5 adds: the inbound ledger,
-- scheduled_tasks / task_runs, runtime_updates and channel_state.
-- Every enum column has a CHECK and a DEFAULT (reference §12.12: v2's engage columns had neither).
-- Times are text in the fixed format of nanoclaw_protocol::time::format_ts (UTC, ms).

CREATE TABLE agent_groups (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    folder     TEXT NOT NULL UNIQUE CHECK (folder GLOB '[a-z0-9]*' AND folder NOT GLOB '*[^a-z0-9_-]*' AND length(folder) <= 64),
    created_at TEXT NOT NULL
);

CREATE TABLE container_configs (
    agent_group_id          TEXT PRIMARY KEY REFERENCES agent_groups(id) ON DELETE CASCADE,
    provider                TEXT NOT NULL DEFAULT 'echo',
    model                   TEXT,
    effort                  TEXT,
    image_tag               TEXT,
    image_tier              TEXT NOT NULL DEFAULT 'minimal' CHECK (image_tier IN ('minimal','standard')),
    assistant_name          TEXT,
    max_messages_per_prompt INTEGER NOT NULL DEFAULT 10 CHECK (max_messages_per_prompt BETWEEN 1 AND 100),
    skills                  TEXT NOT NULL DEFAULT '"all"',
    mcp_servers             TEXT NOT NULL DEFAULT '{}',
    packages_apt            TEXT NOT NULL DEFAULT '[]',
    packages_npm            TEXT NOT NULL DEFAULT '[]',
    additional_mounts       TEXT NOT NULL DEFAULT '[]',
    cli_scope               TEXT NOT NULL DEFAULT 'group' CHECK (cli_scope IN ('disabled','group','global')),
    updated_at              TEXT NOT NULL
);

CREATE TABLE messaging_groups (
    id                    TEXT PRIMARY KEY,
    channel_type          TEXT NOT NULL,
    platform_id           TEXT NOT NULL,
    name                  TEXT,
    is_group              INTEGER NOT NULL DEFAULT 0 CHECK (is_group IN (0,1)),
    unknown_sender_policy TEXT NOT NULL DEFAULT 'strict' CHECK (unknown_sender_policy IN ('strict','request_approval','public')),
    created_at            TEXT NOT NULL,
    denied_at             TEXT,
    UNIQUE (channel_type, platform_id)
);

-- Wirings: messaging group -> agent group, with engage rules and session mode.
CREATE TABLE messaging_group_agents (
    id                     TEXT PRIMARY KEY,
    messaging_group_id     TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
    agent_group_id         TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    session_mode           TEXT NOT NULL DEFAULT 'shared' CHECK (session_mode IN ('shared','per-thread','agent-shared')),
    priority               INTEGER NOT NULL DEFAULT 0,
    engage_mode            TEXT NOT NULL DEFAULT 'mention' CHECK (engage_mode IN ('pattern','mention','mention-sticky')),
    engage_pattern         TEXT,
    sender_scope           TEXT NOT NULL DEFAULT 'all' CHECK (sender_scope IN ('all','known')),
    ignored_message_policy TEXT NOT NULL DEFAULT 'drop' CHECK (ignored_message_policy IN ('drop','accumulate')),
    created_at             TEXT NOT NULL,
    UNIQUE (messaging_group_id, agent_group_id)
);
CREATE INDEX messaging_group_agents_ag ON messaging_group_agents (agent_group_id);

CREATE TABLE users (
    id           TEXT PRIMARY KEY CHECK (instr(id, ':') > 1),
    kind         TEXT NOT NULL,
    display_name TEXT,
    created_at   TEXT NOT NULL
);

-- Roles: owner is always global (agent_group_id NULL); admin is global or per agent group.
-- The primary key cannot hold a NULL agent_group_id uniquely, so uniqueness is an expression index.
CREATE TABLE user_roles (
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role           TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('owner','admin')),
    agent_group_id TEXT REFERENCES agent_groups(id) ON DELETE CASCADE,
    granted_by     TEXT,
    granted_at     TEXT NOT NULL,
    CHECK (role <> 'owner' OR agent_group_id IS NULL)
);
CREATE UNIQUE INDEX user_roles_unique ON user_roles (user_id, role, coalesce(agent_group_id, ''));
CREATE INDEX user_roles_ag ON user_roles (agent_group_id, role);

CREATE TABLE agent_group_members (
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    added_by       TEXT,
    added_at       TEXT NOT NULL,
    PRIMARY KEY (user_id, agent_group_id)
);

CREATE TABLE user_dms (
    user_id            TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    channel_type       TEXT NOT NULL,
    messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
    resolved_at        TEXT NOT NULL,
    PRIMARY KEY (user_id, channel_type)
);

CREATE TABLE sessions (
    id                   TEXT PRIMARY KEY,
    agent_group_id       TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    messaging_group_id   TEXT REFERENCES messaging_groups(id) ON DELETE SET NULL,
    thread_id            TEXT,
    agent_provider       TEXT,
    status               TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','closed')),
    container_status     TEXT NOT NULL DEFAULT 'stopped' CHECK (container_status IN ('starting','running','stopping','stopped')),
    container_generation INTEGER NOT NULL DEFAULT 0 CHECK (container_generation >= 0),
    -- Highest generation whose leftover claims were already counted as failed tries, so a
    -- restarted session actor never counts them twice.
    tries_counted_generation INTEGER NOT NULL DEFAULT 0,
    last_active          TEXT,
    created_at           TEXT NOT NULL
);
CREATE INDEX sessions_ag ON sessions (agent_group_id);
CREATE INDEX sessions_mg_thread ON sessions (messaging_group_id, thread_id);
-- One shared session per (agent group, messaging group, thread): the router relies on it.
CREATE UNIQUE INDEX sessions_active_unique ON sessions (agent_group_id, coalesce(messaging_group_id, ''), coalesce(thread_id, ''))
    WHERE status = 'active';

-- Named destinations of an agent group: the send ACL and the name map (reference §5.4).
CREATE TABLE agent_destinations (
    agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    local_name     TEXT NOT NULL,
    target_type    TEXT NOT NULL DEFAULT 'channel' CHECK (target_type IN ('channel','agent')),
    target_id      TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (agent_group_id, local_name)
);
CREATE INDEX agent_destinations_target ON agent_destinations (target_type, target_id);

CREATE TABLE pending_approvals (
    approval_id         TEXT PRIMARY KEY,
    session_id          TEXT REFERENCES sessions(id) ON DELETE SET NULL,
    request_id          TEXT NOT NULL,
    action              TEXT NOT NULL,
    payload             TEXT NOT NULL,
    payload_hash        TEXT NOT NULL,
    agent_group_id      TEXT REFERENCES agent_groups(id) ON DELETE CASCADE,
    approver_user_id    TEXT,
    channel_type        TEXT,
    platform_id         TEXT,
    platform_message_id TEXT,
    status              TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','approved','denied','expired','failed')),
    decided_by          TEXT,
    decided_at          TEXT,
    title               TEXT NOT NULL DEFAULT '',
    options_json        TEXT NOT NULL DEFAULT '[]',
    created_at          TEXT NOT NULL,
    expires_at          TEXT NOT NULL
);
CREATE INDEX pending_approvals_action_status ON pending_approvals (action, status);
CREATE INDEX pending_approvals_status_expiry ON pending_approvals (status, expires_at);

CREATE TABLE pending_questions (
    question_id    TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    message_out_id TEXT NOT NULL,
    platform_id    TEXT,
    channel_type   TEXT,
    thread_id      TEXT,
    title          TEXT NOT NULL,
    options_json   TEXT NOT NULL DEFAULT '[]',
    created_at     TEXT NOT NULL,
    expires_at     TEXT
);

CREATE TABLE pending_sender_approvals (
    id                 TEXT PRIMARY KEY,
    messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
    agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    sender_identity    TEXT NOT NULL,
    sender_name        TEXT,
    original_message   TEXT NOT NULL,
    approver_user_id   TEXT NOT NULL,
    title              TEXT NOT NULL DEFAULT '',
    options_json       TEXT NOT NULL DEFAULT '[]',
    created_at         TEXT NOT NULL,
    expires_at         TEXT,
    UNIQUE (messaging_group_id, sender_identity)
);

CREATE TABLE pending_channel_approvals (
    messaging_group_id TEXT PRIMARY KEY REFERENCES messaging_groups(id) ON DELETE CASCADE,
    agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    original_message   TEXT NOT NULL,
    approver_user_id   TEXT NOT NULL,
    title              TEXT NOT NULL DEFAULT '',
    options_json       TEXT NOT NULL DEFAULT '[]',
    created_at         TEXT NOT NULL,
    expires_at         TEXT
);

-- Dropped messages, keyed per chat and sender (reference §12.13: v2 keyed per chat only).
CREATE TABLE unregistered_senders (
    channel_type       TEXT NOT NULL,
    platform_id        TEXT NOT NULL,
    user_id            TEXT NOT NULL DEFAULT '',
    sender_name        TEXT,
    reason             TEXT NOT NULL CHECK (reason IN ('no_agent_wired','no_agent_engaged','unknown_sender_strict','unknown_sender_request_approval','channel_denied')),
    messaging_group_id TEXT,
    agent_group_id     TEXT,
    message_count      INTEGER NOT NULL DEFAULT 1 CHECK (message_count >= 1),
    first_seen         TEXT NOT NULL,
    last_seen          TEXT NOT NULL,
    PRIMARY KEY (channel_type, platform_id, user_id)
);
CREATE INDEX unregistered_senders_last_seen ON unregistered_senders (last_seen);

-- Durable inbound ledger: every platform message is committed here (deduplicated) before the
-- platform is acknowledged (DESIGN §5 invariant 2). 'received' rows are routed again after a crash.
CREATE TABLE inbound_ledger (
    id                  TEXT PRIMARY KEY,
    channel_type        TEXT NOT NULL,
    platform_message_id TEXT NOT NULL,
    platform_id         TEXT NOT NULL,
    thread_id           TEXT,
    sender_id           TEXT,
    event               TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'received' CHECK (status IN ('received','routed','dropped')),
    trace_id            TEXT NOT NULL,
    received_at         TEXT NOT NULL,
    routed_at           TEXT,
    UNIQUE (channel_type, platform_message_id)
);
CREATE INDEX inbound_ledger_status ON inbound_ledger (status, received_at);

-- Scheduled tasks live centrally with their own time zone and are materialized into the
-- session's inbound.db when due (DESIGN §5, §12).
CREATE TABLE scheduled_tasks (
    id             TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
    prompt         TEXT NOT NULL,
    script         TEXT,
    recurrence     TEXT,
    timezone       TEXT NOT NULL DEFAULT 'UTC',
    next_run_at    TEXT,
    catch_up       TEXT NOT NULL DEFAULT 'once' CHECK (catch_up IN ('skip','once')),
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','paused','cancelled','completed')),
    created_by     TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks (status, next_run_at);

CREATE TABLE task_runs (
    id            TEXT PRIMARY KEY,
    task_id       TEXT NOT NULL REFERENCES scheduled_tasks(id) ON DELETE CASCADE,
    scheduled_for TEXT NOT NULL,
    message_in_id TEXT,
    status        TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued','skipped','completed','failed')),
    created_at    TEXT NOT NULL,
    finished_at   TEXT,
    UNIQUE (task_id, scheduled_for)
);

CREATE TABLE runtime_updates (
    id             TEXT PRIMARY KEY,
    session_id     TEXT REFERENCES sessions(id) ON DELETE SET NULL,
    agent_group_id TEXT REFERENCES agent_groups(id) ON DELETE SET NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('git_pull','apply_skill','update_config','rebuild_container')),
    params         TEXT NOT NULL DEFAULT '{}',
    reason         TEXT,
    status         TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','approved','denied','expired','failed','applied')),
    approval_id    TEXT REFERENCES pending_approvals(approval_id) ON DELETE SET NULL,
    result         TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- Per-channel durable state (e.g. a Telegram poll offset), one value per key.
CREATE TABLE channel_state (
    channel_type TEXT NOT NULL,
    account      TEXT NOT NULL DEFAULT '',
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (channel_type, account, key)
);
