//! What the router decides for one event, in one central-DB transaction: the chat's messaging
//! group (created for a mention or DM), the sender's user row, each wiring's decision, and the
//! sessions that take the message. Pure rules ([`engaged`], [`decide`]) are separate from the SQL
//! so the engagement matrix of `docs/routing.md` tests them through the real router.

use super::RoutingConfig;
use crate::ports::channel::InboundEvent;
use crate::store::{
    self, DropReason, Dropped, EngageMode, IgnoredPolicy, LedgerOutcome, MessagingGroup, SenderRequest,
    SenderScope, SessionInfo, SessionMode, SqlContext, StoreError, UnknownSenderPolicy, WiringRow,
};
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tracing::warn;

/// The facts of one event that routing decides on.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    pub ledger_id: String,
    pub event: InboundEvent,
    /// Namespaced sender (`<channel_type>:<handle>`), if the platform named one.
    pub sender: Option<String>,
    /// The event as stored for a later replay (JSON).
    pub event_json: String,
}

impl Facts {
    /// A mention, or a DM (a DM counts as a mention whatever the adapter said).
    pub fn addressed(&self) -> bool {
        self.event.is_mention || !self.event.is_group
    }
}

/// Whether a wiring's agent is engaged by a message.
///
/// `pattern_matches` is the engage pattern's verdict (`pattern` mode only); `addressed` a
/// mention or DM; `has_session` whether the agent group has an open session for this (chat,
/// thread) — only a group chat makes `mention-sticky` engage on it.
pub fn engaged(
    mode: EngageMode,
    pattern_matches: bool,
    addressed: bool,
    is_group: bool,
    has_session: bool,
) -> bool {
    match mode {
        EngageMode::Pattern => pattern_matches,
        EngageMode::Mention => addressed,
        EngageMode::MentionSticky => addressed || (is_group && has_session),
    }
}

/// What one wiring does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WiringDecision {
    /// Stored in the session; `trigger` wakes the agent.
    Store {
        /// `messages_in.trigger`.
        trigger: bool,
    },
    /// Not for this wiring (not engaged, `drop`).
    Skip,
    /// Engaged, but the sender may not talk to this agent: not stored.
    Refuse(DropReason),
}

/// The access rules of one wiring (pure): see `docs/routing.md`.
///
/// - The sender is *allowed* when it has access (owner, global admin, admin of the group,
///   member), or the chat is `public` and the wiring takes `all` senders.
/// - Engaged and allowed → stored with `trigger = 1`; engaged and not allowed → refused with the
///   chat's policy reason (`sender_denied` once an approver denied the sender; a `public` chat
///   refusing through `sender_scope = known` counts as `unknown_sender_strict`).
/// - Not engaged: `accumulate` stores an allowed sender's message with `trigger = 0` (a stranger's
///   text never becomes an agent's context); otherwise skipped.
pub fn decide(
    engaged: bool,
    has_access: bool,
    policy: UnknownSenderPolicy,
    scope: SenderScope,
    ignored: IgnoredPolicy,
    sender_denied: bool,
) -> WiringDecision {
    let allowed = has_access || (policy == UnknownSenderPolicy::Public && scope == SenderScope::All);
    match (engaged, allowed) {
        (true, true) => WiringDecision::Store { trigger: true },
        (true, false) => WiringDecision::Refuse(if sender_denied {
            DropReason::SenderDenied
        } else {
            match policy {
                UnknownSenderPolicy::RequestApproval => DropReason::UnknownSenderRequestApproval,
                UnknownSenderPolicy::Strict | UnknownSenderPolicy::Public => DropReason::UnknownSenderStrict,
            }
        }),
        (false, true) if ignored == IgnoredPolicy::Accumulate => WiringDecision::Store { trigger: false },
        (false, _) => WiringDecision::Skip,
    }
}

/// The slash command a text starts with, lowercased, without a `@bot` suffix (`/clear@my_bot`).
pub fn command_of(text: &str) -> Option<String> {
    let t = text.trim_start();
    let word = t.strip_prefix('/')?.split(char::is_whitespace).next()?;
    let word = word.split('@').next().unwrap_or(word);
    (!word.is_empty()).then(|| format!("/{}", word.to_lowercase()))
}

