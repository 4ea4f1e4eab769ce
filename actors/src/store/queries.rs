//! The central-DB operations the service performs, as plain functions on a connection (run them
//! through [`super::Store::call`]). Each write that must be atomic runs in one transaction.

use super::{SqlContext, StoreError};
use nanoclaw_protocol::rows::{Destination, DestinationType};
use nanoclaw_protocol::time::now_ts;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Id of the agent group created on first run.
pub const MAIN_AGENT_GROUP_ID: &str = "ag-main";
/// Folder of the agent group created on first run.
pub const MAIN_AGENT_GROUP_FOLDER: &str = "main";
/// The owner user created on first run: the local CLI user.
pub const CLI_OWNER_USER_ID: &str = "cli:local";
/// Platform id of the one CLI chat.
pub const CLI_PLATFORM_ID: &str = "local";
/// Id of the CLI messaging group created on first run.
pub const CLI_MESSAGING_GROUP_ID: &str = "mg-cli-local";

/// What [`bootstrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapReport {
    /// True when this call created the defaults (first run); false when they already existed.
    pub created: bool,
}

/// First run: creates agent group `main` (the host's default provider, global CLI scope as the owner's
/// agent), owner user `cli:local`, the CLI messaging group, a wiring that engages on every
/// message with a shared session, and the `cli` destination. Idempotent: later calls change
/// nothing (a user's edits to these rows are kept).
pub fn bootstrap(conn: &mut Connection) -> Result<BootstrapReport, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin bootstrap")?;
    let exists: bool = tx
        .query_row("SELECT 1 FROM agent_groups WHERE id = ?1", [MAIN_AGENT_GROUP_ID], |_| Ok(true))
        .optional()
        .sql("bootstrap check")?
        .unwrap_or(false);
    if exists {
        return Ok(BootstrapReport { created: false });
    }
    let now = now_ts();
    tx.execute(
        "INSERT INTO agent_groups (id, name, folder, created_at) VALUES (?1, 'Main', ?2, ?3)",
        params![MAIN_AGENT_GROUP_ID, MAIN_AGENT_GROUP_FOLDER, now],
    )
    .sql("create agent group main")?;
    tx.execute(
        "INSERT INTO container_configs (agent_group_id, provider, cli_scope, updated_at) VALUES (?1, NULL, 'global', ?2)",
        params![MAIN_AGENT_GROUP_ID, now],
    )
    .sql("create container config of main")?;
    tx.execute(
        "INSERT OR IGNORE INTO users (id, kind, display_name, created_at) VALUES (?1, 'cli', 'Local', ?2)",
        params![CLI_OWNER_USER_ID, now],
    )
    .sql("create owner user")?;
    tx.execute(
        "INSERT OR IGNORE INTO user_roles (user_id, role, agent_group_id, granted_by, granted_at) VALUES (?1, 'owner', NULL, 'bootstrap', ?2)",
        params![CLI_OWNER_USER_ID, now],
    )
    .sql("grant owner")?;
    tx.execute(
        "INSERT OR IGNORE INTO messaging_groups (id, channel_type, platform_id, name, is_group, unknown_sender_policy, created_at)
         VALUES (?1, 'cli', ?2, 'cli', 0, 'strict', ?3)",
        params![CLI_MESSAGING_GROUP_ID, CLI_PLATFORM_ID, now],
    )
    .sql("create cli messaging group")?;
    // The wiring and its destination (`cli`, after the chat's name) through the one function that
    // makes both.
    super::routing::create_wiring_in(
        &tx,
        &super::routing::NewWiring {
            messaging_group_id: CLI_MESSAGING_GROUP_ID.into(),
            agent_group_id: MAIN_AGENT_GROUP_ID.into(),
            session_mode: super::routing::SessionMode::Shared,
            engage_mode: super::routing::EngageMode::Pattern,
            engage_pattern: Some(".".into()),
            sender_scope: super::routing::SenderScope::All,
            ignored_message_policy: super::routing::IgnoredPolicy::Drop,
            priority: 0,
        },
    )?;
    tx.commit().sql("commit bootstrap")?;
    Ok(BootstrapReport { created: true })
}

