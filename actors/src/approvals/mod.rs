//! Approvals (DESIGN §10): every risky agent action, every unknown sender and every chat waiting
//! for registration waits for the right person's yes; an agent's question waits for its chat's
//! answer. `docs/approvals.md` states the rules as users see them.
//!
//! - A request is a `pending_approvals` row ([`crate::store::create_approval`]) with a canonical
//!   payload and its SHA-256. One [`actor::ApprovalActor`] per open row, under the
//!   [`crate::actors::approval_supervisor::ApprovalSupervisor`], picks the approver, delivers the
//!   card ([`card`]), arms the expiry as a ractor timer, carries the approved action out once
//!   ([`actions`]) and reports back to the requesting agent; at start every open row gets its
//!   actor back with its remaining lifetime.
//! - Decisions arrive by button ([`crate::ports::channel::InboundSink::click`]), by a reply
//!   `approve <id>` / `deny <id>` the router takes before engagement ([`parse_reply`]), or by
//!   [`ApprovalsHandle::decide`] with [`Decider::Host`] (what `ncl approvals approve|deny` calls).
//!   [`ApprovalsHandle::decide`] checks the decider and takes the row with a compare-and-set in
//!   one store call, so a double click, a second approver and a click racing the expiry change it
//!   once; the decision itself never waits for an actor's mailbox.

pub mod actions;
pub mod actor;
pub mod card;

use crate::actors::approval_supervisor::ApprovalSupervisorMessage;
use crate::store::{
    self, Approval, ApprovalKind, ApprovalStatus, DecideOutcome, DecidedVia, Decision, SqlContext, Store,
    StoreError,
};
use ractor::ActorRef;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Approval settings (config section `[approvals]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalsConfig {
    /// How long a request waits for a decision (`approvals.ttl_seconds`, default 1 h).
    pub ttl: Duration,
    /// Lifetimes per action name (`[approvals.ttl_seconds_by_action]`, e.g. `install_packages =
    /// 7200`; `sender` and `channel` for the routing's requests); the others get
    /// [`ApprovalsConfig::ttl`]. A question's own `timeout_s` always wins.
    pub ttl_by_action: BTreeMap<String, Duration>,
    /// Delivery attempts of a card per approver before the next approver is tried (3).
    pub card_attempts: u32,
    /// Pause before a card is delivered again, doubled per attempt (2 s).
    pub card_retry: Duration,
    /// Longest card body in characters; a longer payload is cut and names
    /// `ncl approvals get <id>` for the rest (3,000: under every platform's message limit).
    pub card_text_chars: usize,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            ttl_by_action: BTreeMap::new(),
            card_attempts: 3,
            card_retry: Duration::from_secs(2),
            card_text_chars: 3_000,
        }
    }
}

impl ApprovalsConfig {
    /// The lifetime of a request for `action`.
    pub fn ttl_of(&self, action: &str) -> Duration {
        self.ttl_by_action.get(action).copied().unwrap_or(self.ttl)
    }
}

/// Who decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// A chat user (namespaced id `<channel_type>:<handle>`), by button or reply.
    User(String),
    /// The host's operator through `ncl` (the admin socket is the owner's, mode 0600).
    Host,
}

impl Decider {
    /// The id recorded as `decided_by`: the user id, or `host` for the operator.
    pub fn id(&self) -> &str {
        match self {
            Decider::User(u) => u,
            Decider::Host => "host",
        }
    }
}

/// What the decider picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Yes (on a chat's registration card: its first option).
    Approve,
    /// No.
    Deny,
    /// The card's option with this index (0-based): a button, or a number in a reply.
    Option(usize),
    /// A chat's registration: create a new agent group with this name.
    NewAgent(String),
    /// A question's answer given as the text of an option.
    Text(String),
}

/// A decision as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRequest {
    /// The approval id (lowercase).
    pub id: String,
    /// What was picked.
    pub choice: Choice,
    /// Who decides.
    pub by: Decider,
    /// How it arrived.
    pub via: DecidedVia,
    /// The chat it was given in (channel type, platform id); `None` for `ncl`. A question is
    /// answered only in its own chat.
    pub chat: Option<(String, String)>,
}

/// The answer to a decision, for the decider. Display is the one line they see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionAnswer {
    /// This decision took the request.
    Decided {
        /// The approval id.
        id: String,
        /// `approved`, `denied`, or for a question `approved` with the answer.
        status: ApprovalStatus,
        /// What was decided, for the line (`install_packages`, `answer "blue"`).
        what: String,
    },
    /// A chat's registration needs the new agent's name.
    NeedsName {
        /// The approval id.
        id: String,
    },
    /// The decider may not decide this request (logged).
    NotAllowed {
        /// The approval id.
        id: String,
    },
    /// No approval has this id.
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// Its time ran out.
    Expired {
        /// The approval id.
        id: String,
    },
    /// Someone decided first, or it ended otherwise.
    AlreadyDecided {
        /// The approval id.
        id: String,
        /// Its status now.
        status: ApprovalStatus,
        /// Who decided.
        by: Option<String>,
    },
    /// The choice does not fit the card (one line saying why).
    Invalid {
        /// The approval id.
        id: String,
        /// Why.
        why: String,
    },
}

