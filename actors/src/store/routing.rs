//! Central-DB operations of routing and permissions: messaging groups, wirings, users, roles,
//! members, dropped-message records, pending sender / channel requests, destinations and new agent
//! groups. Plain functions on a connection, run through [`super::Store::call`].
//!
//! Every enum column has a Rust type here ([`EngageMode`], [`SessionMode`], …) whose `as_str` is
//! the stored value; values are checked when written (an error naming the field) and again when
//! read (a row the schema's CHECKs should have refused disables what it belongs to, fail closed).

use super::{SqlContext, StoreError, new_id};
use nanoclaw_protocol::time::now_ts;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

column_enum! {
    /// `messaging_groups.unknown_sender_policy`: what happens to a message from a sender without
    /// access to the agent group.
    UnknownSenderPolicy {
        /// Dropped, recorded `unknown_sender_strict`.
        Strict = "strict",
        /// Dropped, recorded, and one pending request per (chat, sender) for an approver.
        RequestApproval = "request_approval",
        /// Anyone may talk to the agent (unless the wiring's `sender_scope` is `known`).
        Public = "public",
    }
}

column_enum! {
    /// `messaging_group_agents.engage_mode`: when a wiring's agent answers.
    EngageMode {
        /// `engage_pattern` matches the text (`.` = always).
        Pattern = "pattern",
        /// The platform says the bot was mentioned (a DM counts).
        Mention = "mention",
        /// A mention, or, in a group chat, any message of a (chat, thread) that already has a
        /// session of the agent group.
        MentionSticky = "mention-sticky",
    }
}

column_enum! {
    /// `messaging_group_agents.session_mode` and `sessions.session_mode`.
    SessionMode {
        /// One session per (agent group, chat).
        Shared = "shared",
        /// One session per (agent group, chat, thread).
        PerThread = "per-thread",
        /// One session per agent group, over every chat wired this way.
        AgentShared = "agent-shared",
    }
}

column_enum! {
    /// `messaging_group_agents.sender_scope`: whose messages a wiring takes.
    SenderScope {
        /// Anyone the chat's policy admits.
        All = "all",
        /// Only senders with access to the agent group, even in a public chat.
        Known = "known",
    }
}

column_enum! {
    /// `messaging_group_agents.ignored_message_policy`: what happens to a message that does not
    /// engage the wiring's agent.
    IgnoredPolicy {
        /// Not stored.
        Drop = "drop",
        /// Stored without waking the agent (`trigger = 0`): context for its next turn.
        Accumulate = "accumulate",
    }
}

column_enum! {
    /// `unregistered_senders.reason`: why a message reached no agent.
    DropReason {
        /// A chat the host does not know, and the message was neither a mention nor a DM.
        UnknownChat = "unknown_chat",
        /// The chat has no wiring (a mention or DM there asks an approver to connect it).
        NoAgentWired = "no_agent_wired",
        /// No wiring engaged or accumulated the message.
        NoAgentEngaged = "no_agent_engaged",
        /// The sender has no access and the chat's policy is `strict` (or the wiring takes only
        /// known senders).
        UnknownSenderStrict = "unknown_sender_strict",
        /// The sender has no access; an approver is asked (once per chat and sender).
        UnknownSenderRequestApproval = "unknown_sender_request_approval",
        /// The sender was denied by an approver.
        SenderDenied = "sender_denied",
        /// The chat was rejected by an approver.
        ChannelDenied = "channel_denied",
        /// A slash command the host filters, or an admin-only one from a non-admin.
        CommandFiltered = "command_filtered",
    }
}

column_enum! {
    /// `user_roles.role`.
    Role {
        /// Everything, everywhere; global only.
        Owner = "owner",
        /// Admin of one agent group, or of all.
        Admin = "admin",
    }
}

/// Where a role applies. A grant names it explicitly: there is no silent global grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleScope {
    /// Every agent group.
    Global,
    /// One agent group (by id).
    AgentGroup(String),
}

/// A chat the host knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagingGroup {
    /// Id (`mg-…`).
    pub id: String,
    /// Channel type.
    pub channel_type: String,
    /// The chat on the platform.
    pub platform_id: String,
    /// Display name.
    pub name: Option<String>,
    /// A group chat (else a DM).
    pub is_group: bool,
    /// Policy for senders without access; `Err` holds a stored value the schema should have
    /// refused (treated as `strict`, fail closed).
    pub unknown_sender_policy: Result<UnknownSenderPolicy, String>,
    /// An approver rejected the chat.
    pub denied: bool,
}

fn mg_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessagingGroup> {
    let policy: String = r.get(5)?;
    Ok(MessagingGroup {
        id: r.get(0)?,
        channel_type: r.get(1)?,
        platform_id: r.get(2)?,
        name: r.get(3)?,
        is_group: r.get::<_, i64>(4)? != 0,
        unknown_sender_policy: UnknownSenderPolicy::parse(&policy),
        denied: r.get::<_, Option<String>>(6)?.is_some(),
    })
}

const MG_SELECT: &str = "SELECT id, channel_type, platform_id, name, is_group, unknown_sender_policy, denied_at FROM messaging_groups";

/// The messaging group of a chat, if the host knows it.
pub fn find_messaging_group(
    conn: &Connection,
    channel_type: &str,
    platform_id: &str,
) -> Result<Option<MessagingGroup>, StoreError> {
    conn.query_row(
        &format!("{MG_SELECT} WHERE channel_type = ?1 AND platform_id = ?2"),
        params![channel_type, platform_id],
        mg_from_row,
    )
    .optional()
    .sql("find messaging group")
}

/// The messaging group with id `id`.
pub fn messaging_group(conn: &Connection, id: &str) -> Result<Option<MessagingGroup>, StoreError> {
    conn.query_row(&format!("{MG_SELECT} WHERE id = ?1"), [id], mg_from_row)
        .optional()
        .sql("load messaging group")
}