/// A session with everything needed to run its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id (`sess-…`).
    pub id: String,
    /// Its agent group.
    pub agent_group_id: String,
    /// The agent group's folder name (validated `[a-z0-9_-]`, ≤ 64 by the schema).
    pub agent_group_folder: String,
    /// The agent group's display name.
    pub agent_group_name: String,
    /// The chat it belongs to (its default reply address), if any.
    pub messaging_group_id: Option<String>,
    /// Channel type of that chat.
    pub channel_type: Option<String>,
    /// Platform id of that chat.
    pub platform_id: Option<String>,
    /// Thread of a per-thread session.
    pub thread_id: Option<String>,
    /// Provider named by the session row, else by the container config; `None`: the host's
    /// default (`agent.provider`, see [`crate::ports::provider::ProviderGateway::default_provider`]).
    pub provider: Option<String>,
    /// Assistant name from the container config (defaults to the group name).
    pub assistant_name: String,
    /// Most messages per prompt.
    pub max_messages_per_prompt: i64,
}

const SESSION_SELECT: &str = "SELECT s.id, s.agent_group_id, ag.folder, ag.name, s.messaging_group_id, mg.channel_type, mg.platform_id,
        s.thread_id, coalesce(s.agent_provider, cc.provider), coalesce(cc.assistant_name, ag.name), coalesce(cc.max_messages_per_prompt, 10)
   FROM sessions s
   JOIN agent_groups ag ON ag.id = s.agent_group_id
   LEFT JOIN messaging_groups mg ON mg.id = s.messaging_group_id
   LEFT JOIN container_configs cc ON cc.agent_group_id = s.agent_group_id";

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionInfo> {
    Ok(SessionInfo {
        id: r.get(0)?,
        agent_group_id: r.get(1)?,
        agent_group_folder: r.get(2)?,
        agent_group_name: r.get(3)?,
        messaging_group_id: r.get(4)?,
        channel_type: r.get(5)?,
        platform_id: r.get(6)?,
        thread_id: r.get(7)?,
        provider: r.get(8)?,
        assistant_name: r.get(9)?,
        max_messages_per_prompt: r.get(10)?,
    })
}

/// The parts of a session's agent settings that `runner.json` needs, read before each container
/// start (so a change to the container config applies at the next start). JSON columns are
/// returned as stored; the caller parses them and names the column when one does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfigRow {
    /// `sessions.agent_provider`, else `container_configs.provider` (`None`: host default).
    pub provider: Option<String>,
    /// `container_configs.model` (overrides the provider's model).
    pub model: Option<String>,
    /// `container_configs.image_tier` (`None`: by provider).
    pub image_tier: Option<String>,
    /// `container_configs.egress_allow` (JSON list of host patterns).
    pub egress_allow: String,
    /// `container_configs.tools` (JSON: `"all"` or `{"only": [...]}`).
    pub tools: String,
    /// `container_configs.mcp_servers` (JSON object).
    pub mcp_servers: String,
    /// `container_configs.skills` (JSON: `"all"` or a list).
    pub skills: String,
    /// `container_configs.image_tag`: the group's own image (approved packages), if built.
    pub image_tag: Option<String>,
}

/// Loads the [`RunnerConfigRow`] of a session (defaults when its group has no container config).
pub fn runner_config(conn: &Connection, session_id: &str) -> Result<Option<RunnerConfigRow>, StoreError> {
    conn.query_row(
        "SELECT coalesce(s.agent_provider, cc.provider), cc.model, cc.image_tier, coalesce(cc.egress_allow, '[]'),
                coalesce(cc.tools, '\"all\"'), coalesce(cc.mcp_servers, '{}'), coalesce(cc.skills, '\"all\"'),
                cc.image_tag
           FROM sessions s LEFT JOIN container_configs cc ON cc.agent_group_id = s.agent_group_id
          WHERE s.id = ?1",
        [session_id],
        |r| {
            Ok(RunnerConfigRow {
                provider: r.get(0)?,
                model: r.get(1)?,
                image_tier: r.get(2)?,
                egress_allow: r.get(3)?,
                tools: r.get(4)?,
                mcp_servers: r.get(5)?,
                skills: r.get(6)?,
                image_tag: r.get(7)?,
            })
        },
    )
    .optional()
    .sql(format!("load runner config of {session_id}"))
}

