//! The router: inbound platform message → ledger → messaging group → wirings → sessions.
//! `docs/routing.md` states the rules as users see them, with the engagement table.
//!
//! 1. The event is committed to `inbound_ledger`, deduplicated on (`channel_type`,
//!    `platform_message_id`) — before the platform is acknowledged (DESIGN §5 invariant 2).
//! 2. One transaction ([`plan`]) decides: the chat's messaging group (an unknown chat is created
//!    only for a mention or DM, else the message counts as `unknown_chat`); a rejected chat
//!    (`channel_denied`), a chat without wirings (`no_agent_wired`, and one pending registration
//!    per chat for a mention or DM) and a filtered slash command (`command_filtered`) end there.
//!    Otherwise every wiring decides on its own, in priority order: engaged (pattern, mention,
//!    mention-sticky), the sender's access under the chat's policy and the wiring's sender scope,
//!    admin-only commands; engaged and allowed → `trigger = 1`; not engaged and `accumulate` →
//!    `trigger = 0`; refused → not stored. Invalid stored wirings never engage (fail closed).
//! 3. The sessions (created as the session mode says) take their rows concurrently, each within
//!    [`RoutingConfig::session_deadline`]. Row ids are `<ledger id>:<agent group id>`, so routing
//!    an entry again (after a crash, or a replay on approval) writes nothing twice.
//! 4. One transaction ([`plan::finish`]) marks the entry `routed` or `dropped` with its reason,
//!    counts the refusal once in `unregistered_senders`, stores a pending sender request, and
//!    queues the host's note to the chat (a refused admin-only command) for
//!    [`crate::host_outbox`]. Entries still `received` at start are routed again
//!    ([`Router::recover`]).
//!
//! The messages of one chat that queued up while its previous ones were routed go through these
//! steps together ([`Router::route_batch`]): one ledger transaction, one decision call, one
//! `inbound.db` commit per session, one finishing call — fewer fsyncs per message under load.

mod effects;
pub mod plan;

pub use effects::{ChannelChoice, EffectError};

use crate::actors::session_supervisor::SessionsHandle;
use crate::approvals::{self, ApprovalsConfig, ApprovalsHandle, Choice, Decider, DecisionRequest};
use crate::disk::DiskError;
use crate::ports::channel::{Click, InboundAck, InboundEvent};
use crate::session_files::NewInbound;
use crate::store::{
    self, DecidedVia, DropReason, LedgerEntry, LedgerInsert, LedgerOutcome, SqlContext, Store,
    UnknownSenderPolicy, new_id,
};
use futures_util::future::join_all;
use nanoclaw_protocol::content::ChatContent;
use plan::{Facts, Plan, Rules};
use rusqlite::TransactionBehavior;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, debug, info_span, warn};

/// Testing knob: with `NANOCLAW_TEST_CRASH_AFTER_LEDGER=1` the process aborts right after the
/// first new ledger entry is committed and before any session takes it — the instant whose
/// recovery ([`Router::recover`]) a test cannot otherwise hit on purpose. Never set it in
/// production.
pub const CRASH_AFTER_LEDGER_ENV: &str = "NANOCLAW_TEST_CRASH_AFTER_LEDGER";

static CRASH_AFTER_LEDGER: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var(CRASH_AFTER_LEDGER_ENV).is_ok_and(|v| v == "1"));

/// How long [`Router`] waits for a stopping session actor to exit before asking for a new one.
const STOPPING_ACTOR_WAIT: Duration = Duration::from_secs(2);

/// An entry some sessions take: its index in the batch, chat, whether any session took it, the
/// refusal to count, the command refusal to tell the chat.
type Delivered = (usize, Box<store::MessagingGroup>, bool, Option<plan::Refusal>, Option<String>);

