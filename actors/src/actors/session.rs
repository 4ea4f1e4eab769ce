//! `SessionActor`: owns one session (DESIGN §4).
//!
//! Spawned on demand by the [`super::session_supervisor::SessionSupervisor`] and stopped when
//! idle; everything it knows is rebuilt from the session DBs and the central store, so a restart
//! loses nothing. It is the only writer of `inbound.db`; it wakes or spawns the session's one
//! container ([`ContainerActor`], linked), delivers `messages_out` with a reservation committed
//! before each send, counts tries when a container dies mid-turn, and runs stuck and idle
//! detection on its own tick.
//!
//! At most one container per session (DESIGN §5 invariant 4) holds because only this actor spawns
//! containers for the session, its mailbox is serial, it spawns only when its slot is empty, and it
//! empties the slot only on the old container actor's termination event (after removal). A
//! replacement session actor first removes any container still labelled with the session.

use super::container::{ContainerActor, ContainerArgs, ContainerMessage};
use crate::context::ServiceContext;
use crate::ports::channel::{Notice, OutboundMessage};
use crate::ports::runtime::ContainerSpec;
use crate::session_files::{self as files, NewInbound, SessionPaths};
use crate::slots::Acquire;
use crate::store::{self, SessionInfo};
use nanoclaw_protocol::content::{ChatContent, OutboundContent, SystemNotice};
use nanoclaw_protocol::layout;
use nanoclaw_protocol::rows::SessionRouting;
use nanoclaw_protocol::validate::{OutboundBody, ValidOutbound, validate_outbound};
use nanoclaw_protocol::wake;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// What happens after a killed container is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Start a replacement (after the old one is removed).
    Respawn,
    /// Stay without a container until work arrives.
    Stay,
}

/// The session actor (configuration only).
pub struct SessionActor;

/// Arguments of [`SessionActor`].
pub struct SessionArgs {
    /// Shared service context.
    pub ctx: Arc<ServiceContext>,
    /// The session.
    pub session: SessionInfo,
}

/// The container slot: empty, or one container in some phase.
enum Slot {
    Empty,
    Live {
        actor: ActorRef<ContainerMessage>,
        generation: i64,
        since: Instant,
        ready: bool,
        stopping: Option<Then>,
    },
}

/// Private state.
pub struct SessionState {
    ctx: Arc<ServiceContext>,
    session: SessionInfo,
    paths: SessionPaths,
    slot: Slot,
    /// Write half of the current container's wake connection.
    wake: Option<OwnedWriteHalf>,
    /// Accept loop of `wake.sock` (aborted on stop).
    listener: tokio::task::JoinHandle<()>,
    /// Reader of the current wake connection.
    wake_reader: Option<tokio::task::JoinHandle<()>>,
    /// Every `messages_out` row below this rowid is final (delivered or failed).
    low_water: i64,
    /// When rows waiting for a delivery retry may be tried again.
    retry_at: HashMap<String, Instant>,
    /// Consecutive container failures, for spawn backoff.
    spawn_failures: u32,
    /// No spawn before this instant.
    next_spawn_at: Option<Instant>,
    /// Last time something happened (input, output, container start).
    last_activity: Instant,
    /// Holds one of the global container slots.
    has_slot: bool,
    /// The user was told this session waits for a slot (once per wait).
    queued_noted: bool,
    /// The last warning about the container's `outbound.db`, so a broken file is reported once,
    /// not every tick.
    last_outbound_warning: Option<String>,
}

/// A snapshot for `ncl` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// Session id.
    pub session_id: String,
    /// Generation of the live container, if any.
    pub container_generation: Option<i64>,
    /// The live container said hello.
    pub container_ready: bool,
    /// Pending inbound rows.
    pub pending: i64,
}

/// Messages of [`SessionActor`].
pub enum SessionMessage {
    /// Write rows into `inbound.db` and wake or spawn the container. Replies with how many rows
    /// were new (0 for a repeat).
    Enqueue {
        /// The rows.
        rows: Vec<NewInbound>,
        /// Reply.
        reply: RpcReplyPort<Result<usize, String>>,
    },
    /// Replace or stop the container: DESIGN §4's kill-then-respawn.
    Kill {
        /// Why.
        reason: String,
        /// What to do once it is gone.
        then: Then,
    },
    /// A runner connected to `wake.sock`.
    WakeConnected(UnixStream),
    /// The runner said hello (its stale claims are cleared).
    Hello,
    /// The runner committed output.
    Output,
    /// The periodic tick (poll fallback, stuck and idle detection).
    Tick,
    /// A snapshot.
    Status(RpcReplyPort<SessionStatus>),
    /// A container slot was freed for this queued session ([`crate::slots`]).
    SlotGranted,
}