/// Tokens (input + output) agent group `agent_group_id` used on `day` (`YYYY-MM-DD`, UTC) over all
/// providers.
pub fn tokens_on(conn: &Connection, agent_group_id: &str, day: &str) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM token_usage WHERE agent_group_id = ?1 AND day = ?2",
        params![agent_group_id, day],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
    .sql(format!("token usage of {agent_group_id}"))
}

/// Adds one request's tokens to `token_usage` (saturating at `i64::MAX`).
pub fn record_tokens(
    conn: &Connection,
    agent_group_id: &str,
    day: &str,
    provider: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Result<(), StoreError> {
    let (i, o) =
        (input_tokens.min(i64::MAX as u64 / 2) as i64, output_tokens.min(i64::MAX as u64 / 2) as i64);
    conn.execute(
        "INSERT INTO token_usage (agent_group_id, day, provider, input_tokens, output_tokens, requests)
              VALUES (?1, ?2, ?3, ?4, ?5, 1)
         ON CONFLICT (agent_group_id, day, provider) DO UPDATE SET
              input_tokens = min(input_tokens + excluded.input_tokens, 4611686018427387903),
              output_tokens = min(output_tokens + excluded.output_tokens, 4611686018427387903),
              requests = requests + 1",
        params![agent_group_id, day, provider, i, o],
    )
    .map(|_| ())
    .sql(format!("record token usage of {agent_group_id}"))
}

/// True (and the notice recorded as sent now) when the owner notice `key` was never sent or last
/// sent at least `min_interval` ago; false when it was sent more recently. One statement, so two
/// callers racing for the same key send it once.
pub fn claim_owner_notice(
    conn: &Connection,
    key: &str,
    min_interval: std::time::Duration,
) -> Result<bool, StoreError> {
    let now = chrono::Utc::now();
    let before = chrono::Duration::from_std(min_interval)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let changed = conn
        .execute(
            "INSERT INTO owner_notices (key, sent_at) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET sent_at = excluded.sent_at WHERE owner_notices.sent_at <= ?3",
            params![key, nanoclaw_protocol::time::format_ts(now), nanoclaw_protocol::time::format_ts(before)],
        )
        .sql(format!("owner notice {key}"))?;
    Ok(changed > 0)
}

/// Loads one session.
pub fn session_info(conn: &Connection, session_id: &str) -> Result<Option<SessionInfo>, StoreError> {
    conn.query_row(&format!("{SESSION_SELECT} WHERE s.id = ?1"), [session_id], session_from_row)
        .optional()
        .sql(format!("load session {session_id}"))
}

/// Why a session is held: its container is not started until an operator releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionHold {
    /// The container's files broke the rules of the container-file reader (a file that is not a
    /// regular file, a foreign schema, an oversize file) or its reads kept passing their deadline.
    Quarantined(String),
    /// The session's workspace is over `container.workspace_max_mb`.
    Paused(String),
}

impl SessionHold {
    /// The `sessions.status` value.
    pub fn status(&self) -> &'static str {
        match self {
            SessionHold::Quarantined(_) => "quarantined",
            SessionHold::Paused(_) => "paused",
        }
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            SessionHold::Quarantined(r) | SessionHold::Paused(r) => r,
        }
    }
}