/// Routing settings (config section `[routing]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Policy of a chat created by a mention or DM (`routing.unknown_sender_policy`, default
    /// `request_approval`).
    pub default_unknown_sender_policy: UnknownSenderPolicy,
    /// How long finished ledger keys are kept for deduplication (`routing.dedupe_retention`,
    /// default 7 days).
    pub dedupe_retention: Duration,
    /// Slash commands dropped and recorded (`routing.commands.filtered`; default `/login`,
    /// `/logout`, `/config`), lowercase with the `/`.
    pub filtered_commands: Vec<String>,
    /// Slash commands only an owner or an admin of the group may send
    /// (`routing.commands.admin_only`; default `/clear`, `/compact`, `/cost`, `/context`).
    pub admin_only_commands: Vec<String>,
    /// Longest a session may take to accept a routed row; past it the entry stays `received`
    /// (the platform is not acknowledged) without holding up other chats. Default 10 s.
    pub session_deadline: Duration,
    /// Hops an agent-to-agent conversation may take before it is stopped
    /// (`routing.max_agent_hops`, default 8).
    pub max_agent_hops: u32,
    /// Longest inbound text stored in a session, bytes (`routing.max_inbound_bytes`, default
    /// 256 KiB); a longer one is cut, its full text kept in the session's inbox
    /// ([`crate::session_files::spill_long_texts`]).
    pub max_inbound_bytes: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_unknown_sender_policy: UnknownSenderPolicy::RequestApproval,
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
            filtered_commands: ["/login", "/logout", "/config"].map(String::from).to_vec(),
            admin_only_commands: ["/clear", "/compact", "/cost", "/context"].map(String::from).to_vec(),
            session_deadline: Duration::from_secs(10),
            max_agent_hops: 8,
            max_inbound_bytes: 256 * 1024,
        }
    }
}