/// A wiring whose stored values all parsed.
#[derive(Debug, Clone)]
struct Rule {
    agent_group_id: String,
    session_mode: SessionMode,
    engage_mode: EngageMode,
    pattern: Option<String>,
    sender_scope: SenderScope,
    ignored: IgnoredPolicy,
}

/// Compiled engage patterns and the wirings already warned about, shared by the router's clones.
#[derive(Debug, Default)]
pub(super) struct Rules {
    patterns: Mutex<HashMap<String, Option<regex::Regex>>>,
    warned: Mutex<HashSet<String>>,
}

impl Rules {
    /// Parses a stored wiring; `None` (with one warning per wiring and problem) disables it: a
    /// row the schema should have refused never engages anything (fail closed).
    fn rule(&self, w: &WiringRow) -> Option<Rule> {
        let parsed = (|| {
            let engage_mode = EngageMode::parse(&w.engage_mode).map_err(|e| format!("engage_mode: {e}"))?;
            let pattern = match engage_mode {
                EngageMode::Pattern => {
                    let p =
                        w.engage_pattern.clone().ok_or("engage_pattern: missing for engage_mode pattern")?;
                    if p != "." && self.pattern(&p).is_none() {
                        return Err(format!("engage_pattern: {p:?} does not compile under the size limit"));
                    }
                    Some(p)
                }
                _ => None,
            };
            Ok::<_, String>(Rule {
                agent_group_id: w.agent_group_id.clone(),
                session_mode: SessionMode::parse(&w.session_mode)
                    .map_err(|e| format!("session_mode: {e}"))?,
                engage_mode,
                pattern,
                sender_scope: SenderScope::parse(&w.sender_scope)
                    .map_err(|e| format!("sender_scope: {e}"))?,
                ignored: IgnoredPolicy::parse(&w.ignored_message_policy)
                    .map_err(|e| format!("ignored_message_policy: {e}"))?,
            })
        })();
        match parsed {
            Ok(r) => Some(r),
            Err(problem) => {
                if self.warned.lock().insert(format!("{}\u{0}{problem}", w.id)) {
                    warn!(wiring = %w.id, %problem, "wiring disabled: invalid stored value (fix the row to enable it)");
                }
                None
            }
        }
    }

    fn pattern(&self, p: &str) -> Option<regex::Regex> {
        let mut cache = self.patterns.lock();
        if let Some(r) = cache.get(p) {
            return r.clone();
        }
        let compiled = store::compile_engage_pattern(p).ok();
        // Bounded: patterns come from wiring rows, which an admin writes.
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(p.to_string(), compiled.clone());
        compiled
    }

    fn matches(&self, rule: &Rule, text: &str) -> bool {
        match rule.pattern.as_deref() {
            None => false,
            Some(".") => true,
            Some(p) => self.pattern(p).is_some_and(|r| r.is_match(text)),
        }
    }
}

/// One session that takes the message.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub session: SessionInfo,
    pub trigger: bool,
}

/// A refusal to count (and maybe a request to store) when the entry is finished.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub reason: DropReason,
    pub messaging_group_id: Option<String>,
    pub agent_group_id: Option<String>,
}

/// What [`plan`] decided.
#[derive(Debug)]
pub(super) enum Plan {
    /// Refused before any session: recorded and the ledger entry finished, in the plan's
    /// transaction; with the id of the approval it asked for (a chat's registration).
    Dropped(DropReason, Option<String>),
    /// Sessions take the message (maybe none: then [`finish`] records the refusal or
    /// `no_agent_engaged`).
    Deliver {
        mg: Box<MessagingGroup>,
        targets: Vec<Target>,
        refusal: Option<Refusal>,
        /// An admin-only command from a non-admin: the refusal the chat is told.
        command_refusal: Option<String>,
    },
}