impl std::fmt::Debug for SessionMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionMessage::Enqueue { rows, .. } => write!(f, "Enqueue({} rows)", rows.len()),
            SessionMessage::Kill { reason, then } => write!(f, "Kill({reason}, {then:?})"),
            SessionMessage::WakeConnected(_) => f.write_str("WakeConnected"),
            SessionMessage::Hello => f.write_str("Hello"),
            SessionMessage::Output => f.write_str("Output"),
            SessionMessage::Tick => f.write_str("Tick"),
            SessionMessage::Status(_) => f.write_str("Status"),
            SessionMessage::SlotGranted => f.write_str("SlotGranted"),
        }
    }
}

/// Typed handle over a session actor.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    actor: ActorRef<SessionMessage>,
}

impl SessionHandle {
    /// Wraps an actor ref.
    pub fn new(actor: ActorRef<SessionMessage>) -> Self {
        Self { actor }
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<SessionMessage> {
        &self.actor
    }

    /// Writes rows into `inbound.db` and wakes the agent (30 s timeout).
    ///
    /// Errors when the actor is gone (it was stopping: ask the supervisor again) or the write failed.
    pub async fn enqueue(&self, rows: Vec<NewInbound>) -> Result<usize, String> {
        ractor::call_t!(self.actor, |reply| SessionMessage::Enqueue { rows, reply }, 30_000)
            .map_err(|e| format!("session actor: {e}"))?
    }

    /// Kill-then-respawn (or stay).
    pub fn kill(&self, reason: impl Into<String>, then: Then) -> Result<(), String> {
        self.actor.cast(SessionMessage::Kill { reason: reason.into(), then }).map_err(|e| e.to_string())
    }

    /// A status snapshot (5 s timeout).
    pub async fn status(&self) -> Result<SessionStatus, String> {
        ractor::call_t!(self.actor, SessionMessage::Status, 5_000).map_err(|e| e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, files::SessionFileError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("blocking task failed: {e}")),
    }
}

fn routing_of(session: &SessionInfo) -> SessionRouting {
    SessionRouting {
        channel_type: session.channel_type.clone(),
        platform_id: session.platform_id.clone(),
        thread_id: session.thread_id.clone(),
    }
}

impl SessionState {
    fn generation(&self) -> Option<i64> {
        match &self.slot {
            Slot::Live { generation, .. } => Some(*generation),
            Slot::Empty => None,
        }
    }

    async fn wake_container(&mut self) {
        if let Some(w) = self.wake.as_mut()
            && w.write_all(&[wake::INPUT]).await.is_err()
        {
            self.wake = None;
        }
    }

    /// Spawns a container if the slot is empty and the spawn backoff allows.
    async fn spawn_container(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), ActorProcessingErr> {
        if !matches!(self.slot, Slot::Empty) {
            return Ok(());
        }
        if self.next_spawn_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        if !self.has_slot {
            match self.ctx.slots.acquire(&self.session.id, myself) {
                Acquire::Granted => self.has_slot = true,
                Acquire::Queued { ahead } => {
                    if !self.queued_noted {
                        self.queued_noted = true;
                        self.tell_queued(ahead).await;
                    }
                    return Ok(());
                }
            }
        }
        self.queued_noted = false;
        let sid = self.session.id.clone();
        let generation = self.ctx.store.call(move |c| store::next_generation(c, &sid)).await?;
        let agent_group = self.session.agent_group_id.clone();
        let destinations = self.ctx.store.call(move |c| store::destinations_of(c, &agent_group)).await?;
        let routing = routing_of(&self.session);
        let paths = self.paths.clone();
        blocking(move || {
            files::clear_heartbeat(&paths);
            files::project(&paths, &destinations, &routing)
        })
        .await?;
        let spec = ContainerSpec {
            name: format!("nanoclaw-{}-{}-{}", self.ctx.config.install_id, self.session.id, generation),
            install_id: self.ctx.config.install_id.clone(),
            session_id: self.session.id.clone(),
            generation,
            session_host_dir: self.paths.host_dir.clone(),
            session_workspace_dir: self.paths.workspace_dir.clone(),
            agent_group_dir: self.paths.agent_group_dir.clone(),
            env: vec![
                (layout::ENV_GENERATION.into(), generation.to_string()),
                (layout::ENV_SESSION_ID.into(), self.session.id.clone()),
                (layout::ENV_PROVIDER.into(), self.session.provider.clone()),
                (layout::ENV_ASSISTANT_NAME.into(), self.session.assistant_name.clone()),
                (
                    layout::ENV_MAX_MESSAGES_PER_PROMPT.into(),
                    self.session.max_messages_per_prompt.to_string(),
                ),
            ],
        };
        let args = ContainerArgs {
            runtime: self.ctx.runtime.clone(),
            spec,
            stop_grace: self.ctx.config.container_stop_grace,
            live: self.ctx.live_containers.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ContainerActor, args, myself.get_cell()).await?;
        self.slot = Slot::Live { actor, generation, since: Instant::now(), ready: false, stopping: None };
        self.last_activity = Instant::now();
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_container_status(c, &sid, "starting")).await?;
        Ok(())
    }