/// Creates the messaging group of a chat (or returns the one a concurrent call created).
pub fn create_messaging_group(
    conn: &Connection,
    channel_type: &str,
    platform_id: &str,
    name: Option<&str>,
    is_group: bool,
    policy: UnknownSenderPolicy,
) -> Result<MessagingGroup, StoreError> {
    conn.execute(
        "INSERT INTO messaging_groups (id, channel_type, platform_id, name, is_group, unknown_sender_policy, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (channel_type, platform_id) DO NOTHING",
        params![new_id("mg"), channel_type, platform_id, name, is_group as i64, policy.as_str(), now_ts()],
    )
    .sql("create messaging group")?;
    find_messaging_group(conn, channel_type, platform_id)?
        .ok_or_else(|| StoreError::Invalid(format!("messaging group {channel_type}:{platform_id} vanished")))
}

/// The DM the host opens to reach a user (an approver, the owner): policy `strict`, since nobody
/// but that user was ever invited there.
pub fn open_dm(
    conn: &Connection,
    user_id: &str,
    channel_type: &str,
    platform_id: &str,
) -> Result<MessagingGroup, StoreError> {
    let mg =
        create_messaging_group(conn, channel_type, platform_id, None, false, UnknownSenderPolicy::Strict)?;
    conn.execute(
        "INSERT INTO user_dms (user_id, channel_type, messaging_group_id, resolved_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, channel_type) DO UPDATE SET messaging_group_id = excluded.messaging_group_id,
           resolved_at = excluded.resolved_at",
        params![user_id, channel_type, mg.id, now_ts()],
    )
    .sql("record dm")?;
    Ok(mg)
}

/// Sets `denied_at` of a chat (an approver rejected it): later mentions are recorded
/// `channel_denied` until an explicit wiring.
pub fn deny_messaging_group(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute("UPDATE messaging_groups SET denied_at = ?2 WHERE id = ?1", params![id, now_ts()])
        .sql("deny messaging group")?;
    Ok(())
}

/// A wiring as stored: enum columns as text, checked by the router (an unknown value disables
/// the wiring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiringRow {
    /// Wiring id.
    pub id: String,
    /// The agent group it engages.
    pub agent_group_id: String,
    /// `session_mode`.
    pub session_mode: String,
    /// `engage_mode`.
    pub engage_mode: String,
    /// `engage_pattern` (required for `pattern`).
    pub engage_pattern: Option<String>,
    /// `sender_scope`.
    pub sender_scope: String,
    /// `ignored_message_policy`.
    pub ignored_message_policy: String,
    /// Fan-out order (higher first).
    pub priority: i64,
}

/// The wirings of a messaging group, highest priority first (then oldest first).
pub fn wirings_of(conn: &Connection, messaging_group_id: &str) -> Result<Vec<WiringRow>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT id, agent_group_id, session_mode, engage_mode, engage_pattern, sender_scope, ignored_message_policy, priority
               FROM messaging_group_agents WHERE messaging_group_id = ?1 ORDER BY priority DESC, created_at, id",
        )
        .sql("list wirings")?;
    st.query_map([messaging_group_id], |r| {
        Ok(WiringRow {
            id: r.get(0)?,
            agent_group_id: r.get(1)?,
            session_mode: r.get(2)?,
            engage_mode: r.get(3)?,
            engage_pattern: r.get(4)?,
            sender_scope: r.get(5)?,
            ignored_message_policy: r.get(6)?,
            priority: r.get(7)?,
        })
    })
    .sql("list wirings")?
    .collect::<Result<Vec<_>, _>>()
    .sql("list wirings")
}

/// Largest compiled size of an engage pattern, bytes (the `regex` crate's `size_limit`): a
/// pattern is written by an admin but evaluated on every message of the chat.
pub const ENGAGE_PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// Longest engage pattern, bytes.
pub const ENGAGE_PATTERN_MAX_LEN: usize = 1024;

/// Compiles an engage pattern under [`ENGAGE_PATTERN_SIZE_LIMIT`]. Errors with one line (the
/// caller names the field).
pub fn compile_engage_pattern(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.is_empty() {
        return Err("empty (use \".\" to engage on every message)".into());
    }
    if pattern.len() > ENGAGE_PATTERN_MAX_LEN {
        return Err(format!("{} bytes, over {ENGAGE_PATTERN_MAX_LEN}", pattern.len()));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(ENGAGE_PATTERN_SIZE_LIMIT)
        .dfa_size_limit(ENGAGE_PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string().lines().last().unwrap_or("invalid").trim().to_string())
}

/// A new wiring (messaging group → agent group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWiring {
    /// The chat.
    pub messaging_group_id: String,
    /// The agent group.
    pub agent_group_id: String,
    /// Session mode.
    pub session_mode: SessionMode,
    /// Engage mode.
    pub engage_mode: EngageMode,
    /// Required for [`EngageMode::Pattern`] (`.` = always); must be `None` otherwise.
    pub engage_pattern: Option<String>,
    /// Sender scope.
    pub sender_scope: SenderScope,
    /// Policy for messages that do not engage.
    pub ignored_message_policy: IgnoredPolicy,
    /// Fan-out order (higher first).
    pub priority: i64,
}

/// What [`create_wiring`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedWiring {
    /// The wiring's id.
    pub wiring_id: String,
    /// The name of the agent group's channel destination for the chat (new, or the one it had).
    pub destination: String,
}

/// Checks a wiring before it is written. Errors name the field.
pub fn check_wiring(w: &NewWiring) -> Result<(), StoreError> {
    match (w.engage_mode, &w.engage_pattern) {
        (EngageMode::Pattern, None) => Err(StoreError::Invalid(
            "engage_pattern: required for engage_mode pattern (\".\" = always)".into(),
        )),
        (EngageMode::Pattern, Some(p)) => compile_engage_pattern(p)
            .map(|_| ())
            .map_err(|e| StoreError::Invalid(format!("engage_pattern: {e}"))),
        (mode, Some(_)) => Err(StoreError::Invalid(format!(
            "engage_pattern: only for engage_mode pattern (this wiring's is {mode})"
        ))),
        (_, None) => Ok(()),
    }
}