/// Decides where one event goes (module doc), in one transaction.
pub(super) fn plan(
    conn: &mut Connection,
    facts: &Facts,
    config: &RoutingConfig,
    rules: &Rules,
    approval_ttl: Duration,
) -> Result<Plan, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin routing")?;
    let e = &facts.event;
    let sender = facts.sender.as_deref();
    let drop = |conn: &Connection, reason: DropReason, mg: Option<&str>| -> Result<Plan, StoreError> {
        store::record_dropped(
            conn,
            &Dropped {
                channel_type: &e.channel_type,
                platform_id: &e.platform_id,
                user_id: sender,
                sender_name: e.sender_name.as_deref(),
                reason,
                messaging_group_id: mg,
                agent_group_id: None,
            },
        )?;
        store::ledger_finish(conn, &facts.ledger_id, LedgerOutcome::Dropped(reason))?;
        Ok(Plan::Dropped(reason, None))
    };
    if let Some(user) = sender {
        store::upsert_user(&tx, user, &e.channel_type, e.sender_name.as_deref())?;
    }
    let mg = match store::find_messaging_group(&tx, &e.channel_type, &e.platform_id)? {
        Some(mg) => mg,
        None if facts.addressed() => store::create_messaging_group(
            &tx,
            &e.channel_type,
            &e.platform_id,
            e.chat_name.as_deref(),
            e.is_group,
            config.default_unknown_sender_policy,
        )?,
        None => {
            let plan = drop(&tx, DropReason::UnknownChat, None)?;
            tx.commit().sql("commit routing")?;
            return Ok(plan);
        }
    };
    let wirings = store::wirings_of(&tx, &mg.id)?;
    let mut approval = None;
    let early = if mg.denied {
        Some(DropReason::ChannelDenied)
    } else if wirings.is_empty() {
        if facts.addressed()
            && store::request_channel_approval(&tx, &mg.id, sender, &facts.ledger_id, &facts.event_json)?
        {
            approval = Some(channel_approval(&tx, facts, &mg, approval_ttl)?);
        }
        Some(DropReason::NoAgentWired)
    } else {
        command_of(&e.text)
            .filter(|c| config.filtered_commands.contains(c))
            .map(|_| DropReason::CommandFiltered)
    };
    if let Some(reason) = early {
        drop(&tx, reason, Some(&mg.id))?;
        tx.commit().sql("commit routing")?;
        return Ok(Plan::Dropped(reason, approval));
    }
    let policy = mg.unknown_sender_policy.clone().unwrap_or(UnknownSenderPolicy::Strict);
    let denied =
        sender.map(|s| store::sender_request_status(&tx, &mg.id, s)).transpose()?.flatten().as_deref()
            == Some("denied");
    let admin_only = command_of(&e.text).filter(|c| config.admin_only_commands.contains(c));
    let mut targets = Vec::new();
    let mut refusal: Option<Refusal> = None;
    let mut command_refusal = None;
    for rule in wirings.iter().filter_map(|w| rules.rule(w)) {
        // A threaded group chat gets a session per thread unless the wiring shares one session
        // over the whole agent group.
        let mode = if mg.is_group && e.thread_id.is_some() && rule.session_mode != SessionMode::AgentShared {
            SessionMode::PerThread
        } else {
            rule.session_mode
        };
        let key_thread = if mode == SessionMode::PerThread { e.thread_id.as_deref() } else { None };
        let has_session = rule.engage_mode == EngageMode::MentionSticky
            && mg.is_group
            && store::has_open_session(&tx, &rule.agent_group_id, &mg.id, key_thread)?;
        let is_engaged = engaged(
            rule.engage_mode,
            rule.engage_mode == EngageMode::Pattern && rules.matches(&rule, &e.text),
            facts.addressed(),
            mg.is_group,
            has_session,
        );
        let access = match sender {
            Some(s) => store::has_access(&tx, s, &rule.agent_group_id)?,
            None => false,
        };
        let mut decision = decide(is_engaged, access, policy, rule.sender_scope, rule.ignored, denied);
        // Admin-only commands reach an agent only from its admins, and are never accumulated.
        if let (Some(cmd), WiringDecision::Store { trigger }) = (&admin_only, decision) {
            let admin = match sender {
                Some(s) => store::is_admin_of(&tx, s, &rule.agent_group_id)?,
                None => false,
            };
            if !admin {
                decision = if trigger {
                    WiringDecision::Refuse(DropReason::CommandFiltered)
                } else {
                    WiringDecision::Skip
                };
                if trigger {
                    command_refusal = Some(format!("Permission denied: {cmd} requires admin access."));
                }
            }
        }
        match decision {
            WiringDecision::Store { trigger } => {
                let session = store::resolve_session_in(
                    &tx,
                    &rule.agent_group_id,
                    &mg.id,
                    e.thread_id.as_deref(),
                    mode,
                )?;
                targets.push(Target { session, trigger });
            }
            WiringDecision::Skip => {}
            WiringDecision::Refuse(reason) => {
                // The first refusal (by priority) is the one counted: one row per event.
                if refusal.is_none() {
                    refusal = Some(Refusal {
                        reason,
                        messaging_group_id: Some(mg.id.clone()),
                        agent_group_id: Some(rule.agent_group_id.clone()),
                    });
                }
            }
        }
    }
    tx.commit().sql("commit routing")?;
    Ok(Plan::Deliver { mg: Box::new(mg), targets, refusal, command_refusal })
}