impl std::fmt::Display for DecisionAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecisionAnswer::Decided { id, status: ApprovalStatus::Denied, what } => {
                write!(f, "denied {id}: {what}")
            }
            DecisionAnswer::Decided { id, what, .. } if what.starts_with("answer ") => {
                write!(f, "answered {id}: {}", &what["answer ".len()..])
            }
            DecisionAnswer::Decided { id, what, .. } => write!(f, "approved {id}: {what}"),
            DecisionAnswer::NeedsName { id } => {
                write!(f, "reply `approve {id} new <name>` with the name of the new agent")
            }
            DecisionAnswer::NotAllowed { id } => write!(f, "not allowed: you cannot decide {id}"),
            DecisionAnswer::NotFound { id } => write!(f, "no pending approval {id}"),
            DecisionAnswer::Expired { id } => write!(f, "approval {id} expired"),
            DecisionAnswer::AlreadyDecided { id, status, by } => {
                let word = match status {
                    ApprovalStatus::Approved | ApprovalStatus::Executed => "approved",
                    other => other.as_str(),
                };
                match by {
                    Some(by) => write!(f, "{id} was already {word} by {by}"),
                    None => write!(f, "{id} was already {word}"),
                }
            }
            DecisionAnswer::Invalid { id, why } => write!(f, "cannot decide {id}: {why}"),
        }
    }
}

/// A chat reply that decides: `approve <id>` / `deny <id>`, any case, an optional leading `/`,
/// an id of approval shape; after the id, `approve` takes an option number (`approve <id> 2`) or
/// `new <name>` (a chat's registration). Anything else — a bare `approve`, an id of another
/// shape — is ordinary text for the agents. Returns the id (lowercase) and the choice.
pub fn parse_reply(text: &str) -> Option<(String, Choice)> {
    let text = text.trim();
    let text = text.strip_prefix('/').unwrap_or(text);
    let mut words = text.splitn(3, char::is_whitespace).filter(|w| !w.is_empty());
    let verb = words.next()?.to_ascii_lowercase();
    let id = words.next()?.to_ascii_lowercase();
    if !store::is_approval_id(&id) {
        return None;
    }
    let rest = text.split_whitespace().skip(2).collect::<Vec<_>>();
    let choice = match (verb.as_str(), rest.as_slice()) {
        ("approve", []) => Choice::Approve,
        ("deny", []) => Choice::Deny,
        ("approve", [n]) => Choice::Option(n.parse::<usize>().ok().filter(|n| *n >= 1)? - 1),
        ("approve", [new, name @ ..]) if new.eq_ignore_ascii_case("new") && !name.is_empty() => {
            Choice::NewAgent(name.join(" "))
        }
        _ => return None,
    };
    Some((id, choice))
}

/// The callback data of option `index` of the card of approval `id`: `nc:<id>:<index>`
/// (at most 12 bytes, under every platform's limit).
pub fn callback(id: &str, index: usize) -> String {
    format!("nc:{id}:{index}")
}

/// Parses callback data back into (id, option index). Untrusted: anything else is `None`.
pub fn parse_callback(data: &str) -> Option<(String, usize)> {
    let rest = data.strip_prefix("nc:")?;
    let (id, index) = rest.split_once(':')?;
    if !store::is_approval_id(id) || index.len() > 2 {
        return None;
    }
    Some((id.to_string(), index.parse().ok()?))
}

/// The decision a choice makes on an approval, or why it makes none.
enum Resolved {
    /// Record this.
    Decide { to: ApprovalStatus, choice: Option<String>, what: String },
    /// A registration's "new agent" option without a name.
    NeedsName,
    /// The choice does not fit.
    Invalid(String),
}