/// The one way to wire a chat to an agent group: the wiring and the group's channel destination
/// for the chat, in one transaction (every caller — bootstrap, channel registration, the admin
/// CLI — goes through here, so no wiring lacks its destination: reference §12.5). The caller
/// re-projects destinations into the group's running sessions.
///
/// Errors: [`StoreError::Invalid`] naming the field for a bad pattern, an unknown chat or agent
/// group, or a chat already wired to the group.
pub fn create_wiring(conn: &mut Connection, w: &NewWiring) -> Result<CreatedWiring, StoreError> {
    check_wiring(w)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin create wiring")?;
    let created = create_wiring_in(&tx, w)?;
    tx.commit().sql("commit create wiring")?;
    Ok(created)
}

/// [`create_wiring`] inside the caller's transaction (checked by the caller).
pub(crate) fn create_wiring_in(conn: &Connection, w: &NewWiring) -> Result<CreatedWiring, StoreError> {
    let mg = messaging_group(conn, &w.messaging_group_id)?.ok_or_else(|| {
        StoreError::Invalid(format!("messaging_group_id: no messaging group {:?}", w.messaging_group_id))
    })?;
    if !agent_group_exists(conn, &w.agent_group_id)? {
        return Err(StoreError::Invalid(format!("agent_group_id: no agent group {:?}", w.agent_group_id)));
    }
    let wiring_id = new_id("wiring");
    let n = conn
        .execute(
            "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, session_mode, priority, engage_mode,
               engage_pattern, sender_scope, ignored_message_policy, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (messaging_group_id, agent_group_id) DO NOTHING",
            params![
                wiring_id,
                w.messaging_group_id,
                w.agent_group_id,
                w.session_mode.as_str(),
                w.priority,
                w.engage_mode.as_str(),
                w.engage_pattern,
                w.sender_scope.as_str(),
                w.ignored_message_policy.as_str(),
                now_ts()
            ],
        )
        .sql("create wiring")?;
    if n == 0 {
        return Err(StoreError::Invalid(format!(
            "messaging_group_id: {} is already wired to agent group {}",
            w.messaging_group_id, w.agent_group_id
        )));
    }
    // A wired chat is no longer rejected.
    conn.execute("UPDATE messaging_groups SET denied_at = NULL WHERE id = ?1", [&mg.id])
        .sql("clear denied_at")?;
    let existing: Option<String> = conn
        .query_row(
            "SELECT local_name FROM agent_destinations WHERE agent_group_id = ?1 AND target_type = 'channel' AND target_id = ?2",
            params![w.agent_group_id, mg.id],
            |r| r.get(0),
        )
        .optional()
        .sql("find destination")?;
    let destination = match existing {
        Some(name) => name,
        None => {
            let base = mg.name.clone().unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    mg.channel_type,
                    mg.id.trim_start_matches("mg-").chars().take(8).collect::<String>()
                )
            });
            add_destination(conn, &w.agent_group_id, &base, DestinationKind::Channel, &mg.id)?
        }
    };
    Ok(CreatedWiring { wiring_id, destination })
}

fn agent_group_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM agent_groups WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .sql("find agent group")?
        .is_some())
}

/// `agent_destinations.target_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// A chat (`target_id` = messaging group id).
    Channel,
    /// Another agent group (`target_id` = agent group id).
    Agent,
}

impl DestinationKind {
    fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Channel => "channel",
            DestinationKind::Agent => "agent",
        }
    }
}

/// Longest destination name, characters.
pub const DESTINATION_NAME_MAX: usize = 64;

/// Whether `name` is a valid destination name: 1–64 of `[a-z0-9-]`.
pub fn destination_name_ok(name: &str) -> bool {
    (1..=DESTINATION_NAME_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A destination name from any text: lowercase, runs of other characters become one `-`, trimmed
/// of `-`, cut to leave room for a `-N` suffix; `dest` when nothing is left.
pub fn normalize_destination_name(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(DESTINATION_NAME_MAX - 4).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "dest".into() } else { out }
}

/// Adds a destination of `agent_group_id` named after `base` (normalized; `-2`, `-3`, … on a
/// clash). Returns the name given.
pub fn add_destination(
    conn: &Connection,
    agent_group_id: &str,
    base: &str,
    kind: DestinationKind,
    target_id: &str,
) -> Result<String, StoreError> {
    let base = normalize_destination_name(base);
    for n in 1..10_000 {
        let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let inserted = conn
            .execute(
                "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (agent_group_id, local_name) DO NOTHING",
                params![agent_group_id, name, kind.as_str(), target_id, now_ts()],
            )
            .sql("add destination")?;
        if inserted == 1 {
            return Ok(name);
        }
    }
    Err(StoreError::Invalid(format!("local_name: no free name for {base:?}")))
}

/// Adds a destination under exactly `name` (the admin's choice, not normalized).
///
/// Errors: `local_name` when the name is not 1–64 of `[a-z0-9-]` or is taken in the group.
pub fn add_destination_named(
    conn: &Connection,
    agent_group_id: &str,
    name: &str,
    kind: DestinationKind,
    target_id: &str,
) -> Result<(), StoreError> {
    if !destination_name_ok(name) {
        return Err(StoreError::Invalid(format!(
            "local_name: {name:?} is not 1-{DESTINATION_NAME_MAX} of a-z 0-9 -"
        )));
    }
    let inserted = conn
        .execute(
            "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (agent_group_id, local_name) DO NOTHING",
            params![agent_group_id, name, kind.as_str(), target_id, now_ts()],
        )
        .sql("add destination")?;
    if inserted == 0 {
        return Err(StoreError::Invalid(format!(
            "local_name: {name:?} is already a destination of this agent"
        )));
    }
    Ok(())
}

/// Upserts a user (namespaced id `<channel_type>:<handle>`), keeping the newest display name.
pub fn upsert_user(
    conn: &Connection,
    user_id: &str,
    kind: &str,
    display_name: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO users (id, kind, display_name, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET display_name = coalesce(excluded.display_name, users.display_name)
           WHERE users.display_name IS NOT excluded.display_name AND excluded.display_name IS NOT NULL",
    )
    .sql("upsert user")?
    .execute(params![user_id, kind, display_name, now_ts()])
    .sql("upsert user")?;
    Ok(())
}

/// Whether `user_id` may talk to `agent_group_id`: owner, global admin, admin of the group, or
/// member.
pub fn has_access(conn: &Connection, user_id: &str, agent_group_id: &str) -> Result<bool, StoreError> {
    Ok(is_admin_of(conn, user_id, agent_group_id)?
        || conn
            .prepare_cached("SELECT 1 FROM agent_group_members WHERE user_id = ?1 AND agent_group_id = ?2")
            .sql("check member")?
            .query_row(params![user_id, agent_group_id], |_| Ok(()))
            .optional()
            .sql("check member")?
            .is_some())
}

/// Whether `user_id` is owner, global admin or admin of `agent_group_id`.
pub fn is_admin_of(conn: &Connection, user_id: &str, agent_group_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM user_roles WHERE user_id = ?1
               AND (role = 'owner' OR (role = 'admin' AND (agent_group_id IS NULL OR agent_group_id = ?2)))",
        )
        .sql("check role")?
        .query_row(params![user_id, agent_group_id], |_| Ok(()))
        .optional()
        .sql("check role")?
        .is_some())
}