    fn kill(&mut self, reason: String, then: Then) {
        if let Slot::Live { actor, stopping, .. } = &mut self.slot {
            match stopping {
                // A second kill can only upgrade Stay to Respawn.
                Some(t) => {
                    if then == Then::Respawn {
                        *t = Then::Respawn;
                    }
                }
                None => {
                    *stopping = Some(then);
                    let _ = actor.cast(ContainerMessage::Stop { reason });
                }
            }
        }
    }

    /// The container is gone: count the tries of what it left in flight, then decide.
    async fn container_gone(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let Slot::Live { generation, stopping, ready, since, .. } =
            std::mem::replace(&mut self.slot, Slot::Empty)
        else {
            return Ok(());
        };
        self.wake = None;
        if let Some(r) = self.wake_reader.take() {
            r.abort();
        }
        info!(session = %self.session.id, generation, %reason, "container gone");
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_container_status(c, &sid, "stopped")).await?;

        // Whatever it finished is delivered and synced first, so only true leftovers count.
        self.pump(myself).await;
        let counted = self.count_leftover_claims(generation).await?;
        // Asked to stop, or it came up and ran a while: not a crash loop, whatever the exit code
        // (an idle container killed by an operator or the OOM killer is replaced at once).
        let clean = stopping.is_some()
            || (ready && (reason.ends_with("code 0") || since.elapsed() >= Duration::from_secs(10)));
        if clean || counted > 0 {
            // A crash that cost its messages a try is paced by the try backoff already.
            self.spawn_failures = 0;
            self.next_spawn_at = None;
        } else {
            // A container that died without costing any message a try (e.g. at startup) would
            // otherwise respawn at once, forever: back off, and give up on the waiting messages.
            self.spawn_failures += 1;
            let delay = Duration::from_millis(500)
                .saturating_mul(1 << self.spawn_failures.min(7))
                .min(Duration::from_secs(60));
            self.next_spawn_at = Some(Instant::now() + delay);
            warn!(session = %self.session.id, failures = self.spawn_failures, ?delay, %reason, "container failed without doing any work");
            if i64::from(self.spawn_failures) >= self.ctx.config.max_tries {
                let paths = self.paths.clone();
                let failed = blocking(move || files::fail_pending(&paths)).await?;
                for o in failed {
                    let text = format!(
                        "Sorry, I could not process your message: the agent's container keeps failing to start ({reason})."
                    );
                    self.tell_failed(&o.id, o.channel_type, o.platform_id, text).await;
                }
                self.spawn_failures = 0;
            }
        }
        if stopping != Some(Then::Respawn) {
            // Others may be waiting: the slot goes back, and this session queues like anyone else.
            self.release_slot();
        }
        if stopping == Some(Then::Respawn) {
            self.next_spawn_at = None;
            self.spawn_container(myself).await?;
        } else {
            self.spawn_if_due(myself).await?;
        }
        Ok(())
    }

    /// Counts one failed try for every claim a dead container of `generation` left `processing`
    /// (each generation at most once), failing and telling the user at the limit.
    async fn count_leftover_claims(&mut self, generation: i64) -> Result<usize, String> {
        let sid = self.session.id.clone();
        let (_, counted) =
            self.ctx.store.call(move |c| store::generations(c, &sid)).await.map_err(|e| e.to_string())?;
        if generation <= counted {
            return Ok(0);
        }
        let paths = self.paths.clone();
        // outbound.db belongs to the untrusted container: an unreadable one means no claims.
        let claims = match blocking(move || files::claims_of(&paths, generation)).await {
            Ok(c) => c,
            Err(e) => {
                self.warn_outbound(&e);
                vec![]
            }
        };
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = claims.into_iter().map(|(id, _)| id).collect();
        let paths = self.paths.clone();
        let (max, base) = (self.ctx.config.max_tries, self.ctx.config.retry_backoff);
        let outcomes = blocking(move || files::count_failed_try(&paths, &ids, max, base)).await?;
        // Recorded before telling anyone: a crash from here on must not count these claims again.
        let sid = self.session.id.clone();
        self.ctx
            .store
            .call(move |c| store::set_tries_counted(c, &sid, generation))
            .await
            .map_err(|e| e.to_string())?;
        let counted_now = outcomes.len();
        for o in outcomes {
            if o.failed {
                warn!(session = %self.session.id, message = %o.id, tries = o.tries, "message failed: out of tries");
                let text = format!(
                    "Sorry, I could not process your message: the agent failed {} times. It will not be retried.",
                    o.tries
                );
                self.tell_failed(&o.id, o.channel_type, o.platform_id, text).await;
            } else {
                info!(session = %self.session.id, message = %o.id, tries = o.tries, "message will be retried");
            }
        }
        Ok(counted_now)
    }

    async fn spawn_if_due(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), ActorProcessingErr> {
        if !matches!(self.slot, Slot::Empty) {
            return Ok(());
        }
        let paths = self.paths.clone();
        let work = blocking(move || files::pending_work(&paths)).await?;
        if work.due_now {
            self.spawn_container(myself).await?;
        }
        Ok(())
    }

    /// Tells the session's chat that its message waits for a container slot.
    async fn tell_queued(&self, ahead: usize) {
        let (Some(channel_type), Some(platform_id)) =
            (self.session.channel_type.clone(), self.session.platform_id.clone())
        else {
            return;
        };
        let Some(channel) = self.ctx.channels.for_channel_type(&channel_type) else { return };
        let cap = self.ctx.slots.cap();
        info!(session = %self.session.id, ahead, cap, "queued for a container slot");
        let msg = OutboundMessage {
            platform_id,
            thread_id: self.session.thread_id.clone(),
            text: format!(
                "Queued: all {cap} agent containers are busy; {} conversation(s) ahead of yours. I will answer as soon as one is free.",
                ahead
            ),
            in_reply_to: None,
            message_out_id: format!("host-queued-{}", self.session.id),
        };
        let _ = channel.deliver(msg, self.ctx.config.delivery_timeout).await;
    }

    /// Gives the container slot back (after the container is gone).
    fn release_slot(&mut self) {
        if self.has_slot {
            self.ctx.slots.release(&self.session.id);
            self.has_slot = false;
        }
    }

    /// Tells the user a message will not be answered, and notifies the channel.
    async fn tell_failed(
        &mut self,
        message_id: &str,
        channel_type: Option<String>,
        platform_id: Option<String>,
        text: String,
    ) {
        let (Some(channel_type), Some(platform_id)) = (channel_type, platform_id) else { return };
        let Some(channel) = self.ctx.channels.for_channel_type(&channel_type) else { return };
        let msg = OutboundMessage {
            platform_id: platform_id.clone(),
            thread_id: self.session.thread_id.clone(),
            text: text.clone(),
            in_reply_to: None,
            message_out_id: format!("host-failed-{message_id}"),
        };
        let _ = channel.deliver(msg, self.ctx.config.delivery_timeout).await;
        if let Some(pmid) = self.platform_message_id(message_id).await {
            channel.notice(Notice::Failed { platform_id, platform_message_id: pmid, reason: text });
        }
    }

    async fn platform_message_id(&self, message_id: &str) -> Option<String> {
        self.message_meta(message_id).await.and_then(|c| c.platform_message_id)
    }

    /// The content of an inbound chat row: its platform message id and trace id.
    async fn message_meta(&self, message_id: &str) -> Option<ChatContent> {
        let paths = self.paths.clone();
        let id = message_id.to_string();
        blocking(move || {
            let conn = nanoclaw_protocol::schema::open_inbound_writer(&paths.inbound_db())?;
            let content: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT content FROM messages_in WHERE id = ?1",
                [&id],
                |r| r.get(0),
            ))
            .map_err(|source| files::SessionFileError::Sqlite {
                path: id.clone(),
                what: "read content",
                source,
            })?;
            Ok(content.and_then(|c| serde_json::from_str::<ChatContent>(&c).ok()))
        })
        .await
        .ok()
        .flatten()
    }

    /// Syncs acks, delivers due output, then sends notices for the finished messages — in that
    /// order, so a "processed" notice never overtakes the replies committed with its ack.
    async fn pump(&mut self, myself: &ActorRef<SessionMessage>) {
        let paths = self.paths.clone();
        let finished = match blocking(move || files::sync_acks(&paths)).await {
            Ok(f) => f,
            Err(e) => {
                self.warn_outbound(&e);
                vec![]
            }
        };
        if let Err(e) = self.deliver_outbound(myself).await {
            self.warn_outbound(&e);
        }
        if !finished.is_empty() {
            self.last_activity = Instant::now();
            self.spawn_failures = 0;
        }
        for f in finished {
            if f.kind != "chat" {
                continue;
            }
            let (Some(ct), Some(pid)) = (f.channel_type.clone(), f.platform_id.clone()) else { continue };
            let Some(channel) = self.ctx.channels.for_channel_type(&ct) else { continue };
            if let Some(pmid) = self.platform_message_id(&f.id).await {
                let notice = if f.failed {
                    Notice::Failed {
                        platform_id: pid,
                        platform_message_id: pmid,
                        reason: "the agent failed to answer".into(),
                    }
                } else {
                    Notice::Processed { platform_id: pid, platform_message_id: pmid }
                };
                channel.notice(notice);
            }
        }
    }

    /// One delivery pass over `messages_out` (DESIGN §5 invariant 3 and 5).
    async fn deliver_outbound(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), String> {
        loop {
            let paths = self.paths.clone();
            let from = self.low_water;
            let rows = blocking(move || files::read_outbound(&paths, from)).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let full_page = rows.len() == 256;
            let mut all_final = true;
            let last_rowid = rows.last().map(|r| r.rowid).unwrap_or(from);
            for raw in rows {
                let key = raw.ledger_key();
                let paths = self.paths.clone();
                let k = key.clone();
                let record = blocking(move || files::delivery_record(&paths, &k)).await?;
                let is_final = match record.as_ref().map(|r| r.status.as_str()) {
                    Some("delivered") | Some("failed") | Some("sending") => true,
                    Some("retrying") => {
                        if self.retry_at.get(&key).is_some_and(|t| Instant::now() < *t) {
                            false
                        } else {
                            self.deliver_one(myself, &key, &raw).await?
                        }
                    }
                    _ => self.deliver_one(myself, &key, &raw).await?,
                };
                if is_final && all_final {
                    self.low_water = raw.rowid + 1;
                } else {
                    all_final = false;
                }
            }
            if !full_page || !all_final {
                if all_final {
                    self.low_water = last_rowid + 1;
                }
                return Ok(());
            }
        }
    }

    /// Handles one row; returns whether it is now final.
    async fn deliver_one(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        key: &str,
        raw: &nanoclaw_protocol::validate::RawOutboundRow,
    ) -> Result<bool, String> {
        let valid = match validate_outbound(raw) {
            Ok(v) => v,
            Err(e) => {
                warn!(session = %self.session.id, row = %key, reason = %e, "outbound row rejected");
                self.reject(key, &e.to_string()).await?;
                return Ok(true);
            }
        };
        if valid.deliver_after.is_some_and(|t| t > chrono::Utc::now()) {
            return Ok(false);
        }
        match &valid.body {
            OutboundBody::System(action) => {
                let reason = format!("system action {} is not supported by this host yet", action.name());
                warn!(session = %self.session.id, row = %key, %reason, "system action refused");
                self.record(key, "failed", None, Some(&reason), false).await?;
                self.note_to_agent(
                    key,
                    SystemNotice::ActionResult {
                        message_out_id: valid.id.clone(),
                        action: action.name().into(),
                        ok: false,
                        message: reason,
                    },
                )
                .await;
                Ok(true)
            }
            OutboundBody::Chat(content) => self.deliver_chat(myself, key, &valid, content).await,
        }
    }

    async fn deliver_chat(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        key: &str,
        valid: &ValidOutbound,
        content: &OutboundContent,
    ) -> Result<bool, String> {
        let target = valid.target.clone().expect("chat rows have a target");
        if target.channel_type == "agent" {
            self.reject(key, "messages_out.channel_type: agent-to-agent delivery is not available yet")
                .await?;
            return Ok(true);
        }
        let own_chat = Some(&target.channel_type) == self.session.channel_type.as_ref()
            && Some(&target.platform_id) == self.session.platform_id.as_ref();
        if !own_chat {
            let (ag, ct, pid) = (
                self.session.agent_group_id.clone(),
                target.channel_type.clone(),
                target.platform_id.clone(),
            );
            let allowed = self
                .ctx
                .store
                .call(move |c| store::may_send_to_chat(c, &ag, &ct, &pid))
                .await
                .map_err(|e| e.to_string())?;
            if !allowed {
                self.reject(
                    key,
                    &format!(
                        "messages_out.platform_id: {}:{} is not a destination of this agent",
                        target.channel_type, target.platform_id
                    ),
                )
                .await?;
                return Ok(true);
            }
        }
        let OutboundContent::Text { text } = content;
        let answered = match &valid.in_reply_to {
            Some(id) => self.message_meta(id).await,
            None => None,
        };
        let trace = answered.as_ref().and_then(|c| c.trace_id.clone()).unwrap_or_default();
        let in_reply_to = answered.and_then(|c| c.platform_message_id);
        let message = OutboundMessage {
            platform_id: target.platform_id.clone(),
            thread_id: target.thread_id.clone(),
            text: text.clone(),
            in_reply_to,
            message_out_id: valid.id.clone(),
        };
        // The reservation is committed before the send (invariant 3).
        let attempts = self.record(key, "sending", None, None, true).await?;
        let channel = self.ctx.channels.for_channel_type(&target.channel_type);
        let idempotent = channel.as_ref().is_some_and(|ch| ch.idempotent_sends());
        let result = match channel {
            Some(ch) => ch.deliver(message, self.ctx.config.delivery_timeout).await,
            None => Err(crate::ports::channel::DeliveryError::transient(format!(
                "channel {} is not running",
                target.channel_type
            ))),
        };
        match result {
            Ok(platform_message_id) => {
                self.record(key, "delivered", platform_message_id.as_deref(), None, false).await?;
                self.retry_at.remove(key);
                self.last_activity = Instant::now();
                info!(session = %self.session.id, row = %key, %trace, channel = %target.channel_type, "delivered");
                Ok(true)
            }
            Err(e) if e.may_retry(idempotent) && attempts < self.ctx.config.delivery_attempts => {
                let delay = self.ctx.config.delivery_backoff.saturating_mul(1 << (attempts - 1).clamp(0, 10));
                warn!(session = %self.session.id, row = %key, %trace, attempts, error = %e, ?delay, "delivery failed; will retry");
                self.record(key, "retrying", None, Some(&e.to_string()), false).await?;
                self.retry_at.insert(key.to_string(), Instant::now() + delay);
                myself.send_after(delay, || SessionMessage::Output);
                Ok(false)
            }
            Err(e) => {
                warn!(session = %self.session.id, row = %key, %trace, attempts, error = %e, "delivery failed for good");
                self.record(key, "failed", None, Some(&e.to_string()), false).await?;
                self.retry_at.remove(key);
                Ok(true)
            }
        }
    }

    async fn record(
        &self,
        key: &str,
        status: &'static str,
        pmid: Option<&str>,
        error: Option<&str>,
        bump: bool,
    ) -> Result<i64, String> {
        let paths = self.paths.clone();
        let (key, pmid, error) = (key.to_string(), pmid.map(str::to_string), error.map(str::to_string));
        blocking(move || {
            files::record_delivery(&paths, &key, status, pmid.as_deref(), error.as_deref(), bump)
        })
        .await
    }

    /// Marks a row failed with a reason and tells the agent why (a note, `trigger = 0`).
    async fn reject(&mut self, key: &str, reason: &str) -> Result<(), String> {
        self.record(key, "failed", None, Some(reason), false).await?;
        self.note_to_agent(
            key,
            SystemNotice::Rejected { message_out_id: key.to_string(), reason: reason.to_string() },
        )
        .await;
        Ok(())
    }

    async fn note_to_agent(&self, key: &str, notice: SystemNotice) {
        let row = NewInbound {
            id: format!("note-{key}"),
            kind: "system",
            trigger: false,
            on_wake: false,
            channel_type: None,
            platform_id: None,
            thread_id: None,
            content: serde_json::to_string(&notice).expect("notice serialises"),
        };
        let paths = self.paths.clone();
        if let Err(e) = blocking(move || files::write_inbound(&paths, &[row])).await {
            warn!(session = %self.session.id, error = %e, "note to agent not written");
        }
    }

    /// Logs a problem with the container's files once per distinct message.
    fn warn_outbound(&mut self, error: &str) {
        if self.last_outbound_warning.as_deref() != Some(error) {
            warn!(session = %self.session.id, %error, "cannot read the container's outbound.db; treated as empty");
            self.last_outbound_warning = Some(error.to_string());
        }
    }

    /// Stuck and idle detection for a live, ready container.
    async fn check_container(&mut self) -> Result<(), String> {
        let Slot::Live { generation, since, ready, stopping: None, .. } = &self.slot else { return Ok(()) };
        let (generation, since, ready) = (*generation, *since, *ready);
        let cfg = &self.ctx.config;
        if !ready {
            if since.elapsed() > cfg.container_start_timeout {
                self.kill(format!("no hello within {:?}", cfg.container_start_timeout), Then::Stay);
            }
            return Ok(());
        }
        let paths = self.paths.clone();
        let (claims, heartbeat_age, declared) = blocking(move || {
            let claims = files::claims_of(&paths, generation).unwrap_or_default();
            Ok((claims, files::heartbeat_age(&paths), files::declared_tool_timeout(&paths)))
        })
        .await?;
        if !claims.is_empty() {
            // Stuck: work in flight and no sign of life (a heartbeat or a claim) for longer than
            // the claim tolerance, or than the declared timeout of the tool in flight (an untrusted
            // value, capped at the heartbeat ceiling). Reference §1.10's rule (a claim with no
            // heartbeat since) misses a turn that hangs after its first provider event.
            let newest_claim_age = claims
                .iter()
                .filter_map(|(_, t)| nanoclaw_protocol::time::parse_ts(t).ok())
                .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
                .min()
                .unwrap_or_default();
            let silent_for = heartbeat_age.map_or(newest_claim_age, |beat| beat.min(newest_claim_age));
            let tolerance =
                declared.unwrap_or_default().max(cfg.claim_stuck_after).min(cfg.heartbeat_ceiling);
            if silent_for > tolerance {
                self.kill(format!("stuck: no agent activity for {silent_for:?} with work in flight (tolerance {tolerance:?})"), Then::Respawn);
            }
            return Ok(());
        }
        let paths = self.paths.clone();
        let work = blocking(move || files::pending_work(&paths)).await?;
        if work.pending == 0 && self.last_activity.elapsed() > cfg.container_idle_timeout {
            self.kill(format!("idle for {:?}", cfg.container_idle_timeout), Then::Stay);
        } else if work.pending == 0
            && self.ctx.slots.waiting() > 0
            && self.last_activity.elapsed() > cfg.poll_interval * 2
        {
            self.kill("idle while other sessions wait for a container slot".into(), Then::Stay);
        }
        Ok(())
    }
}

