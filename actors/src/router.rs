//! The router: inbound platform message → ledger → wirings → sessions (reference §5.1).
//!
//! 1. The event is committed to `inbound_ledger`, deduplicated on (`channel_type`,
//!    `platform_message_id`) — before the platform is acknowledged (DESIGN §5 invariant 2).
//! 2. The chat's messaging group and wirings are looked up; no group or no wiring → the message is
//!    recorded in `unregistered_senders` and dropped.
//! 3. Each wiring decides: engaged → `trigger = 1`; not engaged and `accumulate` → `trigger = 0`;
//!    else skipped. An invalid engage pattern fails **closed** (reference §5.1 fails open).
//! 4. Each target session gets a `messages_in` row with id `<ledger id>:<agent group id>`, so routing
//!    the same ledger entry again (after a crash) writes nothing twice.
//! 5. The ledger entry is marked `routed`. Entries still `received` at start are routed again.

use crate::actors::session_supervisor::SessionsHandle;
use crate::disk::DiskError;
use crate::ports::channel::{InboundAck, InboundEvent};
use crate::session_files::NewInbound;
use crate::store::{self, LedgerEntry, LedgerInsert, Store, Wiring, new_id};
use nanoclaw_protocol::content::ChatContent;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{Instrument, debug, info_span, warn};