/// Grants `role` to `user_id` in `scope` (idempotent). The user must exist.
///
/// Errors: `scope` for an owner scoped to a group (owners are global only), or an unknown user
/// or group.
pub fn grant_role(
    conn: &Connection,
    user_id: &str,
    role: Role,
    scope: &RoleScope,
    granted_by: &str,
) -> Result<(), StoreError> {
    let group = match scope {
        RoleScope::Global => None,
        RoleScope::AgentGroup(_) if role == Role::Owner => {
            return Err(StoreError::Invalid("scope: owner is a global role".into()));
        }
        RoleScope::AgentGroup(g) => Some(g.as_str()),
    };
    conn.execute(
        "INSERT INTO user_roles (user_id, role, agent_group_id, granted_by, granted_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        params![user_id, role.as_str(), group, granted_by, now_ts()],
    )
    .map_err(|e| StoreError::Invalid(format!("user_id: cannot grant {role} to {user_id:?}: {e}")))?;
    Ok(())
}

/// Adds `user_id` as a member of `agent_group_id` (idempotent; the user must exist).
pub fn add_member(
    conn: &Connection,
    user_id: &str,
    agent_group_id: &str,
    added_by: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO agent_group_members (user_id, agent_group_id, added_by, added_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![user_id, agent_group_id, added_by, now_ts()],
    )
    .sql("add member")?;
    // An admin adding a sender ends an earlier denial (the sender may be asked about again).
    conn.execute(
        "DELETE FROM pending_sender_approvals WHERE sender_identity = ?1 AND agent_group_id = ?2",
        params![user_id, agent_group_id],
    )
    .sql("clear sender requests")?;
    Ok(())
}

/// One refused message, for [`record_dropped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped<'a> {
    /// Channel type.
    pub channel_type: &'a str,
    /// The chat.
    pub platform_id: &'a str,
    /// The namespaced sender, if any.
    pub user_id: Option<&'a str>,
    /// The sender's display name.
    pub sender_name: Option<&'a str>,
    /// Why.
    pub reason: DropReason,
    /// The chat's messaging group, when known.
    pub messaging_group_id: Option<&'a str>,
    /// The agent group that refused, when one did.
    pub agent_group_id: Option<&'a str>,
}

/// Counts one refused message in `unregistered_senders` (one row per chat, sender and reason).
pub fn record_dropped(conn: &Connection, d: &Dropped<'_>) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO unregistered_senders (channel_type, platform_id, user_id, reason, sender_name, messaging_group_id,
           agent_group_id, first_seen, last_seen)
         VALUES (?1, ?2, coalesce(?3, ''), ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (channel_type, platform_id, user_id, reason) DO UPDATE SET message_count = message_count + 1,
           last_seen = excluded.last_seen, sender_name = coalesce(excluded.sender_name, sender_name),
           messaging_group_id = coalesce(excluded.messaging_group_id, messaging_group_id),
           agent_group_id = coalesce(excluded.agent_group_id, agent_group_id)",
    )
    .sql("record dropped message")?
    .execute(params![
        d.channel_type,
        d.platform_id,
        d.user_id,
        d.reason.as_str(),
        d.sender_name,
        d.messaging_group_id,
        d.agent_group_id,
        now_ts()
    ])
    .sql("record dropped message")?;
    Ok(())
}

/// One row of `unregistered_senders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRow {
    /// Channel type.
    pub channel_type: String,
    /// The chat.
    pub platform_id: String,
    /// The sender (`''` for none).
    pub user_id: String,
    /// The reason.
    pub reason: String,
    /// Messages counted.
    pub message_count: i64,
}

/// Every dropped-message row, newest first (at most `limit`).
pub fn dropped_messages(conn: &Connection, limit: usize) -> Result<Vec<DroppedRow>, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT channel_type, platform_id, user_id, reason, message_count FROM unregistered_senders
              ORDER BY last_seen DESC, channel_type, platform_id, user_id, reason LIMIT ?1",
        )
        .sql("list dropped")?;
    st.query_map([limit as i64], |r| {
        Ok(DroppedRow {
            channel_type: r.get(0)?,
            platform_id: r.get(1)?,
            user_id: r.get(2)?,
            reason: r.get(3)?,
            message_count: r.get(4)?,
        })
    })
    .sql("list dropped")?
    .collect::<Result<_, _>>()
    .sql("list dropped")
}

/// What [`request_sender_approval`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderRequest {
    /// A new pending request (the approvals issue sends its card).
    Created(String),
    /// One is pending already: this message is only counted.
    Pending,
    /// An approver denied this sender in this chat.
    Denied,
}

/// Stores one pending request per (chat, sender) with the original event, unless one exists.
#[allow(clippy::too_many_arguments)]
pub fn request_sender_approval(
    conn: &Connection,
    messaging_group_id: &str,
    agent_group_id: &str,
    sender: &str,
    sender_name: Option<&str>,
    ledger_id: &str,
    event: &str,
) -> Result<SenderRequest, StoreError> {
    let id = new_id("sa");
    let n = conn
        .execute(
            "INSERT INTO pending_sender_approvals (id, messaging_group_id, agent_group_id, sender_identity, sender_name,
               ledger_id, original_message, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (messaging_group_id, sender_identity) DO NOTHING",
            params![id, messaging_group_id, agent_group_id, sender, sender_name, ledger_id, event, now_ts()],
        )
        .sql("request sender approval")?;
    if n == 1 {
        return Ok(SenderRequest::Created(id));
    }
    Ok(match sender_request_status(conn, messaging_group_id, sender)?.as_deref() {
        Some("denied") => SenderRequest::Denied,
        _ => SenderRequest::Pending,
    })
}