fn resolve(a: &Approval, choice: &Choice) -> Resolved {
    let approve = |what: String| Resolved::Decide { to: ApprovalStatus::Approved, choice: None, what };
    let deny = |what: String| Resolved::Decide { to: ApprovalStatus::Denied, choice: None, what };
    match a.kind {
        ApprovalKind::Action | ApprovalKind::Sender => match choice {
            Choice::Approve | Choice::Option(0) => approve(a.action.clone()),
            Choice::Deny | Choice::Option(1) => deny(a.action.clone()),
            _ => Resolved::Invalid("answer approve or deny".into()),
        },
        ApprovalKind::Channel => {
            let options = card::channel_options(a);
            let pick = |i: usize| match options.get(i) {
                Some((_, c)) if c == "new" => Resolved::NeedsName,
                Some((_, c)) if c == "reject" => deny("the chat is rejected".into()),
                Some((label, c)) => Resolved::Decide {
                    to: ApprovalStatus::Approved,
                    choice: Some(c.clone()),
                    what: label.clone(),
                },
                None => Resolved::Invalid(format!("option {} does not exist (1-{})", i + 1, options.len())),
            };
            match choice {
                Choice::Approve => pick(0),
                Choice::Option(i) => pick(*i),
                Choice::Deny => deny("the chat is rejected".into()),
                Choice::NewAgent(name) => match store::check_agent_name(name) {
                    Ok(()) => Resolved::Decide {
                        to: ApprovalStatus::Approved,
                        choice: Some(format!("new:{name}")),
                        what: format!("create agent {name:?}"),
                    },
                    Err(e) => Resolved::Invalid(e.to_string()),
                },
                Choice::Text(_) => Resolved::Invalid("pick an option".into()),
            }
        }
        ApprovalKind::Question => {
            let options = card::question_options(a);
            let answer = match choice {
                Choice::Option(i) => options.get(*i).cloned(),
                Choice::Text(t) => options.iter().find(|o| o.trim().eq_ignore_ascii_case(t.trim())).cloned(),
                _ => None,
            };
            match answer {
                Some(answer) => Resolved::Decide {
                    to: ApprovalStatus::Approved,
                    what: format!("answer {answer:?}"),
                    choice: Some(answer),
                },
                None => Resolved::Invalid("answer with one of the options".into()),
            }
        }
    }
}

/// Whether `by` may decide `a`: the host operator always; a user when they are the chosen
/// approver, or an owner or admin over the agent group (for a chat not wired yet: an owner or a
/// global admin). A question is answered in its own chat by someone with access to the agent
/// group (anyone, where the chat is public).
fn may_decide(
    conn: &rusqlite::Connection,
    a: &Approval,
    by: &Decider,
    chat: Option<&(String, String)>,
) -> Result<bool, StoreError> {
    let Decider::User(user) = by else { return Ok(true) };
    if a.kind == ApprovalKind::Question {
        let Some(q) = store::question(conn, &a.id)? else { return Ok(false) };
        let Some((channel_type, platform_id)) = chat else { return Ok(false) };
        if (channel_type, platform_id) != (&q.card.channel_type, &q.card.platform_id) {
            return Ok(false);
        }
        let public = store::find_messaging_group(conn, channel_type, platform_id)?
            .is_some_and(|mg| mg.unknown_sender_policy == Ok(store::UnknownSenderPolicy::Public));
        return Ok(match a.agent_group_id.as_deref() {
            Some(ag) => public || store::has_access(conn, user, ag)?,
            None => public,
        });
    }
    if a.approver_user_id.as_deref() == Some(user.as_str()) {
        return Ok(true);
    }
    store::is_admin_of(conn, user, a.agent_group_id.as_deref().unwrap_or(""))
}

/// Typed handle over the approval supervisor. Clones share the supervisor they point at; the
/// root supervisor points them at a replacement after a restart ([`ApprovalsHandle::replace`]).
#[derive(Clone)]
pub struct ApprovalsHandle {
    store: Store,
    actor: Arc<parking_lot::RwLock<Option<ActorRef<ApprovalSupervisorMessage>>>>,
}

impl std::fmt::Debug for ApprovalsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalsHandle")
    }
}

impl ApprovalsHandle {
    /// A handle over `store`, not yet pointing at a supervisor (decisions are recorded; actors
    /// start once [`ApprovalsHandle::replace`] gave it one, which restores open rows anyway).
    pub fn new(store: Store) -> Self {
        Self { store, actor: Default::default() }
    }

    /// Points this handle and all its clones at a (new) approval supervisor.
    pub fn replace(&self, actor: ActorRef<ApprovalSupervisorMessage>) {
        *self.actor.write() = Some(actor);
    }

    fn tell(&self, message: ApprovalSupervisorMessage) {
        if let Some(a) = self.actor.read().as_ref() {
            let _ = a.cast(message);
        }
    }

    /// A request row was stored (by the router, in its own transaction): start its actor.
    pub fn started(&self, id: String) {
        self.tell(ApprovalSupervisorMessage::Spawn(id));
    }