/// How long [`Router`] waits for a stopping session actor to exit before asking for a new one.
const STOPPING_ACTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
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
    patterns: Arc<Mutex<HashMap<String, Option<regex::Regex>>>>,
    /// Data directory and free-space floor (bytes; 0 = no check): under it, no new work.
    disk_floor: Option<(PathBuf, u64)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A router over a store and the session supervisor.
    pub fn new(store: Store, sessions: SessionsHandle) -> Self {
        Self { store, sessions, patterns: Arc::new(Mutex::new(HashMap::new())), disk_floor: None }
    }

    /// Refuses new work while the filesystem of `data_dir` has less than `min_free_bytes` free
    /// (`service.min_free_mb`): the sender gets a clear error instead of a crash later.
    pub fn with_disk_floor(mut self, data_dir: PathBuf, min_free_bytes: u64) -> Self {
        self.disk_floor = (min_free_bytes > 0).then_some((data_dir, min_free_bytes));
        self
    }

    fn engaged(&self, wiring: &Wiring, event: &InboundEvent) -> bool {
        match wiring.engage_mode.as_str() {
            "pattern" => {
                let pattern = wiring.engage_pattern.as_deref().unwrap_or(".");
                if pattern.is_empty() || pattern == "." {
                    return true;
                }
                let mut cache = self.patterns.lock();
                let re = cache.entry(pattern.to_string()).or_insert_with(|| match regex::Regex::new(pattern) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warn!(wiring = %wiring.id, %pattern, error = %e, "invalid engage pattern; wiring never engages");
                        None
                    }
                });
                re.as_ref().is_some_and(|r| r.is_match(&event.text))
            }
            // mention-sticky also engages in threads with an active session; that needs thread
            // sessions, which arrive with threaded channels. Until then it behaves as mention.
            "mention" | "mention-sticky" => event.is_mention,
            _ => false,
        }
    }

    /// Routes one event; see the module docs for the steps.
    ///
    /// Errors (store or session failures) leave the ledger entry `received`: the platform must
    /// not be acknowledged, and the entry is routed again at the next start.
    pub async fn route(&self, event: InboundEvent) -> Result<InboundAck, RouteError> {
        let trace_id = new_id("tr");
        let span =
            info_span!("route", trace = %trace_id, channel = %event.channel_type, chat = %event.platform_id);
        self.route_inner(event, trace_id).instrument(span).await
    }

    async fn route_inner(&self, event: InboundEvent, trace_id: String) -> Result<InboundAck, RouteError> {
        if let Some((dir, floor)) = &self.disk_floor {
            let (dir, floor) = (dir.clone(), *floor);
            tokio::task::spawn_blocking(move || crate::disk::check_floor(&dir, floor))
                .await
                .map_err(|e| RouteError::Session(format!("disk check failed: {e}")))??;
        }
        let sender_id = event
            .sender_id
            .as_ref()
            .map(|s| if s.contains(':') { s.clone() } else { format!("{}:{s}", event.channel_type) });
        let entry = LedgerEntry {
            id: new_id("in"),
            channel_type: event.channel_type.clone(),
            platform_message_id: event.platform_message_id.clone(),
            platform_id: event.platform_id.clone(),
            thread_id: event.thread_id.clone(),
            sender_id: sender_id.clone(),
            event: serde_json::to_string(&event)?,
            trace_id: trace_id.clone(),
        };
        let e = entry.clone();
        let ledger_id = match self.store.call(move |c| store::ledger_insert(c, &e)).await? {
            LedgerInsert::New => {
                // `hop:` lines time the stages of one message (`benches/hops.rs`).
                debug!("hop: ledger committed");
                entry.id.clone()
            }
            LedgerInsert::Duplicate { id, finished: true } => {
                debug!(ledger = %id, "duplicate message ignored");
                return Ok(InboundAck { ledger_id: id, duplicate: true, dropped: None });
            }
            // Seen but not routed (an earlier attempt failed half-way): route it again; the
            // messages_in ids make that idempotent.
            LedgerInsert::Duplicate { id, finished: false } => id,
        };
        self.route_entry(&ledger_id, &event, sender_id, &trace_id).await
    }

    /// Routes a ledger entry (new, or left `received` by a crash).
    async fn route_entry(
        &self,
        ledger_id: &str,
        event: &InboundEvent,
        sender_id: Option<String>,
        trace_id: &str,
    ) -> Result<InboundAck, RouteError> {
        let (ct, pid) = (event.channel_type.clone(), event.platform_id.clone());
        let chat = self.store.call(move |c| store::wirings_of_chat(c, &ct, &pid)).await?;
        let drop = |reason: &'static str, mg: Option<String>| {
            let (ct, pid, sender, lid) = (
                event.channel_type.clone(),
                event.platform_id.clone(),
                sender_id.clone(),
                ledger_id.to_string(),
            );
            async move {
                self.store
                    .call(move |c| {
                        store::record_dropped(c, &ct, &pid, sender.as_deref(), reason, mg.as_deref())?;
                        store::ledger_finish(c, &lid, "dropped")
                    })
                    .await?;
                debug!(reason, "message dropped");
                Ok::<InboundAck, RouteError>(InboundAck {
                    ledger_id: ledger_id.to_string(),
                    duplicate: false,
                    dropped: Some(reason.to_string()),
                })
            }
        };
        let Some((mg, wirings)) = chat else { return drop("no_agent_wired", None).await };
        if wirings.is_empty() {
            return drop("no_agent_wired", Some(mg)).await;
        }
        let mut targets = Vec::new();
        for w in wirings {
            let engaged = self.engaged(&w, event);
            if engaged || w.ignored_message_policy == "accumulate" {
                targets.push((w, engaged));
            }
        }
        if targets.is_empty() {
            return drop("no_agent_engaged", Some(mg)).await;
        }
        for (wiring, trigger) in targets {
            let (ag, mgid, thread) = (wiring.agent_group_id.clone(), mg.clone(), event.thread_id.clone());
            let session =
                self.store.call(move |c| store::resolve_session(c, &ag, &mgid, thread.as_deref())).await?;
            let content = ChatContent {
                text: event.text.clone(),
                sender: event.sender_name.clone(),
                sender_id: sender_id.clone(),
                platform_message_id: Some(event.platform_message_id.clone()),
                trace_id: Some(trace_id.to_string()),
            };
            let row = NewInbound {
                id: format!("{ledger_id}:{}", wiring.agent_group_id),
                kind: "chat",
                trigger,
                on_wake: false,
                channel_type: Some(event.channel_type.clone()),
                platform_id: Some(event.platform_id.clone()),
                thread_id: event.thread_id.clone(),
                content: serde_json::to_string(&content)?,
            };
            self.enqueue(session, row).await?;
        }
        debug!("hop: enqueued");
        let lid = ledger_id.to_string();
        self.store.call(move |c| store::ledger_finish(c, &lid, "routed")).await?;
        debug!("hop: routed");
        Ok(InboundAck { ledger_id: ledger_id.to_string(), duplicate: false, dropped: None })
    }

    /// Hands a row to its session actor; a session actor that was just stopping is replaced (after
    /// it has exited, at most [`STOPPING_ACTOR_WAIT`] each time, three tries).
    async fn enqueue(&self, session: store::SessionInfo, row: NewInbound) -> Result<(), RouteError> {
        let mut last = String::new();
        for _ in 0..3 {
            let handle =
                self.sessions.get(session.clone()).await.map_err(|e| RouteError::Session(e.to_string()))?;
            match handle.enqueue(vec![row.clone()]).await {
                Ok(_) => return Ok(()),
                // A locked inbound.db quarantined the session; retrying now would only hold up
                // this channel's other chats. The ledger keeps the entry for the next attempt.
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

    /// Routes every ledger entry left `received` (crash recovery at start).
    pub async fn recover(&self) -> Result<usize, RouteError> {
        let entries = self.store.call(|c| store::ledger_unrouted(c)).await?;
        let n = entries.len();
        for entry in entries {
            let event: InboundEvent = match serde_json::from_str(&entry.event) {
                Ok(e) => e,
                Err(e) => {
                    warn!(ledger = %entry.id, error = %e, "unreadable ledger event; dropped");
                    let id = entry.id.clone();
                    self.store.call(move |c| store::ledger_finish(c, &id, "dropped")).await?;
                    continue;
                }
            };
            self.route_entry(&entry.id, &event, entry.sender_id.clone(), &entry.trace_id).await?;
        }
        Ok(n)
    }
}