/// The status (`pending`, `denied`) of the request about `sender` in a chat, if any.
pub fn sender_request_status(
    conn: &Connection,
    messaging_group_id: &str,
    sender: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(
        "SELECT status FROM pending_sender_approvals WHERE messaging_group_id = ?1 AND sender_identity = ?2",
    )
    .sql("read sender request")?
    .query_row(params![messaging_group_id, sender], |r| r.get(0))
    .optional()
    .sql("read sender request")
}

/// A pending sender request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderApproval {
    /// Its id.
    pub id: String,
    /// The chat.
    pub messaging_group_id: String,
    /// The agent group asked about.
    pub agent_group_id: String,
    /// The namespaced sender.
    pub sender_identity: String,
    /// The sender's display name.
    pub sender_name: Option<String>,
    /// The ledger entry of the first message.
    pub ledger_id: String,
    /// The original event (JSON).
    pub original_message: String,
    /// `pending` or `denied`.
    pub status: String,
}

const SENDER_APPROVAL_SELECT: &str =
    "SELECT id, messaging_group_id, agent_group_id, sender_identity, sender_name,
        ledger_id, original_message, status FROM pending_sender_approvals";

fn sender_approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SenderApproval> {
    Ok(SenderApproval {
        id: r.get(0)?,
        messaging_group_id: r.get(1)?,
        agent_group_id: r.get(2)?,
        sender_identity: r.get(3)?,
        sender_name: r.get(4)?,
        ledger_id: r.get(5)?,
        original_message: r.get(6)?,
        status: r.get(7)?,
    })
}

/// Loads a sender request by id.
pub fn sender_approval(conn: &Connection, id: &str) -> Result<Option<SenderApproval>, StoreError> {
    conn.query_row(&format!("{SENDER_APPROVAL_SELECT} WHERE id = ?1"), [id], sender_approval_from_row)
        .optional()
        .sql("load sender request")
}

/// The pending sender requests, oldest first.
pub fn pending_sender_approvals(conn: &Connection) -> Result<Vec<SenderApproval>, StoreError> {
    conn.prepare(&format!("{SENDER_APPROVAL_SELECT} WHERE status = 'pending' ORDER BY created_at, id"))
        .sql("list sender requests")?
        .query_map([], sender_approval_from_row)
        .sql("list sender requests")?
        .collect::<Result<_, _>>()
        .sql("list sender requests")
}

/// Marks a sender request denied (kept, so later messages are recorded `sender_denied`).
/// Returns false when it was not pending.
pub fn deny_sender_request(conn: &Connection, id: &str, decided_by: &str) -> Result<bool, StoreError> {
    Ok(conn
        .execute(
            "UPDATE pending_sender_approvals SET status = 'denied', decided_by = ?2, decided_at = ?3
              WHERE id = ?1 AND status = 'pending'",
            params![id, decided_by, now_ts()],
        )
        .sql("deny sender")?
        == 1)
}

/// Removes a still pending sender request (its approval expired or failed), so the sender's next
/// message asks again.
pub fn drop_sender_request(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM pending_sender_approvals WHERE id = ?1 AND status = 'pending'", [id])
        .sql("clear sender request")?;
    Ok(())
}

/// A pending channel registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelApproval {
    /// The chat.
    pub messaging_group_id: String,
    /// Who mentioned the bot there.
    pub sender_identity: Option<String>,
    /// The ledger entry of the message.
    pub ledger_id: String,
    /// The original event (JSON).
    pub original_message: String,
    /// `pending` or `awaiting_name`.
    pub status: String,
    /// The approver who chose "new agent" (for `awaiting_name`).
    pub approver_user_id: Option<String>,
}

/// Stores one pending registration per chat. Returns true when this call created it.
pub fn request_channel_approval(
    conn: &Connection,
    messaging_group_id: &str,
    sender: Option<&str>,
    ledger_id: &str,
    event: &str,
) -> Result<bool, StoreError> {
    let now = now_ts();
    Ok(conn
        .execute(
            "INSERT INTO pending_channel_approvals (messaging_group_id, sender_identity, ledger_id, original_message,
               created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (messaging_group_id) DO NOTHING",
            params![messaging_group_id, sender, ledger_id, event, now],
        )
        .sql("request channel approval")?
        == 1)
}

/// Loads the pending registration of a chat.
pub fn channel_approval(
    conn: &Connection,
    messaging_group_id: &str,
) -> Result<Option<ChannelApproval>, StoreError> {
    conn.query_row(
        "SELECT messaging_group_id, sender_identity, ledger_id, original_message, status, approver_user_id
           FROM pending_channel_approvals WHERE messaging_group_id = ?1",
        [messaging_group_id],
        |r| {
            Ok(ChannelApproval {
                messaging_group_id: r.get(0)?,
                sender_identity: r.get(1)?,
                ledger_id: r.get(2)?,
                original_message: r.get(3)?,
                status: r.get(4)?,
                approver_user_id: r.get(5)?,
            })
        },
    )
    .optional()
    .sql("load channel request")
}

/// Records that `approver` chose "connect a new agent" for a chat: the row waits for the name
/// (a row, so a restart in between loses nothing). Returns false when no request is pending.
pub fn await_agent_name(
    conn: &Connection,
    messaging_group_id: &str,
    approver: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .execute(
            "UPDATE pending_channel_approvals SET status = 'awaiting_name', approver_user_id = ?2, updated_at = ?3
              WHERE messaging_group_id = ?1",
            params![messaging_group_id, approver, now_ts()],
        )
        .sql("await agent name")?
        == 1)
}

/// Removes the pending registration of a chat (connected or rejected).
pub fn clear_channel_approval(conn: &Connection, messaging_group_id: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM pending_channel_approvals WHERE messaging_group_id = ?1", [messaging_group_id])
        .sql("clear channel request")?;
    Ok(())
}