/// Finishes an entry the sessions took (or that every wiring refused), in one transaction: the
/// refusal counted once, a sender request stored once per (chat, sender), the ledger entry
/// `routed` (some session took it) or `dropped` with its reason.
/// Returns the refusal (none when routed) and the id of an approval it asked for (a new sender
/// request's).
pub(super) fn finish(
    conn: &mut Connection,
    facts: &Facts,
    stored: bool,
    refusal: Option<&Refusal>,
    note: Option<&store::HostNote>,
    approval_ttl: Duration,
) -> Result<(Option<DropReason>, Option<String>), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin finish routing")?;
    let e = &facts.event;
    let mut reason = refusal.map(|r| r.reason);
    let mut approval = None;
    if let Some(r) = refusal
        && r.reason == DropReason::UnknownSenderRequestApproval
        && let (Some(sender), Some(mg), Some(ag)) = (&facts.sender, &r.messaging_group_id, &r.agent_group_id)
    {
        match store::request_sender_approval(
            &tx,
            mg,
            ag,
            sender,
            e.sender_name.as_deref(),
            &facts.ledger_id,
            &facts.event_json,
        )? {
            SenderRequest::Created(request) => {
                approval = Some(sender_approval(&tx, facts, &request, mg, ag, approval_ttl)?);
            }
            SenderRequest::Pending => {}
            // Denied between plan and finish: count it as such.
            SenderRequest::Denied => reason = Some(DropReason::SenderDenied),
        }
    }
    if !stored && reason.is_none() {
        reason = Some(DropReason::NoAgentEngaged);
    }
    if let Some(reason) = reason {
        store::record_dropped(
            &tx,
            &Dropped {
                channel_type: &e.channel_type,
                platform_id: &e.platform_id,
                user_id: facts.sender.as_deref(),
                sender_name: e.sender_name.as_deref(),
                reason,
                messaging_group_id: refusal.and_then(|r| r.messaging_group_id.as_deref()),
                agent_group_id: refusal.and_then(|r| r.agent_group_id.as_deref()),
            },
        )?;
    }
    let outcome = match (stored, reason) {
        (true, _) => LedgerOutcome::Routed,
        (false, Some(r)) => LedgerOutcome::Dropped(r),
        (false, None) => LedgerOutcome::Dropped(DropReason::NoAgentEngaged),
    };
    store::ledger_finish(&tx, &facts.ledger_id, outcome)?;
    if let Some(note) = note {
        store::host_note_insert(&tx, note)?;
    }
    tx.commit().sql("commit finish routing")?;
    Ok((if stored { None } else { reason }, approval))
}

/// The start of a message for a card: its first 500 characters.
fn preview(text: &str) -> String {
    text.chars().take(500).collect()
}