/// Accepts runner connections on `wake.sock` and hands each to the session actor.
fn accept_loop(listener: UnixListener, myself: ActorRef<SessionMessage>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if myself.cast(SessionMessage::WakeConnected(stream)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "wake socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

impl Actor for SessionActor {
    type Msg = SessionMessage;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let SessionArgs { ctx, session } = args;
        let paths = SessionPaths::new(&ctx.config.data_dir, &session.agent_group_folder, &session.id);
        // A container of this session that no actor owns (its previous actor failed) must go
        // before this actor may start one: one container per session, always.
        for c in ctx.runtime.list_managed(&ctx.config.install_id).await? {
            if c.session_id.as_deref() == Some(session.id.as_str()) {
                warn!(session = %session.id, container = %c.id, "removing a container left by a previous session actor");
                ctx.runtime.remove(&c.id).await?;
            }
        }
        let owner = ctx.config.container_owner;
        let p = paths.clone();
        let interrupted = blocking(move || {
            files::prepare(&p, owner)?;
            files::fail_interrupted_sends(&p)
        })
        .await?;
        for key in interrupted {
            warn!(session = %session.id, row = %key, "delivery outcome unknown after a host stop; marked failed, not re-sent");
        }
        let socket = paths.wake_socket();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| format!("{}: bind: {e}", socket.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The container user must be able to connect; the folder above is not reachable by
            // other host users (data dir 0700), only through the container's mount.
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        }
        let listener = accept_loop(listener, myself.clone());
        let sid = session.id.clone();
        ctx.store.call(move |c| store::set_container_status(c, &sid, "stopped")).await?;
        Ok(SessionState {
            ctx,
            session,
            paths,
            slot: Slot::Empty,
            wake: None,
            listener,
            wake_reader: None,
            low_water: 0,
            retry_at: HashMap::new(),
            spawn_failures: 0,
            next_spawn_at: None,
            last_activity: Instant::now(),
            last_outbound_warning: None,
            has_slot: false,
            queued_noted: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_interval(state.ctx.config.poll_interval, || SessionMessage::Tick);
        // Work left from before this actor: deliver what was written, count a try for claims of
        // the container that died with the previous actor (or host), then wake for what is due.
        state.pump(&myself).await;
        let sid = state.session.id.clone();
        let previous: i64 = state
            .ctx
            .store
            .call(move |c| {
                c.query_row("SELECT container_generation FROM sessions WHERE id = ?1", [&sid], |r| r.get(0))
                    .map_err(|e| crate::store::StoreError::Sqlite {
                        what: "read generation".into(),
                        source: e,
                    })
            })
            .await?;
        state.count_leftover_claims(previous).await?;
        state.spawn_if_due(&myself).await?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionMessage,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMessage::Enqueue { rows, reply } => {
                let paths = state.paths.clone();
                let result = blocking(move || files::write_inbound(&paths, &rows)).await;
                let added = result.as_ref().map(|n| *n).unwrap_or(0);
                let _ = reply.send(result);
                if added > 0 {
                    state.last_activity = Instant::now();
                    match &state.slot {
                        Slot::Empty => state.spawn_container(&myself).await?,
                        Slot::Live { ready: true, stopping: None, .. } => state.wake_container().await,
                        Slot::Live { .. } => {}
                    }
                }
            }
            SessionMessage::Kill { reason, then } => match state.slot {
                Slot::Empty if then == Then::Respawn => state.spawn_container(&myself).await?,
                Slot::Empty => {}
                Slot::Live { .. } => state.kill(reason, then),
            },
            SessionMessage::WakeConnected(stream) => {
                let (mut read, write) = stream.into_split();
                state.wake = Some(write);
                if let Some(r) = state.wake_reader.take() {
                    r.abort();
                }
                let me = myself.clone();
                state.wake_reader = Some(tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let bytes = &buf[..n];
                        if bytes.contains(&wake::HELLO) && me.cast(SessionMessage::Hello).is_err() {
                            break;
                        }
                        if bytes.contains(&wake::OUTPUT) && me.cast(SessionMessage::Output).is_err() {
                            break;
                        }
                    }
                }));
            }
            SessionMessage::Hello => {
                if let Slot::Live { ready, .. } = &mut state.slot {
                    *ready = true;
                    let sid = state.session.id.clone();
                    state.ctx.store.call(move |c| store::set_container_status(c, &sid, "running")).await?;
                }
            }
            SessionMessage::Output => {
                state.last_activity = Instant::now();
                state.pump(&myself).await;
            }
            SessionMessage::Tick => {
                state.pump(&myself).await;
                match state.slot {
                    Slot::Empty => {
                        let paths = state.paths.clone();
                        let work = blocking(move || files::pending_work(&paths)).await?;
                        if work.due_now {
                            state.spawn_container(&myself).await?;
                        } else if work.pending == 0
                            && state.retry_at.is_empty()
                            && state.last_activity.elapsed() > state.ctx.config.session_linger
                        {
                            debug!(session = %state.session.id, "idle; session actor stops");
                            myself.stop(Some("idle".into()));
                        }
                    }
                    Slot::Live { .. } => {
                        if let Err(e) = state.check_container().await {
                            warn!(session = %state.session.id, error = %e, "container check failed");
                        }
                    }
                }
            }
            SessionMessage::SlotGranted => {
                state.has_slot = true;
                state.spawn_if_due(&myself).await?;
                if matches!(state.slot, Slot::Empty) {
                    // Nothing to do any more (or spawning is backing off): pass the slot on.
                    state.release_slot();
                }
            }
            SessionMessage::Status(reply) => {
                let paths = state.paths.clone();
                let pending =
                    blocking(move || files::pending_work(&paths)).await.map(|w| w.pending).unwrap_or(-1);
                let _ = reply.send(SessionStatus {
                    session_id: state.session.id.clone(),
                    container_generation: state.generation(),
                    container_ready: matches!(state.slot, Slot::Live { ready: true, .. }),
                    pending,
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        let is_current = matches!(&state.slot, Slot::Live { actor, .. } if actor.get_id() == cell.get_id());
        if is_current {
            state.container_gone(&myself, reason).await?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.listener.abort();
        if let Some(r) = state.wake_reader.take() {
            r.abort();
        }
        // Stop the container gracefully (ractor would only kill its actor, leaving the container).
        if let Slot::Live { actor, .. } = &state.slot {
            let grace = state.ctx.config.container_stop_grace + Duration::from_secs(10);
            actor.stop_and_wait(Some("session stopping".into()), Some(grace)).await.ok();
        }
        let _ = std::fs::remove_file(state.paths.wake_socket());
        state.release_slot();
        // Also leaves the queue if it was waiting.
        state.ctx.slots.release(&state.session.id);
        let sid = state.session.id.clone();
        let _ = state.ctx.store.call(move |c| store::set_container_status(c, &sid, "stopped")).await;
        Ok(())
    }
}