/// Adds (or replaces) the MCP server `name` in the `container_configs.mcp_servers` of an agent
/// group; it is wired at the group's next container start. Errors when the group has no
/// container config or its stored servers are not a JSON object (named).
pub fn set_mcp_server(
    conn: &mut Connection,
    agent_group_id: &str,
    name: &str,
    spec: &nanoclaw_protocol::settings::McpServerSpec,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin set mcp server")?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT mcp_servers FROM container_configs WHERE agent_group_id = ?1",
            [agent_group_id],
            |r| r.get(0),
        )
        .optional()
        .sql("read mcp servers")?;
    let stored = stored.ok_or_else(|| {
        StoreError::Invalid(format!("agent_group_id: {agent_group_id} has no container config"))
    })?;
    let mut servers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&stored)
        .map_err(|e| StoreError::Invalid(format!("container_configs.mcp_servers: not a JSON object: {e}")))?;
    servers.insert(name.to_string(), serde_json::to_value(spec).expect("a spec serialises"));
    tx.execute(
        "UPDATE container_configs SET mcp_servers = ?2, updated_at = ?3 WHERE agent_group_id = ?1",
        params![agent_group_id, serde_json::Value::Object(servers).to_string(), now_ts()],
    )
    .sql("write mcp servers")?;
    tx.commit().sql("commit set mcp server")
}

/// The approved packages (`name=version` pins) and the image of an agent group
/// (`container_configs.packages_apt`, `image_tag`). Errors when it has no container config or the
/// stored list is not a JSON list of strings (named).
pub fn group_packages(
    conn: &Connection,
    agent_group_id: &str,
) -> Result<(Vec<String>, Option<String>), StoreError> {
    let row: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT packages_apt, image_tag FROM container_configs WHERE agent_group_id = ?1",
            [agent_group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .sql("read group packages")?;
    let (packages, image) = row.ok_or_else(|| {
        StoreError::Invalid(format!("agent_group_id: {agent_group_id} has no container config"))
    })?;
    let packages: Vec<String> = serde_json::from_str(&packages).map_err(|e| {
        StoreError::Invalid(format!("container_configs.packages_apt: not a JSON list of strings: {e}"))
    })?;
    Ok((packages, image))
}

/// Records a built group image and the packages in it (both at once: the configuration changes
/// only after a good build); `None` goes back to the `standard` image.
pub fn set_group_image(
    conn: &Connection,
    agent_group_id: &str,
    packages: &[String],
    image_tag: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE container_configs SET packages_apt = ?2, image_tag = ?3, image_tier = 'standard', updated_at = ?4
          WHERE agent_group_id = ?1",
        params![agent_group_id, serde_json::to_string(packages).expect("strings serialise"), image_tag, now_ts()],
    )
    .sql("record group image")?;
    Ok(())
}

/// Longest agent group name, characters.
pub const AGENT_NAME_MAX: usize = 64;

/// A folder name from an agent name: lowercase `[a-z0-9_-]`, starting with a letter or digit, at
/// most 60 characters (room for a `-N` suffix); `agent` when nothing is left.
pub fn folder_from_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.trim_end_matches('-').chars().take(60).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "agent".into() } else { out }
}

/// Checks an agent name: 1–64 characters, no control characters. Errors name the field.
pub fn check_agent_name(name: &str) -> Result<(), StoreError> {
    let n = name.chars().count();
    if n == 0 || n > AGENT_NAME_MAX || name.trim().is_empty() {
        return Err(StoreError::Invalid(format!("name: 1-{AGENT_NAME_MAX} characters, got {n}")));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::Invalid("name: contains a control character".into()));
    }
    Ok(())
}

/// Creates an agent group named `name` with its `container_configs` row (inheriting every
/// setting) and a free folder derived from the name, in the caller's transaction. Returns (id,
/// folder). The caller creates the folder on disk.
pub fn create_agent_group_in(conn: &Connection, name: &str) -> Result<(String, String), StoreError> {
    check_agent_name(name)?;
    let base = folder_from_name(name);
    let id = new_id("ag");
    let now = now_ts();
    for n in 1..10_000 {
        let folder = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let inserted = conn
            .execute(
                "INSERT INTO agent_groups (id, name, folder, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (folder) DO NOTHING",
                params![id, name.trim(), folder, now],
            )
            .sql("create agent group")?;
        if inserted == 1 {
            conn.execute(
                "INSERT INTO container_configs (agent_group_id, updated_at) VALUES (?1, ?2)",
                params![id, now],
            )
            .sql("create container config")?;
            return Ok((id, folder));
        }
    }
    Err(StoreError::Invalid(format!("name: no free folder for {name:?}")))
}

/// An agent created by another (`create_agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedAgent {
    /// The new group's id.
    pub agent_group_id: String,
    /// Its folder.
    pub folder: String,
    /// The parent's destination name for the child.
    pub name_for_parent: String,
}

/// `create_agent`: a child agent group of `parent` named `name`, its `container_configs` row and
/// both destinations (`parent` for the child, the child's name for the parent), in one
/// transaction. The name must not clash with one of the parent's destination names.
///
/// Errors name the field: `name` (length, control characters, clash).
pub fn create_child_agent(
    conn: &mut Connection,
    parent: &str,
    name: &str,
) -> Result<CreatedAgent, StoreError> {
    check_agent_name(name)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin create agent")?;
    if !agent_group_exists(&tx, parent)? {
        return Err(StoreError::Invalid(format!("parent: no agent group {parent:?}")));
    }
    let local = normalize_destination_name(name);
    let clash = tx
        .query_row(
            "SELECT 1 FROM agent_destinations WHERE agent_group_id = ?1 AND local_name = ?2",
            params![parent, local],
            |_| Ok(()),
        )
        .optional()
        .sql("check destination clash")?
        .is_some();
    if clash {
        return Err(StoreError::Invalid(format!("name: {local:?} is already a destination of this agent")));
    }
    let (id, folder) = create_agent_group_in(&tx, name)?;
    let name_for_parent = add_destination(&tx, parent, &local, DestinationKind::Agent, &id)?;
    add_destination(&tx, &id, "parent", DestinationKind::Agent, parent)?;
    tx.commit().sql("commit create agent")?;
    Ok(CreatedAgent { agent_group_id: id, folder, name_for_parent })
}

