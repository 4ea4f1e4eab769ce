-- Issue 6: model providers, the credential proxy's token usage and budget notices.
--
-- container_configs.provider and image_tier become NULLable, NULL meaning "inherit": the
-- provider cascades session → group config → agent.provider (host config) → echo, and the tier
-- defaults to `standard` for a provider other than echo. The bootstrap wrote 'echo' and
-- 'minimal' as defaults, which would hide the host's agent.provider forever: they become NULL.
-- New: egress_allow (hosts web_fetch may reach; empty = off) and tools (which tools the model is
-- offered: "all" or {"only": [...]}).
-- SQLite cannot drop NOT NULL in place: the table is rebuilt (migrations run with foreign keys
-- off and are checked afterwards).
CREATE TABLE container_configs_new (
    agent_group_id          TEXT PRIMARY KEY REFERENCES agent_groups(id) ON DELETE CASCADE,
    provider                TEXT,
    model                   TEXT,
    effort                  TEXT,
    image_tag               TEXT,
    image_tier              TEXT CHECK (image_tier IS NULL OR image_tier IN ('minimal','standard')),
    assistant_name          TEXT,
    max_messages_per_prompt INTEGER NOT NULL DEFAULT 10 CHECK (max_messages_per_prompt BETWEEN 1 AND 100),
    skills                  TEXT NOT NULL DEFAULT '"all"',
    mcp_servers             TEXT NOT NULL DEFAULT '{}',
    packages_apt            TEXT NOT NULL DEFAULT '[]',
    packages_npm            TEXT NOT NULL DEFAULT '[]',
    additional_mounts       TEXT NOT NULL DEFAULT '[]',
    cli_scope               TEXT NOT NULL DEFAULT 'group' CHECK (cli_scope IN ('disabled','group','global')),
    egress_allow            TEXT NOT NULL DEFAULT '[]',
    tools                   TEXT NOT NULL DEFAULT '"all"',
    updated_at              TEXT NOT NULL
);
INSERT INTO container_configs_new (agent_group_id, provider, model, effort, image_tag, image_tier, assistant_name,
                                   max_messages_per_prompt, skills, mcp_servers, packages_apt, packages_npm,
                                   additional_mounts, cli_scope, updated_at)
    SELECT agent_group_id, nullif(provider, 'echo'), model, effort, image_tag, nullif(image_tier, 'minimal'),
           assistant_name, max_messages_per_prompt, skills, mcp_servers, packages_apt, packages_npm,
           additional_mounts, cli_scope, updated_at
      FROM container_configs;
DROP TABLE container_configs;
ALTER TABLE container_configs_new RENAME TO container_configs;

-- Tokens through the credential proxy per agent group, UTC day (YYYY-MM-DD) and provider.
CREATE TABLE token_usage (
    agent_group_id TEXT NOT NULL,
    day            TEXT NOT NULL,
    provider       TEXT NOT NULL,
    input_tokens   INTEGER NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens  INTEGER NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    requests       INTEGER NOT NULL DEFAULT 0 CHECK (requests >= 0),
    PRIMARY KEY (agent_group_id, day, provider)
);

-- Notes to the owner that must not repeat too often ("key refused" at most hourly, "budget
-- spent" at most daily), by a key naming what they are about.
CREATE TABLE owner_notices (
    key     TEXT PRIMARY KEY,
    sent_at TEXT NOT NULL
);