/// Why an event was not routed. The platform must not be acknowledged; the ledger keeps the
/// entry (when it was committed) for the next attempt. Display is one line for the sender.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The data directory's filesystem is under its free-space floor: no new work is accepted.
    #[error(transparent)]
    DiskLow(#[from] DiskError),
    /// The central store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The session could not take the message.
    #[error("{0}")]
    Session(String),
    /// The event could not be encoded.
    #[error("event: {0}")]
    Event(#[from] serde_json::Error),
}

/// Routes inbound events. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    store: Store,
    sessions: SessionsHandle,
    config: Arc<RoutingConfig>,
    rules: Arc<Rules>,
    /// Data directory and free-space floor (bytes; 0 = no check): under it, no new work.
    disk_floor: Option<(PathBuf, u64)>,
    /// Wakes the host's outbox after a note to a chat was queued (command refusals).
    host_outbox: Option<Arc<tokio::sync::Notify>>,
    /// Where decisions go and new requests are announced, with their settings.
    approvals: Option<(ApprovalsHandle, Arc<ApprovalsConfig>)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A router over a store and the session supervisor, with default [`RoutingConfig`].
    pub fn new(store: Store, sessions: SessionsHandle) -> Self {
        Self {
            store,
            sessions,
            config: Arc::new(RoutingConfig::default()),
            rules: Default::default(),
            disk_floor: None,
            host_outbox: None,
            approvals: None,
        }
    }

    /// Takes approval decisions from chat replies (`approve <id>` / `deny <id>`, a question's
    /// answer) before engagement, and announces the sender and channel requests it stores to
    /// `approvals`, which asks a person. Without it, requests wait in the store (and get their
    /// actors at the next start) and replies are ordinary text.
    pub fn with_approvals(mut self, approvals: ApprovalsHandle, config: ApprovalsConfig) -> Self {
        self.approvals = Some((approvals, Arc::new(config)));
        self
    }

    /// The lifetime of the requests the router stores.
    fn approval_ttl(&self, action: &str) -> Duration {
        match &self.approvals {
            Some((_, c)) => c.ttl_of(action),
            None => ApprovalsConfig::default().ttl_of(action),
        }
    }

    fn announce(&self, approval: Option<String>) {
        if let (Some(id), Some((handle, _))) = (approval, &self.approvals) {
            handle.started(id);
        }
    }

    /// The same router with `config`.
    pub fn with_config(mut self, config: RoutingConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// Refuses new work while the filesystem of `data_dir` has less than `min_free_bytes` free
    /// (`service.min_free_mb`): the sender gets a clear error instead of a crash later.
    pub fn with_disk_floor(mut self, data_dir: PathBuf, min_free_bytes: u64) -> Self {
        self.disk_floor = (min_free_bytes > 0).then_some((data_dir, min_free_bytes));
        self
    }

    /// Pokes `host_outbox` when the router queued a note of the host to a chat (the refusal of
    /// an admin-only command), which [`crate::host_outbox::HostOutbox`] delivers. Without it
    /// notes wait in `host_outbox` for a host outbox to run.
    pub fn with_host_outbox(mut self, host_outbox: Arc<tokio::sync::Notify>) -> Self {
        self.host_outbox = Some(host_outbox);
        self
    }

    /// The routing settings.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The central store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Routes one event; see the module docs for the steps.
    ///
    /// Errors (store or session failures) leave the ledger entry `received`: the platform must
    /// not be acknowledged, and the entry is routed again at the next start.
    pub async fn route(&self, event: InboundEvent) -> Result<InboundAck, RouteError> {
        self.route_batch(vec![event]).await.pop().expect("one result per event")
    }

    /// Routes events of one chat together, in order, and returns one result per event (as
    /// [`Router::route`] would): the ledger entries in one transaction, the decisions in one
    /// store call, each session's rows of the whole batch in one `inbound.db` transaction, the
    /// finishing in one store call. A channel hands over what queued up for a chat while its
    /// previous batch was routed, so a busy chat costs one session commit per batch instead of
    /// one per message. A failure fails only the events it concerns.
    pub async fn route_batch(&self, events: Vec<InboundEvent>) -> Vec<Result<InboundAck, RouteError>> {
        let traces: Vec<String> = events.iter().map(|_| new_id("tr")).collect();
        let span = match events.first() {
            Some(e) => {
                info_span!("route", trace = %traces[0], messages = events.len(), channel = %e.channel_type, chat = %e.platform_id)
            }
            None => return vec![],
        };
        self.route_batch_inner(events, traces).instrument(span).await
    }

    async fn route_batch_inner(
        &self,
        events: Vec<InboundEvent>,
        traces: Vec<String>,
    ) -> Vec<Result<InboundAck, RouteError>> {
        let n = events.len();
        // One error for every event: the first keeps its type, the others its line.
        let all_fail = |e: RouteError| -> Vec<Result<InboundAck, RouteError>> {
            let line = e.to_string();
            std::iter::once(Err(e)).chain((1..n).map(|_| Err(RouteError::Session(line.clone())))).collect()
        };
        if let Some((dir, floor)) = &self.disk_floor {
            let (dir, floor) = (dir.clone(), *floor);
            match tokio::task::spawn_blocking(move || crate::disk::check_floor(&dir, floor)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return all_fail(e.into()),
                Err(e) => return all_fail(RouteError::Session(format!("disk check failed: {e}"))),
            }
        }
        let mut results: Vec<Option<Result<InboundAck, RouteError>>> = (0..n).map(|_| None).collect();
        let mut entries = Vec::with_capacity(n);
        for (i, (event, trace)) in events.iter().zip(&traces).enumerate() {
            match serde_json::to_string(event) {
                Ok(json) => entries.push((
                    i,
                    LedgerEntry {
                        id: new_id("in"),
                        channel_type: event.channel_type.clone(),
                        platform_message_id: event.platform_message_id.clone(),
                        platform_id: event.platform_id.clone(),
                        thread_id: event.thread_id.clone(),
                        sender_id: namespaced_sender(event),
                        event: json,
                        trace_id: trace.clone(),
                    },
                )),
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        let rows: Vec<LedgerEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
        let inserted = self
            .store
            .call(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin ledger")?;
                let out = rows.iter().map(|e| store::ledger_insert(&tx, e)).collect::<Result<Vec<_>, _>>()?;
                tx.commit().sql("commit ledger")?;
                Ok(out)
            })
            .await;
        let inserted = match inserted {
            Ok(v) => v,
            Err(e) => return all_fail(e.into()),
        };
        let mut batch = Vec::with_capacity(entries.len());
        for ((i, entry), insert) in entries.into_iter().zip(inserted) {
            let ledger_id = match insert {
                LedgerInsert::New => {
                    // `hop:` lines time the stages of one message (`benches/hops.rs`).
                    debug!("hop: ledger committed");
                    if *CRASH_AFTER_LEDGER {
                        warn!("{CRASH_AFTER_LEDGER_ENV} is set: aborting after the ledger commit");
                        std::process::abort();
                    }
                    entry.id
                }
                LedgerInsert::Duplicate { id, finished: true } => {
                    debug!(ledger = %id, "duplicate message ignored");
                    results[i] = Some(Ok(InboundAck { ledger_id: id, duplicate: true, dropped: None }));
                    continue;
                }
                // Seen but not routed (an earlier attempt failed half-way): route it again; the
                // messages_in ids make that idempotent.
                LedgerInsert::Duplicate { id, finished: false } => id,
            };
            let facts = Facts {
                ledger_id,
                sender: entry.sender_id,
                event_json: entry.event,
                event: events[i].clone(),
            };
            batch.push((i, facts, entry.trace_id));
        }
        let (index, batch): (Vec<usize>, Vec<(Facts, String)>) =
            batch.into_iter().map(|(i, f, t)| (i, (f, t))).unzip();
        for (i, r) in index.into_iter().zip(self.route_facts(batch).await) {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("every event has a result")).collect()
    }

    /// Routes ledger entries (new, left `received` by a crash, or replayed on an approval), in
    /// order, together (see [`Router::route_batch`]); one result per entry. Decisions (a reply
    /// `approve <id>` / `deny <id>`, a question's answer) are taken first and reach no agent.
    async fn route_facts(&self, batch: Vec<(Facts, String)>) -> Vec<Result<InboundAck, RouteError>> {
        let n = batch.len();
        let mut results: Vec<Option<Result<InboundAck, RouteError>>> = (0..n).map(|_| None).collect();
        let questions = self.open_questions(&batch).await;
        let mut index = Vec::with_capacity(n);
        let mut rest = Vec::with_capacity(n);
        for (i, (facts, trace)) in batch.into_iter().enumerate() {
            match self.take_decision(&facts, &questions).await {
                Some(result) => results[i] = Some(result),
                None => {
                    index.push(i);
                    rest.push((facts, trace));
                }
            }
        }
        for (i, r) in index.into_iter().zip(self.route_planned(rest).await) {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("every entry has a result")).collect()
    }

    /// The questions waiting for an answer in the chats of `batch` (none without approvals).
    async fn open_questions(&self, batch: &[(Facts, String)]) -> Vec<store::Question> {
        if self.approvals.is_none() {
            return vec![];
        }
        let mut chats: Vec<(String, String)> =
            batch.iter().map(|(f, _)| (f.event.channel_type.clone(), f.event.platform_id.clone())).collect();
        chats.dedup();
        let found = self
            .store
            .call(move |c| {
                let mut out = vec![];
                for (channel_type, platform_id) in &chats {
                    out.extend(store::open_questions_in(c, channel_type, platform_id)?);
                }
                Ok(out)
            })
            .await;
        found.unwrap_or_else(|e| {
            warn!(error = %e, "open questions not read; answers in this batch reach the agents as text");
            vec![]
        })
    }

    /// Takes one entry as a decision, when it is one: `approve <id>` / `deny <id>` (always
    /// answered in the chat), or an option's number or text in a chat with an open question
    /// from someone who may answer it. Finishes its ledger entry (`routed`: the host took it).
    async fn take_decision(
        &self,
        facts: &Facts,
        questions: &[store::Question],
    ) -> Option<Result<InboundAck, RouteError>> {
        let (handle, _) = self.approvals.as_ref()?;
        let e = &facts.event;
        let chat = (e.channel_type.clone(), e.platform_id.clone());
        let by = match &facts.sender {
            Some(s) => Decider::User(s.clone()),
            None => Decider::User(String::new()),
        };
        let (request, reply) = match approvals::parse_reply(&e.text) {
            Some((id, choice)) => {
                (DecisionRequest { id, choice, by, via: DecidedVia::Reply, chat: Some(chat) }, true)
            }
            None => {
                let q = answered_question(questions, &e.channel_type, &e.platform_id, &e.text)?;
                (
                    DecisionRequest { id: q.0, choice: q.1, by, via: DecidedVia::Reply, chat: Some(chat) },
                    false,
                )
            }
        };
        let answer = match handle.decide(request).await {
            Ok(a) => a,
            Err(e) => return Some(Err(e.into())),
        };
        if !reply && !matches!(answer, approvals::DecisionAnswer::Decided { .. }) {
            // Text that happens to match an option, from someone who may not answer (or too
            // late): it is ordinary text for the agents.
            return None;
        }
        let note = reply.then(|| store::HostNote {
            id: format!("decision-{}", facts.ledger_id),
            channel_type: e.channel_type.clone(),
            platform_id: e.platform_id.clone(),
            thread_id: e.thread_id.clone(),
            in_reply_to: Some(e.platform_message_id.clone()),
            text: answer.to_string(),
            attempts: 0,
        });
        let ledger = facts.ledger_id.clone();
        let finished = self
            .store
            .call(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).sql("begin decision")?;
                store::ledger_finish(&tx, &ledger, LedgerOutcome::Routed)?;
                if let Some(note) = &note {
                    store::host_note_insert(&tx, note)?;
                }
                tx.commit().sql("commit decision")
            })
            .await;
        if reply && let Some(poke) = &self.host_outbox {
            poke.notify_one();
        }
        Some(
            finished
                .map(|()| InboundAck { ledger_id: facts.ledger_id.clone(), duplicate: false, dropped: None })
                .map_err(RouteError::from),
        )
    }

    /// A click on a button of a card ([`crate::ports::channel::InboundSink::click`]): the
    /// callback is parsed (untrusted) and decided for the clicking user; returns the line the
    /// user is shown.
    ///
    /// Errors: only a failing store.
    pub async fn click(&self, channel_type: &str, click: Click) -> Result<String, RouteError> {
        let Some((handle, _)) = &self.approvals else {
            return Ok("approvals are not running on this host".into());
        };
        let Some((id, index)) = approvals::parse_callback(&click.callback) else {
            warn!(channel = channel_type, user = %click.user_id, "click with callback data that no card of this host has");
            return Ok("not allowed: this button does not belong to a card of this host".into());
        };
        let user = namespaced(channel_type, &click.user_id);
        let answer = handle
            .decide(DecisionRequest {
                id,
                choice: Choice::Option(index),
                by: Decider::User(user),
                via: DecidedVia::Button,
                chat: Some((channel_type.to_string(), click.platform_id)),
            })
            .await?;
        Ok(answer.to_string())
    }

    async fn route_planned(&self, batch: Vec<(Facts, String)>) -> Vec<Result<InboundAck, RouteError>> {
        let n = batch.len();
        if n == 0 {
            return vec![];
        }
        let ack = |facts: &Facts, dropped: Option<DropReason>| InboundAck {
            ledger_id: facts.ledger_id.clone(),
            duplicate: false,
            dropped: dropped.map(|r| r.as_str().to_string()),
        };
        let (config, rules) = (self.config.clone(), self.rules.clone());
        let ttl = self.approval_ttl("channel");
        let facts: Vec<Facts> = batch.iter().map(|(f, _)| f.clone()).collect();
        let planned = self
            .store
            .call(move |c| {
                Ok(facts.iter().map(|f| plan::plan(c, f, &config, &rules, ttl)).collect::<Vec<_>>())
            })
            .await;
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                let line = e.to_string();
                return (0..n).map(|_| Err(RouteError::Session(line.clone()))).collect();
            }
        };
        let mut results: Vec<Option<Result<InboundAck, RouteError>>> = (0..n).map(|_| None).collect();
        // Each session's rows of the whole batch, in order, for one write.
        let mut sessions: Vec<(store::SessionInfo, Vec<NewInbound>, Vec<usize>)> = vec![];
        let mut deliver: Vec<Delivered> = vec![];
        for (i, ((facts, trace), plan)) in batch.iter().zip(planned).enumerate() {
            let (mg, targets, refusal, command_refusal) = match plan {
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
                Ok(Plan::Dropped(reason, approval)) => {
                    self.announce(approval);
                    debug!(reason = %reason, "message dropped");
                    results[i] = Some(Ok(ack(facts, Some(reason))));
                    continue;
                }
                Ok(Plan::Deliver { mg, targets, refusal, command_refusal }) => {
                    (mg, targets, refusal, command_refusal)
                }
            };
            let event = &facts.event;
            let content = match serde_json::to_string(&ChatContent {
                text: event.text.clone(),
                sender: event.sender_name.clone(),
                sender_id: facts.sender.clone(),
                platform_message_id: Some(event.platform_message_id.clone()),
                trace_id: Some(trace.clone()),
                hops: None,
            }) {
                Ok(c) => c,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            for t in &targets {
                let row = NewInbound {
                    id: format!("{}:{}", facts.ledger_id, t.session.agent_group_id),
                    kind: "chat",
                    trigger: t.trigger,
                    on_wake: false,
                    channel_type: Some(event.channel_type.clone()),
                    platform_id: Some(event.platform_id.clone()),
                    thread_id: event.thread_id.clone(),
                    content: content.clone(),
                    source_session_id: None,
                };
                match sessions.iter_mut().find(|(s, ..)| s.id == t.session.id) {
                    Some((_, rows, users)) => {
                        rows.push(row);
                        users.push(i);
                    }
                    None => sessions.push((t.session.clone(), vec![row], vec![i])),
                }
            }
            deliver.push((i, mg, !targets.is_empty(), refusal, command_refusal));
        }
        // Every session at once, each within its deadline: one slow session holds up only this
        // chat's next batch (the channel routes chats concurrently), never the other sessions.
        let deadline = self.config.session_deadline;
        let writes = sessions.into_iter().map(|(session, rows, users)| async move {
            let id = session.id.clone();
            let result = match tokio::time::timeout(deadline, self.enqueue(session, rows)).await {
                Ok(r) => r,
                Err(_) => Err(RouteError::Session(format!(
                    "session {id} did not take the message within {deadline:?}"
                ))),
            };
            (users, result)
        });
        for (users, result) in join_all(writes).await {
            if let Err(e) = result {
                let line = e.to_string();
                for i in users {
                    results[i].get_or_insert_with(|| Err(RouteError::Session(line.clone())));
                }
            }
        }
        // Finish what every session took, in one store call.
        let mut finishing = vec![];
        for (i, mg, stored, refusal, command_refusal) in deliver {
            if results[i].is_some() {
                continue;
            }
            let (facts, _) = &batch[i];
            let event = &facts.event;
            // The refusal note is queued in the finishing transaction: sent once, even across a
            // crash (the ledger dedupes the message; the note's id is the ledger id's).
            let note = command_refusal.map(|text| store::HostNote {
                id: format!("host-refusal-{}", facts.ledger_id),
                channel_type: mg.channel_type.clone(),
                platform_id: mg.platform_id.clone(),
                thread_id: event.thread_id.clone(),
                in_reply_to: Some(event.platform_message_id.clone()),
                text,
                attempts: 0,
            });
            finishing.push((i, facts.clone(), stored, refusal, note));
        }
        if finishing.is_empty() {
            return results.into_iter().map(|r| r.expect("every entry has a result")).collect();
        }
        debug!("hop: enqueued");
        let queued = finishing.iter().any(|(.., note)| note.is_some());
        let work: Vec<_> =
            finishing.iter().map(|(_, f, s, r, n)| (f.clone(), *s, r.clone(), n.clone())).collect();
        let ttl = self.approval_ttl("sender");
        let finished = self
            .store
            .call(move |c| {
                Ok(work
                    .iter()
                    .map(|(f, stored, r, n)| plan::finish(c, f, *stored, r.as_ref(), n.as_ref(), ttl))
                    .collect::<Vec<_>>())
            })
            .await;
        if queued && let Some(poke) = &self.host_outbox {
            poke.notify_one();
        }
        match finished {
            Ok(finished) => {
                for ((i, facts, ..), done) in finishing.iter().zip(finished) {
                    results[*i] = Some(
                        done.map(|(dropped, approval)| {
                            self.announce(approval);
                            match dropped {
                                Some(reason) => debug!(reason = %reason, "message dropped"),
                                None => debug!("hop: routed"),
                            }
                            ack(facts, dropped)
                        })
                        .map_err(RouteError::from),
                    );
                }
            }
            Err(e) => {
                let line = e.to_string();
                for (i, ..) in &finishing {
                    results[*i] = Some(Err(RouteError::Session(line.clone())));
                }
            }
        }
        results.into_iter().map(|r| r.expect("every entry has a result")).collect()
    }

    /// Routes one ledger entry (left `received` by a crash, or replayed on an approval).
    async fn route_entry(&self, facts: Facts, trace_id: &str) -> Result<InboundAck, RouteError> {
        self.route_facts(vec![(facts, trace_id.to_string())]).await.pop().expect("one result per entry")
    }

    /// Hands rows to their session actor; a session actor that was just stopping is replaced (after
    /// it has exited, at most [`STOPPING_ACTOR_WAIT`] each time, three tries).
    async fn enqueue(&self, session: store::SessionInfo, rows: Vec<NewInbound>) -> Result<(), RouteError> {
        let mut last = String::new();
        for _ in 0..3 {
            let handle =
                self.sessions.get(session.clone()).await.map_err(|e| RouteError::Session(e.to_string()))?;
            match handle.enqueue(rows.clone()).await {
                Ok(_) => return Ok(()),
                // A locked inbound.db quarantined the session; retrying now would only hold up
                // this chat. The ledger keeps the entry for the next attempt.
                Err(e @ crate::actors::session::SessionError::Busy(_)) => {
                    return Err(RouteError::Session(e.to_string()));
                }
                // The actor was stopping (idle, or held) when the row reached it. Until it has
                // exited the supervisor would hand it out again, so wait for that (bounded),
                // then ask for a fresh one: under load three immediate retries could all land
                // on the same dying actor and fail a message that has a session to go to.
                Err(e @ crate::actors::session::SessionError::Unavailable(_)) => {
                    last = e.to_string();
                    let _ = handle.actor().get_cell().wait(Some(STOPPING_ACTOR_WAIT)).await;
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(RouteError::Session(last))
    }

    /// Routes every ledger entry left `received` (crash recovery at start). An entry whose stored
    /// event does not parse is marked `dropped` (reason `unreadable_event`) and routing goes on;
    /// one that fails to route stays `received` for the next start. Returns how many were found.
    pub async fn recover(&self) -> Result<usize, RouteError> {
        let entries = self.store.call(|c| store::ledger_unrouted(c)).await?;
        let n = entries.len();
        for entry in entries {
            let event: InboundEvent = match serde_json::from_str(&entry.event) {
                Ok(e) => e,
                Err(e) => {
                    warn!(ledger = %entry.id, error = %e, "unreadable ledger event; dropped");
                    let id = entry.id.clone();
                    self.store.call(move |c| store::ledger_finish(c, &id, LedgerOutcome::Unreadable)).await?;
                    continue;
                }
            };
            let facts = Facts {
                ledger_id: entry.id.clone(),
                sender: namespaced_sender(&event),
                event_json: entry.event.clone(),
                event,
            };
            if let Err(e) = self.route_entry(facts, &entry.trace_id).await {
                warn!(ledger = %entry.id, error = %e, "ledger entry not routed; kept for the next start");
            }
        }
        Ok(n)
    }

    /// Deletes finished ledger keys older than [`RoutingConfig::dedupe_retention`], in batches
    /// of `batch`; returns how many.
    pub async fn sweep_ledger(&self, batch: usize) -> Result<usize, RouteError> {
        let retention =
            chrono::Duration::from_std(self.config.dedupe_retention).unwrap_or(chrono::Duration::MAX);
        let before = chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let before = nanoclaw_protocol::time::format_ts(before);
        let mut total = 0;
        loop {
            let b = before.clone();
            let n = self.store.call(move |c| store::ledger_sweep(c, &b, batch)).await?;
            total += n;
            if n < batch {
                let b = before.clone();
                self.store.call(move |c| store::host_notes_sweep(c, &b)).await?;
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// The open question of chat (`channel_type`, `platform_id`) that `text` answers, with the
/// choice: an option's number (1-based) or its text, any case; the newest question it fits.
fn answered_question(
    questions: &[store::Question],
    channel_type: &str,
    platform_id: &str,
    text: &str,
) -> Option<(String, Choice)> {
    let text = text.trim();
    if text.is_empty() || text.len() > 256 {
        return None;
    }
    let number = text.parse::<usize>().ok().filter(|n| *n >= 1);
    questions
        .iter()
        .rev()
        .filter(|q| q.card.channel_type == channel_type && q.card.platform_id == platform_id)
        .find_map(|q| match number {
            Some(n) if n <= q.options.len() => Some((q.id.clone(), Choice::Option(n - 1))),
            Some(_) => None,
            None => q
                .options
                .iter()
                .any(|o| o.trim().eq_ignore_ascii_case(text))
                .then(|| (q.id.clone(), Choice::Text(text.to_string()))),
        })
}

/// The sender as a user id: `<channel_type>:<handle>`, unless the handle already starts with
/// this channel's `<channel_type>:`. A handle namespaced for another channel is wrapped like any
/// other (`cli:telegram:1`), so no adapter can speak as a user of another channel.
pub fn namespaced_sender(event: &InboundEvent) -> Option<String> {
    event.sender_id.as_deref().filter(|s| !s.is_empty()).map(|s| namespaced(&event.channel_type, s))
}

/// `handle` as a user id of `channel_type` (see [`namespaced_sender`]): a sender or a clicking
/// user.
fn namespaced(channel_type: &str, handle: &str) -> String {
    match handle.strip_prefix(channel_type).and_then(|rest| rest.strip_prefix(':')) {
        Some(_) => handle.to_string(),
        None => format!("{channel_type}:{handle}"),
    }
}