/// Creates an agent group named `name` and wires `messaging_group_id` to it, in one transaction
/// (channel registration, "connect a new agent"). Returns (agent group id, folder, wiring).
pub fn create_agent_group_wired(
    conn: &mut Connection,
    name: &str,
    wiring: impl FnOnce(&str) -> NewWiring,
) -> Result<(String, String, CreatedWiring), StoreError> {
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin create agent group")?;
    let (id, folder) = create_agent_group_in(&tx, name)?;
    let w = wiring(&id);
    check_wiring(&w)?;
    let created = create_wiring_in(&tx, &w)?;
    tx.commit().sql("commit create agent group")?;
    Ok((id, folder, created))
}

/// The agent groups, by name: (id, name).
pub fn agent_groups(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    conn.prepare("SELECT id, name FROM agent_groups ORDER BY name, id")
        .sql("list agent groups")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .sql("list agent groups")?
        .collect::<Result<_, _>>()
        .sql("list agent groups")
}

/// The ids of the open sessions of an agent group (for re-projecting its destinations).
pub fn open_sessions_of_group(conn: &Connection, agent_group_id: &str) -> Result<Vec<String>, StoreError> {
    conn.prepare("SELECT id FROM sessions WHERE agent_group_id = ?1 AND status <> 'closed' ORDER BY id")
        .sql("list sessions of group")?
        .query_map([agent_group_id], |r| r.get(0))
        .sql("list sessions of group")?
        .collect::<Result<_, _>>()
        .sql("list sessions of group")
}

/// Whether agent group `from` may message agent group `to`: itself, or through an `agent`
/// destination.
pub fn may_send_to_agent(conn: &Connection, from: &str, to: &str) -> Result<bool, StoreError> {
    if from == to {
        return Ok(true);
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM agent_destinations WHERE agent_group_id = ?1 AND target_type = 'agent' AND target_id = ?2",
            params![from, to],
            |_| Ok(()),
        )
        .optional()
        .sql("check agent destination")?
        .is_some())
}

/// The session of agent group `agent_group_id` that takes another agent's message: `preferred`
/// when it is an open session of that group, else the group's newest open session, else a new
/// session without a chat. Errors with [`StoreError::Invalid`] when the group does not exist.
pub fn agent_target_session(
    conn: &mut Connection,
    agent_group_id: &str,
    preferred: Option<&str>,
) -> Result<super::SessionInfo, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin agent target")?;
    if !agent_group_exists(&tx, agent_group_id)? {
        return Err(StoreError::Invalid(format!("platform_id: no agent group {agent_group_id:?}")));
    }
    let preferred = match preferred {
        Some(id) => tx
            .query_row(
                "SELECT id FROM sessions WHERE id = ?1 AND agent_group_id = ?2 AND status <> 'closed'",
                params![id, agent_group_id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .sql("check preferred session")?,
        None => None,
    };
    let id = match preferred {
        Some(id) => id,
        None => {
            let newest: Option<String> = tx
                .query_row(
                    "SELECT id FROM sessions WHERE agent_group_id = ?1 AND status = 'active'
                      ORDER BY coalesce(last_active, created_at) DESC, created_at DESC LIMIT 1",
                    [agent_group_id],
                    |r| r.get(0),
                )
                .optional()
                .sql("find newest session")?;
            match newest {
                Some(id) => id,
                None => {
                    let id = new_id("sess");
                    tx.execute(
                        "INSERT INTO sessions (id, agent_group_id, created_at) VALUES (?1, ?2, ?3)",
                        params![id, agent_group_id, now_ts()],
                    )
                    .sql("create session")?;
                    id
                }
            }
        }
    };
    tx.commit().sql("commit agent target")?;
    super::session_info(conn, &id)?.ok_or_else(|| StoreError::Invalid(format!("session {id} vanished")))
}

/// A note the host sends to a chat itself, through `host_outbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNote {
    /// Row id; the channel's idempotency key.
    pub id: String,
    /// Channel type.
    pub channel_type: String,
    /// The chat.
    pub platform_id: String,
    /// The thread.
    pub thread_id: Option<String>,
    /// The platform id of the message it answers.
    pub in_reply_to: Option<String>,
    /// The text.
    pub text: String,
    /// Delivery attempts so far.
    pub attempts: i64,
}

/// Queues a host note (a repeat of the id is ignored: the note is sent once).
pub fn host_note_insert(conn: &Connection, note: &HostNote) -> Result<(), StoreError> {
    let now = now_ts();
    conn.execute(
        "INSERT INTO host_outbox (id, channel_type, platform_id, thread_id, in_reply_to, text, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (id) DO NOTHING",
        params![note.id, note.channel_type, note.platform_id, note.thread_id, note.in_reply_to, note.text, now],
    )
    .sql("queue host note")?;
    Ok(())
}

/// Up to `limit` host notes with `status`, oldest first.
pub fn host_notes(conn: &Connection, status: &str, limit: usize) -> Result<Vec<HostNote>, StoreError> {
    conn.prepare_cached(
        "SELECT id, channel_type, platform_id, thread_id, in_reply_to, text, attempts FROM host_outbox
          WHERE status = ?1 ORDER BY created_at, id LIMIT ?2",
    )
    .sql("list host notes")?
    .query_map(params![status, limit as i64], |r| {
        Ok(HostNote {
            id: r.get(0)?,
            channel_type: r.get(1)?,
            platform_id: r.get(2)?,
            thread_id: r.get(3)?,
            in_reply_to: r.get(4)?,
            text: r.get(5)?,
            attempts: r.get(6)?,
        })
    })
    .sql("list host notes")?
    .collect::<Result<_, _>>()
    .sql("list host notes")
}

/// Sets a host note's status (`sending` counts an attempt), with the error when failed.
pub fn host_note_status(
    conn: &Connection,
    id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE host_outbox SET status = ?2, error = ?3, updated_at = ?4,
           attempts = attempts + (CASE WHEN ?2 = 'sending' THEN 1 ELSE 0 END) WHERE id = ?1",
        params![id, status, error, now_ts()],
    )
    .sql("update host note")?;
    Ok(())
}