    /// Files an agent's system action that needs a person's yes (or a question): checks every
    /// field again (the container is untrusted), stores the request and starts its actor.
    /// Returns the approval id; a repeat of the same row returns the same id.
    ///
    /// Errors: one line naming the field, for the agent.
    pub async fn request(&self, request: actions::ActionRequest) -> Result<String, String> {
        let prepared = actions::prepare(&request)?;
        let (id, created) = self
            .store
            .call(move |c| {
                let tx = c.transaction().sql("begin request")?;
                let (id, created) = store::create_approval(&tx, &prepared.approval)?;
                if let Some(q) = &prepared.question {
                    store::create_question(&tx, &store::Question { id: id.clone(), ..q.clone() })?;
                }
                tx.commit().sql("commit request")?;
                Ok((id, created))
            })
            .await
            .map_err(|e| format!("the request could not be stored: {e}"))?;
        if created {
            info!(approval = %id, action = %request.action.name(), session = %request.session.id, "approval requested");
        }
        self.started(id.clone());
        Ok(id)
    }

    /// Decides an approval for `request.by` (see the module docs): checks who decides, resolves
    /// the choice against the card, and takes the row with a compare-and-set. The approval's actor
    /// then carries the decision out. Refusals are logged.
    ///
    /// Errors: only a failing store; every other outcome is a [`DecisionAnswer`].
    pub async fn decide(&self, request: DecisionRequest) -> Result<DecisionAnswer, StoreError> {
        let r = request.clone();
        let answer = self
            .store
            .call(move |c| {
                let id = r.id.clone();
                let Some(a) = store::approval(c, &id)? else { return Ok(DecisionAnswer::NotFound { id }) };
                if !may_decide(c, &a, &r.by, r.chat.as_ref())? {
                    return Ok(DecisionAnswer::NotAllowed { id });
                }
                if a.status != ApprovalStatus::Pending {
                    return Ok(match a.status {
                        ApprovalStatus::Expired => DecisionAnswer::Expired { id },
                        status => DecisionAnswer::AlreadyDecided { id, status, by: a.decided_by },
                    });
                }
                let (to, choice, what) = match resolve(&a, &r.choice) {
                    Resolved::Decide { to, choice, what } => (to, choice, what),
                    Resolved::NeedsName => return Ok(DecisionAnswer::NeedsName { id }),
                    Resolved::Invalid(why) => return Ok(DecisionAnswer::Invalid { id, why }),
                };
                let decision =
                    Decision { to, by: r.by.id(), via: r.via, choice: choice.as_deref(), result: None };
                Ok(match store::decide_approval(c, &id, &decision)? {
                    DecideOutcome::Decided(_) => DecisionAnswer::Decided { id, status: to, what },
                    DecideOutcome::NotFound => DecisionAnswer::NotFound { id },
                    DecideOutcome::Expired => DecisionAnswer::Expired { id },
                    DecideOutcome::AlreadyDecided { status, by } => {
                        DecisionAnswer::AlreadyDecided { id, status, by }
                    }
                })
            })
            .await?;
        match &answer {
            DecisionAnswer::Decided { id, status, .. } => {
                info!(approval = %id, status = %status, by = %request.by.id(), via = %request.via, "approval decided");
                self.tell(ApprovalSupervisorMessage::Decided(id.clone()));
            }
            DecisionAnswer::NotAllowed { id } => {
                warn!(approval = %id, by = %request.by.id(), via = %request.via, "decision refused: not an approver of this request")
            }
            other => {
                info!(approval = %request.id, by = %request.by.id(), answer = %other, "decision not taken")
            }
        }
        Ok(answer)
    }

    /// How many approval actors are alive (for tests and `ncl status`); `None` without a
    /// supervisor.
    pub async fn live(&self) -> Option<usize> {
        let actor = self.actor.read().clone()?;
        ractor::call_t!(actor, ApprovalSupervisorMessage::Live, 5_000).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decide_only_in_their_exact_shape() {
        assert_eq!(parse_reply("approve abc234"), Some(("abc234".into(), Choice::Approve)));
        assert_eq!(parse_reply("  /DENY ABC234 "), Some(("abc234".into(), Choice::Deny)));
        assert_eq!(parse_reply("approve abc234 2"), Some(("abc234".into(), Choice::Option(1))));
        assert_eq!(
            parse_reply("approve abc234 new Lab  Bot"),
            Some(("abc234".into(), Choice::NewAgent("Lab Bot".into())))
        );
        for text in [
            "approve",
            "approve it",
            "approve abc1234",
            "approve abc238",
            "deny abc234 2",
            "approve abc234 0",
            "approve abc234 new",
            "please approve abc234",
            "approve abc234 two words",
        ] {
            assert_eq!(parse_reply(text), None, "{text}");
        }
    }

    #[test]
    fn callbacks_round_trip_and_anything_else_is_refused() {
        let data = callback("abc234", 3);
        assert!(data.len() <= crate::ports::channel::MAX_CALLBACK_BYTES);
        assert_eq!(parse_callback(&data), Some(("abc234".into(), 3)));
        for bad in ["nc:abc234", "nc:abc23:1", "nc:abc234:x", "nc:abc234:123", "xx:abc234:1", ""] {
            assert_eq!(parse_callback(bad), None, "{bad}");
        }
    }
}