/// The hold of a session, if it is quarantined or paused.
pub fn session_hold(conn: &Connection, session_id: &str) -> Result<Option<SessionHold>, StoreError> {
    let row: Option<(String, Option<String>)> = conn
        .query_row("SELECT status, status_reason FROM sessions WHERE id = ?1", [session_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .sql("read session status")?;
    Ok(row.and_then(|(status, reason)| {
        let reason = reason.unwrap_or_default();
        match status.as_str() {
            "quarantined" => Some(SessionHold::Quarantined(reason)),
            "paused" => Some(SessionHold::Paused(reason)),
            _ => None,
        }
    }))
}

/// Puts an open session on hold. Returns false when it was already held (so the chat and the
/// owner are told once) or is closed.
pub fn hold_session(conn: &Connection, session_id: &str, hold: &SessionHold) -> Result<bool, StoreError> {
    let n = conn
        .execute(
            "UPDATE sessions SET status = ?2, status_reason = ?3, status_since = ?4, work_pending = 1
              WHERE id = ?1 AND status = 'active'",
            params![session_id, hold.status(), hold.reason(), now_ts()],
        )
        .sql("hold session")?;
    Ok(n == 1)
}

/// What [`release_session`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The session was held and is active again.
    Released(SessionHold),
    /// The session is not held (active or closed).
    NotHeld(String),
    /// No session has that id.
    NotFound,
}

/// Makes a quarantined or paused session active again (after its files were fixed or reset).
pub fn release_session(conn: &mut Connection, session_id: &str) -> Result<Release, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin release")?;
    let status: Option<String> = tx
        .query_row("SELECT status FROM sessions WHERE id = ?1", [session_id], |r| r.get(0))
        .optional()
        .sql("read session status")?;
    let Some(status) = status else { return Ok(Release::NotFound) };
    let Some(hold) = session_hold(&tx, session_id)? else { return Ok(Release::NotHeld(status)) };
    tx.execute(
        "UPDATE sessions SET status = 'active', status_reason = NULL, status_since = NULL, work_pending = 1 WHERE id = ?1",
        [session_id],
    )
    .sql("release session")?;
    tx.commit().sql("commit release")?;
    Ok(Release::Released(hold))
}

/// One line of `nanoclaw sessions list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOverview {
    /// Session id.
    pub id: String,
    /// `active`, `quarantined`, `paused`.
    pub status: String,
    /// Agent group name.
    pub agent_group: String,
    /// `<channel_type>:<platform_id>` of its chat, if any.
    pub chat: Option<String>,
    /// Why it is held.
    pub reason: Option<String>,
}

/// Every session that is not closed, held ones first, then by creation.
pub fn session_overview(conn: &Connection) -> Result<Vec<SessionOverview>, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT s.id, s.status, ag.name, mg.channel_type || ':' || mg.platform_id, s.status_reason
               FROM sessions s JOIN agent_groups ag ON ag.id = s.agent_group_id
               LEFT JOIN messaging_groups mg ON mg.id = s.messaging_group_id
              WHERE s.status <> 'closed'
              ORDER BY s.status = 'active', s.created_at",
        )
        .sql("list sessions")?;
    st.query_map([], |r| {
        Ok(SessionOverview {
            id: r.get(0)?,
            status: r.get(1)?,
            agent_group: r.get(2)?,
            chat: r.get(3)?,
            reason: r.get(4)?,
        })
    })
    .sql("list sessions")?
    .collect::<Result<_, _>>()
    .sql("list sessions")
}

/// Records whether a session has work the host must come back to after a restart (pending
/// inbound rows, output not yet final). Start-up resumes exactly the sessions with the flag.
pub fn set_work_pending(conn: &Connection, session_id: &str, pending: bool) -> Result<(), StoreError> {
    conn.execute("UPDATE sessions SET work_pending = ?2 WHERE id = ?1", params![session_id, pending])
        .sql("set work pending")?;
    Ok(())
}

/// Ids of the active sessions flagged with pending work, in creation order. Uses the partial
/// index `sessions_work`, so its cost follows the flagged sessions, not all sessions.
pub fn sessions_with_work(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut st = conn
        .prepare("SELECT id FROM sessions WHERE work_pending = 1 AND status = 'active' ORDER BY created_at")
        .sql("list sessions with work")?;
    st.query_map([], |r| r.get(0))
        .sql("list sessions with work")?
        .collect::<Result<_, _>>()
        .sql("list sessions with work")
}