/// Deletes finished host notes created before `before`; returns how many.
pub fn host_notes_sweep(conn: &Connection, before: &str) -> Result<usize, StoreError> {
    conn.execute(
        "DELETE FROM host_outbox WHERE status IN ('delivered','failed') AND created_at < ?1",
        [before],
    )
    .sql("sweep host notes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MAIN_AGENT_GROUP_ID, Store};

    #[tokio::test]
    async fn create_agent_makes_the_group_its_config_and_both_destinations_in_one_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        store.call(crate::store::bootstrap).await.unwrap();
        let made =
            store.call(|c| create_child_agent(c, MAIN_AGENT_GROUP_ID, "../Research Bot")).await.unwrap();
        assert_eq!((made.folder.as_str(), made.name_for_parent.as_str()), ("research-bot", "research-bot"));
        let parent = store.call(|c| crate::store::destinations_of(c, MAIN_AGENT_GROUP_ID)).await.unwrap();
        assert!(
            parent.iter().any(|d| d.name == "research-bot"
                && d.agent_group_id.as_deref() == Some(made.agent_group_id.as_str()))
        );
        let id = made.agent_group_id.clone();
        let child = store.call(move |c| crate::store::destinations_of(c, &id)).await.unwrap();
        assert_eq!(child.len(), 1);
        assert_eq!(
            (child[0].name.as_str(), child[0].agent_group_id.as_deref()),
            ("parent", Some(MAIN_AGENT_GROUP_ID))
        );
        let id = made.agent_group_id.clone();
        let configs: i64 = store
            .call(move |c| {
                c.query_row("SELECT count(*) FROM container_configs WHERE agent_group_id = ?1", [&id], |r| {
                    r.get(0)
                })
                .sql("count")
            })
            .await
            .unwrap();
        assert_eq!(configs, 1);
        // The same name again clashes with the parent's destination; nothing is created.
        let err =
            store.call(|c| create_child_agent(c, MAIN_AGENT_GROUP_ID, "research bot")).await.unwrap_err();
        assert!(err.to_string().starts_with("name:"), "{err}");
        for bad in ["", "x".repeat(65).as_str(), "tab\there"] {
            let bad = bad.to_string();
            let err =
                store.call(move |c| create_child_agent(c, MAIN_AGENT_GROUP_ID, &bad)).await.unwrap_err();
            assert!(err.to_string().starts_with("name:"), "{err}");
        }
        let groups = store.call(|c| agent_groups(c)).await.unwrap();
        assert_eq!(groups.len(), 2, "main and the one child");
    }

    #[tokio::test]
    async fn host_opened_dms_are_strict_users_keep_their_newest_name_and_one_key_has_one_open_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        store.call(crate::store::bootstrap).await.unwrap();
        store
            .call(|c| {
                upsert_user(c, "tg:42", "tg", Some("Ann"))?;
                upsert_user(c, "tg:42", "tg", None)?;
                let name: Option<String> =
                    c.query_row("SELECT display_name FROM users WHERE id = 'tg:42'", [], |r| r.get(0)).sql("read")?;
                assert_eq!(name.as_deref(), Some("Ann"), "no name keeps the known one");
                upsert_user(c, "tg:42", "tg", Some("Ann B."))?;
                let name: Option<String> =
                    c.query_row("SELECT display_name FROM users WHERE id = 'tg:42'", [], |r| r.get(0)).sql("read")?;
                assert_eq!(name.as_deref(), Some("Ann B."));
                let dm = open_dm(c, "tg:42", "tg", "dm-42")?;
                assert_eq!((dm.unknown_sender_policy, dm.is_group), (Ok(UnknownSenderPolicy::Strict), false));
                // Two open sessions for one key are impossible, whoever writes them.
                c.execute(
                    "INSERT INTO sessions (id, agent_group_id, messaging_group_id, created_at) VALUES ('s1', 'ag-main', ?1, 't')",
                    [&dm.id],
                )
                .sql("first")?;
                assert!(
                    c.execute(
                        "INSERT INTO sessions (id, agent_group_id, messaging_group_id, created_at) VALUES ('s2', 'ag-main', ?1, 't')",
                        [&dm.id],
                    )
                    .is_err()
                );
                c.execute(
                    "INSERT INTO sessions (id, agent_group_id, session_mode, created_at) VALUES ('s3', 'ag-main', 'agent-shared', 't')",
                    [],
                )
                .sql("agent-shared")?;
                assert!(
                    c.execute(
                        "INSERT INTO sessions (id, agent_group_id, messaging_group_id, session_mode, created_at)
                         VALUES ('s4', 'ag-main', ?1, 'agent-shared', 't')",
                        [&dm.id],
                    )
                    .is_err(),
                    "one agent-shared session per group"
                );
                Ok(())
            })
            .await
            .unwrap();
    }

    #[test]
    fn destination_names_are_normalized_and_checked() {
        assert_eq!(normalize_destination_name("Team Chat!"), "team-chat");
        assert_eq!(normalize_destination_name("***"), "dest");
        assert!(normalize_destination_name(&"a".repeat(200)).len() <= DESTINATION_NAME_MAX - 4);
        assert!(destination_name_ok("team-2") && !destination_name_ok("Team") && !destination_name_ok(""));
    }

    #[tokio::test]
    async fn a_bad_or_taken_destination_name_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        store.call(crate::store::bootstrap).await.unwrap();
        for name in ["Team", "a b", "", "cli"] {
            let n = name.to_string();
            let err = store
                .call(move |c| {
                    add_destination_named(
                        c,
                        MAIN_AGENT_GROUP_ID,
                        &n,
                        DestinationKind::Channel,
                        crate::store::CLI_MESSAGING_GROUP_ID,
                    )
                })
                .await
                .unwrap_err();
            assert!(err.to_string().starts_with("local_name:"), "{name:?}: {err}");
        }
        // The schema refuses one written past the function too.
        let err = store
            .call(|c| {
                c.execute(
                    "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
                     VALUES ('ag-main', 'Bad Name', 'channel', 'mg-cli-local', 't')",
                    [],
                )
                .sql("insert")
            })
            .await;
        assert!(err.is_err());
    }
}