/// The approval row of a new channel registration: the card offers every agent group (at most
/// 8, by name), a new agent, and rejecting the chat.
fn channel_approval(
    tx: &Connection,
    facts: &Facts,
    mg: &MessagingGroup,
    ttl: Duration,
) -> Result<String, StoreError> {
    let e = &facts.event;
    let mut options: Vec<serde_json::Value> = store::agent_groups(tx)?
        .into_iter()
        .take(8)
        .map(|(id, name)| serde_json::json!({"label": format!("Connect to {name}"), "choice": format!("connect:{id}")}))
        .collect();
    options.push(serde_json::json!({"label": "Create a new agent", "choice": "new"}));
    options.push(serde_json::json!({"label": "Reject this chat", "choice": "reject"}));
    let payload = serde_json::json!({
        "channel_type": e.channel_type,
        "chat": e.platform_id,
        "chat_name": mg.name,
        "is_group": e.is_group,
        "messaging_group_id": mg.id,
        "sender": facts.sender,
        "sender_name": e.sender_name,
        "text": preview(&e.text),
        "options": options,
    });
    let (id, _) = store::create_approval(
        tx,
        &store::NewApproval {
            kind: store::ApprovalKind::Channel,
            action: "channel".into(),
            request_id: mg.id.clone(),
            payload,
            agent_group_id: None,
            session_id: None,
            origin: origin_of(facts),
            ttl,
        },
    )?;
    Ok(id)
}

/// The approval row of a new sender request.
fn sender_approval(
    tx: &Connection,
    facts: &Facts,
    request: &str,
    mg: &str,
    ag: &str,
    ttl: Duration,
) -> Result<String, StoreError> {
    let e = &facts.event;
    let agent = store::agent_groups(tx)?.into_iter().find(|(id, _)| id == ag).map(|(_, n)| n);
    let payload = serde_json::json!({
        "agent": agent,
        "agent_group_id": ag,
        "channel_type": e.channel_type,
        "chat": e.platform_id,
        "messaging_group_id": mg,
        "request_id": request,
        "sender": facts.sender,
        "sender_name": e.sender_name,
        "text": preview(&e.text),
    });
    let (id, _) = store::create_approval(
        tx,
        &store::NewApproval {
            kind: store::ApprovalKind::Sender,
            action: "sender".into(),
            request_id: request.to_string(),
            payload,
            agent_group_id: Some(ag.to_string()),
            session_id: None,
            origin: origin_of(facts),
            ttl,
        },
    )?;
    Ok(id)
}

fn origin_of(facts: &Facts) -> store::Origin {
    store::Origin {
        channel_type: Some(facts.event.channel_type.clone()),
        platform_id: Some(facts.event.platform_id.clone()),
        thread_id: facts.event.thread_id.clone(),
        sender_id: facts.sender.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_like_chat_platforms_write_them() {
        assert_eq!(command_of("/clear"), Some("/clear".into()));
        assert_eq!(command_of("  /Clear now"), Some("/clear".into()));
        assert_eq!(command_of("/clear@my_bot please"), Some("/clear".into()));
        assert_eq!(command_of("hello /clear"), None);
        assert_eq!(command_of("/"), None);
    }

    #[test]
    fn a_refused_sender_is_never_accumulated_and_public_scope_known_is_strict() {
        use DropReason::*;
        use IgnoredPolicy::*;
        use SenderScope::*;
        use UnknownSenderPolicy::*;
        assert_eq!(decide(false, false, Strict, All, Accumulate, false), WiringDecision::Skip);
        assert_eq!(
            decide(false, true, Strict, All, Accumulate, false),
            WiringDecision::Store { trigger: false }
        );
        assert_eq!(
            decide(true, false, Public, Known, Drop, false),
            WiringDecision::Refuse(UnknownSenderStrict)
        );
        assert_eq!(decide(true, false, Public, All, Drop, false), WiringDecision::Store { trigger: true });
        assert_eq!(
            decide(true, false, RequestApproval, All, Drop, true),
            WiringDecision::Refuse(SenderDenied)
        );
    }
}