/// Every active session.
pub fn active_sessions(conn: &Connection) -> Result<Vec<SessionInfo>, StoreError> {
    let mut st = conn
        .prepare(&format!("{SESSION_SELECT} WHERE s.status = 'active' ORDER BY s.created_at"))
        .sql("list sessions")?;
    st.query_map([], session_from_row).sql("list sessions")?.collect::<Result<_, _>>().sql("list sessions")
}

/// Records the container status of a session (`starting`, `running`, `stopping`, `stopped`).
pub fn set_container_status(conn: &Connection, session_id: &str, status: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE sessions SET container_status = ?2, last_active = ?3 WHERE id = ?1",
        params![session_id, status, now_ts()],
    )
    .sql("set container status")?;
    Ok(())
}

/// Increments and returns the session's container generation (stamped on the next container).
pub fn next_generation(conn: &Connection, session_id: &str) -> Result<i64, StoreError> {
    conn.query_row(
        "UPDATE sessions SET container_generation = container_generation + 1 WHERE id = ?1 RETURNING container_generation",
        [session_id],
        |r| r.get(0),
    )
    .sql("next container generation")
}

/// The session's (current container generation, highest generation whose leftover claims were
/// counted).
pub fn generations(conn: &Connection, session_id: &str) -> Result<(i64, i64), StoreError> {
    conn.query_row(
        "SELECT container_generation, tries_counted_generation FROM sessions WHERE id = ?1",
        [session_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .sql("read generations")
}

/// Records that the leftover claims of `generation` (and older) were counted.
pub fn set_tries_counted(conn: &Connection, session_id: &str, generation: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE sessions SET tries_counted_generation = max(tries_counted_generation, ?2) WHERE id = ?1",
        params![session_id, generation],
    )
    .sql("record counted generation")?;
    Ok(())
}

/// The destinations of an agent group, resolved to addresses, for `inbound.db`.
pub fn destinations_of(conn: &Connection, agent_group_id: &str) -> Result<Vec<Destination>, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT d.local_name, d.target_type, mg.name, mg.channel_type, mg.platform_id, ag.id, ag.name
               FROM agent_destinations d
               LEFT JOIN messaging_groups mg ON d.target_type = 'channel' AND mg.id = d.target_id
               LEFT JOIN agent_groups ag ON d.target_type = 'agent' AND ag.id = d.target_id
              WHERE d.agent_group_id = ?1 ORDER BY d.local_name",
        )
        .sql("list destinations")?;
    let rows = st
        .query_map([agent_group_id], |r| {
            let t: String = r.get(1)?;
            let kind = if t == "agent" { DestinationType::Agent } else { DestinationType::Channel };
            Ok(Destination {
                name: r.get(0)?,
                display_name: match kind {
                    DestinationType::Channel => r.get(2)?,
                    DestinationType::Agent => r.get(6)?,
                },
                kind,
                channel_type: r.get(3)?,
                platform_id: r.get(4)?,
                agent_group_id: r.get(5)?,
            })
        })
        .sql("list destinations")?
        .collect::<Result<Vec<_>, _>>()
        .sql("list destinations")?;
    Ok(rows)
}

/// Whether an agent group may send to a chat: the send ACL of DESIGN §2 (`agent_destinations`).
pub fn may_send_to_chat(
    conn: &Connection,
    agent_group_id: &str,
    channel_type: &str,
    platform_id: &str,
) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM agent_destinations d JOIN messaging_groups mg ON mg.id = d.target_id
          WHERE d.agent_group_id = ?1 AND d.target_type = 'channel' AND mg.channel_type = ?2 AND mg.platform_id = ?3",
        params![agent_group_id, channel_type, platform_id],
        |_| Ok(true),
    )
    .optional()
    .sql("check destination")
    .map(|o| o.unwrap_or(false))
}

/// One inbound platform message as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Ledger id (`in-…`); prefix of every `messages_in` id routed from it.
    pub id: String,
    /// Channel type.
    pub channel_type: String,
    /// The platform's message id (dedupe key with `channel_type`).
    pub platform_message_id: String,
    /// The chat.
    pub platform_id: String,
    /// The thread.
    pub thread_id: Option<String>,
    /// Namespaced sender id.
    pub sender_id: Option<String>,
    /// The serialized event (JSON of [`crate::ports::channel::InboundEvent`]).
    pub event: String,
    /// Trace id carried through routing, container and delivery.
    pub trace_id: String,
}

/// Result of [`ledger_insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerInsert {
    /// First time this platform message was seen.
    New,
    /// Seen before; `routed` tells whether routing already finished.
    Duplicate {
        /// The existing ledger id.
        id: String,
        /// Whether it was routed (or dropped) already.
        finished: bool,
    },
}

/// Commits a platform message to the ledger, deduplicated on (`channel_type`,
/// `platform_message_id`) — DESIGN §5 invariant 2: this happens before the platform is acked.
pub fn ledger_insert(conn: &Connection, e: &LedgerEntry) -> Result<LedgerInsert, StoreError> {
    let inserted = conn
        .execute(
            "INSERT INTO inbound_ledger (id, channel_type, platform_message_id, platform_id, thread_id, sender_id, event, trace_id, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (channel_type, platform_message_id) DO NOTHING",
            params![e.id, e.channel_type, e.platform_message_id, e.platform_id, e.thread_id, e.sender_id, e.event, e.trace_id, now_ts()],
        )
        .sql("ledger insert")?;
    if inserted == 1 {
        return Ok(LedgerInsert::New);
    }
    let (id, status): (String, String) = conn
        .query_row(
            "SELECT id, status FROM inbound_ledger WHERE channel_type = ?1 AND platform_message_id = ?2",
            params![e.channel_type, e.platform_message_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql("ledger lookup")?;
    Ok(LedgerInsert::Duplicate { id, finished: status != "received" })
}

/// How a ledger entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOutcome {
    /// Stored in at least one session.
    Routed,
    /// Refused; the reason is kept on the entry (and counted in `unregistered_senders`).
    Dropped(super::routing::DropReason),
    /// Its stored event could not be read back (a corrupt row): nothing was routed.
    Unreadable,
}

/// Finishes a ledger entry: `routed` or `dropped` with its reason, and clears the stored event
/// (the key stays for deduplication until [`ledger_sweep`] removes it). A pending sender or
/// channel request keeps its own copy of the event for the replay.
pub fn ledger_finish(conn: &Connection, id: &str, outcome: LedgerOutcome) -> Result<(), StoreError> {
    let (status, reason) = match outcome {
        LedgerOutcome::Routed => ("routed", None),
        LedgerOutcome::Dropped(r) => ("dropped", Some(r.as_str())),
        LedgerOutcome::Unreadable => ("dropped", Some("unreadable_event")),
    };
    conn.prepare_cached(
        "UPDATE inbound_ledger SET status = ?2, drop_reason = ?3, routed_at = ?4, event = '' WHERE id = ?1",
    )
    .sql("ledger finish")?
    .execute(params![id, status, reason, now_ts()])
    .sql("ledger finish")?;
    Ok(())
}

/// Deletes up to `limit` finished ledger entries received before `before` (a timestamp of
/// [`nanoclaw_protocol::time::format_ts`]); returns how many. Entries still `received` are kept
/// whatever their age: they are routed at the next start. Called in batches so one sweep never
/// holds the writer long.
pub fn ledger_sweep(conn: &Connection, before: &str, limit: usize) -> Result<usize, StoreError> {
    conn.execute(
        "DELETE FROM inbound_ledger WHERE rowid IN (
           SELECT rowid FROM inbound_ledger WHERE status <> 'received' AND received_at < ?1 ORDER BY received_at LIMIT ?2)",
        params![before, limit as i64],
    )
    .sql("ledger sweep")
}

/// The status and drop reason of a ledger entry.
pub fn ledger_status(conn: &Connection, id: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
    conn.query_row("SELECT status, drop_reason FROM inbound_ledger WHERE id = ?1", [id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
    .sql("ledger status")
}

/// Ledger entries received but not yet routed (a crash between commit and routing).
pub fn ledger_unrouted(conn: &Connection) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT id, channel_type, platform_message_id, platform_id, thread_id, sender_id, event, trace_id
               FROM inbound_ledger WHERE status = 'received' ORDER BY received_at",
        )
        .sql("ledger unrouted")?;
    st.query_map([], |r| {
        Ok(LedgerEntry {
            id: r.get(0)?,
            channel_type: r.get(1)?,
            platform_message_id: r.get(2)?,
            platform_id: r.get(3)?,
            thread_id: r.get(4)?,
            sender_id: r.get(5)?,
            event: r.get(6)?,
            trace_id: r.get(7)?,
        })
    })
    .sql("ledger unrouted")?
    .collect::<Result<_, _>>()
    .sql("ledger unrouted")
}

/// The platform message id behind a ledger id.
pub fn ledger_platform_message_id(
    conn: &Connection,
    ledger_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    conn.query_row(
        "SELECT channel_type, platform_message_id FROM inbound_ledger WHERE id = ?1",
        [ledger_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .sql("ledger lookup")
}

/// Finds or creates the open session of a key: (agent group, chat, thread) for `shared` (thread
/// `None`) and `per-thread`; the agent group alone for `agent-shared`, whose session serves every
/// chat wired that way (created with the triggering chat). Only sessions created under the same
/// kind of key are joined: an `agent-shared` wiring never joins a per-chat session (reference
/// §12.9). Unique indexes rule out two open sessions for one key, so two racing calls get one.
pub fn resolve_session(
    conn: &mut Connection,
    agent_group_id: &str,
    messaging_group_id: &str,
    thread_id: Option<&str>,
    mode: super::routing::SessionMode,
) -> Result<SessionInfo, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin resolve session")?;
    let session = resolve_session_in(&tx, agent_group_id, messaging_group_id, thread_id, mode)?;
    tx.commit().sql("commit resolve session")?;
    Ok(session)
}

/// [`resolve_session`] inside the caller's transaction.
pub fn resolve_session_in(
    conn: &Connection,
    agent_group_id: &str,
    messaging_group_id: &str,
    thread_id: Option<&str>,
    mode: super::routing::SessionMode,
) -> Result<SessionInfo, StoreError> {
    use super::routing::SessionMode;
    let thread_id = if mode == SessionMode::PerThread { thread_id } else { None };
    let existing: Option<String> = match mode {
        SessionMode::AgentShared => conn
            .prepare_cached(
                "SELECT id FROM sessions WHERE status <> 'closed' AND agent_group_id = ?1 AND session_mode = 'agent-shared'
                  ORDER BY created_at DESC LIMIT 1",
            )
            .sql("find session")?
            .query_row(params![agent_group_id], |r| r.get(0))
            .optional()
            .sql("find session")?,
        _ => conn
            .prepare_cached(
                "SELECT id FROM sessions WHERE status <> 'closed' AND agent_group_id = ?1 AND session_mode <> 'agent-shared'
                   AND coalesce(messaging_group_id, '') = ?2 AND coalesce(thread_id, '') = coalesce(?3, '')",
            )
            .sql("find session")?
            .query_row(params![agent_group_id, messaging_group_id, thread_id], |r| r.get(0))
            .optional()
            .sql("find session")?,
    };
    let id = match existing {
        Some(id) => id,
        None => {
            let id = new_id("sess");
            conn.execute(
                "INSERT INTO sessions (id, agent_group_id, messaging_group_id, thread_id, session_mode, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, agent_group_id, messaging_group_id, thread_id, mode.as_str(), now_ts()],
            )
            .sql("create session")?;
            id
        }
    };
    session_info(conn, &id)?.ok_or_else(|| StoreError::Invalid(format!("session {id} vanished")))
}

/// Whether an open per-chat session of the agent group exists for (chat, thread): what makes a
/// `mention-sticky` wiring engage without a mention.
pub fn has_open_session(
    conn: &Connection,
    agent_group_id: &str,
    messaging_group_id: &str,
    thread_id: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM sessions WHERE status <> 'closed' AND agent_group_id = ?1 AND messaging_group_id = ?2
               AND coalesce(thread_id, '') = coalesce(?3, '')",
        )
        .sql("find session")?
        .query_row(params![agent_group_id, messaging_group_id, thread_id], |_| Ok(()))
        .optional()
        .sql("find session")?
        .is_some())
}

/// A new id `<prefix>-<ms base36>-<6 random base36>`, time-ordered within a prefix.
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut rng = rand::rng();
    let rand: String = (0..6)
        .map(|_| {
            let d = rng.random_range(0..36u32);
            char::from_digit(d, 36).expect("digit below 36")
        })
        .collect();
    format!("{prefix}-{}-{rand}", to_base36(ms))
}

fn to_base36(mut n: u64) -> String {
    let mut s = Vec::new();
    loop {
        s.push(char::from_digit((n % 36) as u32, 36).expect("digit below 36"));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionMode, Store, find_messaging_group, wirings_of};

    #[tokio::test]
    async fn bootstrap_is_idempotent_and_wires_cli_to_main() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        assert!(store.call(bootstrap).await.unwrap().created);
        assert!(!store.call(bootstrap).await.unwrap().created);
        let mg = store.call(|c| find_messaging_group(c, "cli", CLI_PLATFORM_ID)).await.unwrap().unwrap();
        assert_eq!(mg.id, CLI_MESSAGING_GROUP_ID);
        let wirings = store.call(|c| wirings_of(c, CLI_MESSAGING_GROUP_ID)).await.unwrap();
        assert_eq!(wirings.len(), 1);
        assert_eq!(wirings[0].engage_mode, "pattern");
        assert_eq!(wirings[0].session_mode, "shared");
        let s1 = store
            .call(|c| {
                resolve_session(c, MAIN_AGENT_GROUP_ID, CLI_MESSAGING_GROUP_ID, None, SessionMode::Shared)
            })
            .await
            .unwrap();
        let s2 = store
            .call(|c| {
                resolve_session(c, MAIN_AGENT_GROUP_ID, CLI_MESSAGING_GROUP_ID, None, SessionMode::Shared)
            })
            .await
            .unwrap();
        assert_eq!(s1, s2, "shared mode: one session per chat");
        assert_eq!(s1.agent_group_folder, "main");
        assert_eq!(s1.provider, None, "main inherits the host's agent.provider");
        let d = store.call(|c| destinations_of(c, MAIN_AGENT_GROUP_ID)).await.unwrap();
        assert_eq!(d[0].name, "cli");
        assert_eq!(d[0].platform_id.as_deref(), Some(CLI_PLATFORM_ID));
        assert!(
            store.call(|c| may_send_to_chat(c, MAIN_AGENT_GROUP_ID, "cli", CLI_PLATFORM_ID)).await.unwrap()
        );
        assert!(!store.call(|c| may_send_to_chat(c, MAIN_AGENT_GROUP_ID, "cli", "elsewhere")).await.unwrap());
        assert_eq!(store.call(move |c| next_generation(c, &s1.id)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn ledger_deduplicates_on_platform_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        let e = LedgerEntry {
            id: "in-1".into(),
            channel_type: "cli".into(),
            platform_message_id: "p1".into(),
            platform_id: "local".into(),
            thread_id: None,
            sender_id: None,
            event: "{}".into(),
            trace_id: "t".into(),
        };
        let e2 = LedgerEntry { id: "in-2".into(), ..e.clone() };
        assert_eq!(store.call(move |c| ledger_insert(c, &e)).await.unwrap(), LedgerInsert::New);
        let dup = e2.clone();
        assert_eq!(
            store.call(move |c| ledger_insert(c, &dup)).await.unwrap(),
            LedgerInsert::Duplicate { id: "in-1".into(), finished: false }
        );
        assert_eq!(store.call(ledger_unrouted_boxed).await.unwrap().len(), 1);
        store.call(|c| ledger_finish(c, "in-1", LedgerOutcome::Routed)).await.unwrap();
        assert!(store.call(ledger_unrouted_boxed).await.unwrap().is_empty());
    }

    fn ledger_unrouted_boxed(c: &mut Connection) -> Result<Vec<LedgerEntry>, StoreError> {
        ledger_unrouted(c)
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("sess");
        let b = new_id("sess");
        assert!(a.starts_with("sess-") && a != b);
    }
}
