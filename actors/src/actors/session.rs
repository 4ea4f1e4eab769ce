//! `SessionActor`: owns one session (DESIGN §4).
//!
//! Spawned on demand by the [`super::session_supervisor::SessionSupervisor`] and stopped when
//! idle; everything it knows is rebuilt from the session DBs and the central store, so a restart
//! loses nothing. Its start reads no file of the container's: `pre_start` binds the wake socket
//! and starts the outbox, and the rest of the resumption runs as its first message, under
//! deadlines — so a hostile workspace can neither hang nor slow the host's start.
//!
//! It wires the parts of [`crate::session`] together:
//! - the container slot ([`Phase`], a pure state machine) and its one [`ContainerActor`], linked;
//!   kill-then-respawn waits for the old container's termination event;
//! - the [`WakeLink`] (host end of `wake.sock`) and the [`Outbox`] task (output, acks,
//!   delivery), both drop guards in this actor's state;
//! - the liveness [`verdict`], evaluated when the outbox reports and when the one timer armed for
//!   the next due instant fires (plus a slow fallback, [`ServiceConfig::fallback_check`]);
//! - the container slot permit ([`SlotPermit`], released by drop) and quarantine.
//!
//! It is the only writer of `inbound.db` besides its own outbox task. At most one container per
//! session (DESIGN §5 invariant 4) holds because only this actor spawns containers for the
//! session, its mailbox is serial, [`Phase`] allows a spawn only from `Gone`, and `Gone` is
//! re-entered only on the old container actor's termination event (after removal). A
//! replacement session actor first removes any container still labelled with the session.
//!
//! [`ServiceConfig::fallback_check`]: crate::context::ServiceConfig::fallback_check

use super::container::{ContainerActor, ContainerArgs, ContainerMessage, ContainerState};
use crate::container_files;
use crate::context::ServiceContext;
use crate::ports::provider::{ProxyEvent, ProxyGuard, ProxyScope};
use crate::ports::runtime::ContainerSpec;
use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::session::lifecycle::{Action, ContainerExit, Phase, StopCause};
use crate::session::liveness::{Signs, Tolerances, Verdict, verdict};
use crate::session::notices;
use crate::session::outbox::{Outbox, OutboxPokes, OutboxReport};
use crate::session::wake::{WakeConnection, WakeLink};
use crate::session_files::{self as files, NewInbound, SessionPaths};
use crate::slots::SlotPermit;
use crate::store::{self, SessionHold, SessionInfo};
use nanoclaw_protocol::layout;
use nanoclaw_protocol::rows::SessionRouting;
use nanoclaw_protocol::settings::ImageTier;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

pub use crate::session::lifecycle::Then;

/// Errors a session actor answers with. Display is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Writing or reading the session's host files failed.
    #[error("session files: {0}")]
    Files(String),
    /// `inbound.db` stayed locked (by the container) past SQLite's busy timeout.
    #[error("session files: inbound.db is locked: {0}")]
    Busy(String),
    /// The actor is gone or did not answer in time (it was stopping: ask the supervisor again).
    #[error("session actor: {0}")]
    Unavailable(String),
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

/// Most entries one workspace walk visits (a container can create millions of files).
const WORKSPACE_MAX_ENTRIES: u64 = 200_000;

/// Longest one workspace walk may take.
const WORKSPACE_WALK_DEADLINE: Duration = Duration::from_secs(2);

/// The armed timer's task (its message is sent when it fires; aborted on drop).
type TimerHandle = AbortOnDropHandle<Result<(), ractor::MessagingErr<SessionMessage>>>;

/// Private state.
pub struct SessionState {
    ctx: Arc<ServiceContext>,
    session: SessionInfo,
    paths: SessionPaths,
    /// The container slot.
    phase: Phase,
    /// The container actor of the slot, while `phase` is not `Gone`.
    container: Option<ActorRef<ContainerMessage>>,
    /// Host end of `wake.sock` (drop guard: its tasks and the socket file go with the state).
    wake: WakeLink,
    /// The outbox task (drop guard).
    outbox: Outbox,
    /// The credential proxy on `proxy.sock` (drop guard: its tasks and the socket file go with
    /// the state). Opened before each container start.
    proxy: Option<ProxyGuard>,
    /// The provider error last told to the chat (told once per distinct error per actor).
    provider_error: Option<String>,
    /// One of the global container slots, held from before a spawn until the container is gone.
    permit: Option<SlotPermit>,
    /// Waiting in the slot queue (drop guard: dropping it leaves the queue).
    slot_wait: Option<AbortOnDropHandle<()>>,
    /// The image tier being ensured (building `standard` the first time takes minutes), off the
    /// mailbox so Status, Kill, Enqueue and shutdown are answered meanwhile; it casts
    /// [`SessionMessage::TierReady`]. Drop guard: a stopping actor aborts it.
    tier_wait: Option<AbortOnDropHandle<()>>,
    /// The tier ensured for the next spawn (consumed by it, so each spawn checks its image again).
    tier_ready: Option<ImageTier>,
    /// A kill-then-respawn asked for a container that is not spawned yet: it waits for the
    /// image, a slot or a backoff. [`SessionState::check`] spawns for it as for pending work (a
    /// respawn has none of its own); cleared by the spawn, a hold or an unusable provider.
    respawn: Respawn,
    /// The chat was told it waits for a slot (once per wait).
    queued_noted: bool,
    /// The chat was told its agent's image could not be prepared (once until an image is ready:
    /// a retry that fails again says nothing new).
    image_failure_noted: bool,
    /// Quarantined or paused: input is kept, no container runs.
    hold: Option<SessionHold>,
    /// The first message (resumption from the files) was handled.
    resumed: bool,
    /// Containers that died without doing any work, for spawn backoff ([`RestartPolicy::container_spawn`]).
    spawn_backoff: RestartTracker,
    /// No spawn before this instant.
    next_spawn_at: Option<Instant>,
    /// Last time something happened (input, output, a container start).
    last_activity: Instant,
    /// From the outbox: when the newest claim of the current container was first seen.
    newest_claim_seen: Option<Instant>,
    /// From the outbox: declared timeout of the tool in flight (untrusted).
    declared_timeout: Option<Duration>,
    /// From the outbox: output rows not yet final remain.
    outstanding: bool,
    /// `sessions.work_pending` as last written.
    work_flag: Option<bool>,
    /// When the workspace was last measured.
    last_workspace_check: Option<Instant>,
    /// The one timer armed for the next due instant (drop guard).
    timer: Option<(Instant, TimerHandle)>,
}

/// Whether a kill-then-respawn still wants its new container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Respawn {
    /// No respawn is waiting.
    NotWanted,
    /// A respawn was asked and no container was spawned for it yet.
    Wanted,
}

/// A snapshot for `ncl` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// Session id.
    pub session_id: String,
    /// Its agent group.
    pub agent_group_id: String,
    /// Generation of the live container, if any.
    pub container_generation: Option<i64>,
    /// The live container said hello.
    pub container_ready: bool,
    /// Pending triggering inbound rows (-1 when unreadable).
    pub pending: i64,
    /// `quarantined` / `paused` with its reason, when held.
    pub hold: Option<SessionHold>,
}

/// Messages of [`SessionActor`].
pub enum SessionMessage {
    /// Resume from the files (the first message after start).
    Resume,
    /// Write rows into `inbound.db` and wake or spawn the container. Replies with how many rows
    /// were new (0 for a repeat).
    Enqueue {
        /// The rows.
        rows: Vec<NewInbound>,
        /// Reply.
        reply: RpcReplyPort<Result<usize, SessionError>>,
    },
    /// Write rows (a note with `on_wake = 1`), then replace the container: kill-then-respawn,
    /// so the note is read only by the new container's first read (an approved change to the
    /// agent's configuration). Without a container, the rows' trigger spawns one.
    Restart {
        /// The rows.
        rows: Vec<NewInbound>,
        /// Why (logged).
        reason: String,
        /// Reply once the rows are written.
        reply: RpcReplyPort<Result<usize, SessionError>>,
    },
    /// Replace or stop the container: DESIGN §4's kill-then-respawn.
    Kill {
        /// Why.
        reason: String,
        /// What to do once it is gone.
        then: Then,
    },
    /// A runner said hello on `wake.sock` (one per container generation at most).
    WakeConnected(WakeConnection),
    /// The outbox finished a pass.
    Outbox(OutboxReport),
    /// The armed timer or the slow fallback fired.
    Timer,
    /// A snapshot.
    Status(RpcReplyPort<SessionStatus>),
    /// A container slot was granted to this queued session.
    SlotGranted(SlotPermit),
    /// The image tier ensure started by a spawn finished (the error is the runtime's, one line).
    TierReady {
        /// The tier that was ensured.
        tier: ImageTier,
        /// Whether its image is usable.
        result: Result<(), String>,
    },
    /// The credential proxy met something the owner must hear about (already rate-limited by
    /// the proxy).
    Proxy(ProxyEvent),
    /// The agent group's destinations changed: project them into `inbound.db` now, so the
    /// running agent sees them without a restart.
    RefreshDestinations,
}

impl std::fmt::Debug for SessionMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionMessage::Resume => f.write_str("Resume"),
            SessionMessage::Enqueue { rows, .. } => write!(f, "Enqueue({} rows)", rows.len()),
            SessionMessage::Restart { rows, reason, .. } => {
                write!(f, "Restart({} rows, {reason})", rows.len())
            }
            SessionMessage::Kill { reason, then } => write!(f, "Kill({reason}, {then:?})"),
            SessionMessage::WakeConnected(c) => write!(f, "WakeConnected({})", c.generation),
            SessionMessage::Outbox(r) => write!(f, "Outbox({r:?})"),
            SessionMessage::Timer => f.write_str("Timer"),
            SessionMessage::Status(_) => f.write_str("Status"),
            SessionMessage::SlotGranted(_) => f.write_str("SlotGranted"),
            SessionMessage::TierReady { tier, result } => {
                write!(f, "TierReady({}, {result:?})", tier.as_str())
            }
            SessionMessage::Proxy(e) => write!(f, "Proxy({e:?})"),
            SessionMessage::RefreshDestinations => f.write_str("RefreshDestinations"),
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
    pub async fn enqueue(&self, rows: Vec<NewInbound>) -> Result<usize, SessionError> {
        ractor::call_t!(self.actor, |reply| SessionMessage::Enqueue { rows, reply }, 30_000)
            .map_err(|e| SessionError::Unavailable(e.to_string()))?
    }

    /// Writes rows (an `on_wake` note), then kills the container and starts a new one, which
    /// alone reads the note (30 s timeout). Errors as [`SessionHandle::enqueue`].
    pub async fn restart_with(
        &self,
        rows: Vec<NewInbound>,
        reason: impl Into<String>,
    ) -> Result<usize, SessionError> {
        let reason = reason.into();
        ractor::call_t!(self.actor, |reply| SessionMessage::Restart { rows, reason, reply }, 30_000)
            .map_err(|e| SessionError::Unavailable(e.to_string()))?
    }

    /// Kill-then-respawn (or stay).
    pub fn kill(&self, reason: impl Into<String>, then: Then) -> Result<(), SessionError> {
        self.actor
            .cast(SessionMessage::Kill { reason: reason.into(), then })
            .map_err(|e| SessionError::Unavailable(e.to_string()))
    }

    /// Asks the actor to project its agent group's destinations into `inbound.db` again (a
    /// destination was added or removed). Ignored when the actor is gone: the next container
    /// start projects them anyway.
    pub fn refresh_destinations(&self) {
        let _ = self.actor.cast(SessionMessage::RefreshDestinations);
    }

    /// A status snapshot (5 s timeout).
    pub async fn status(&self) -> Result<SessionStatus, SessionError> {
        ractor::call_t!(self.actor, SessionMessage::Status, 5_000)
            .map_err(|e| SessionError::Unavailable(e.to_string()))
    }
}

/// Runs a host-file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    paths: &SessionPaths,
    f: impl FnOnce(&SessionPaths) -> Result<T, files::SessionFileError> + Send + 'static,
) -> Result<T, SessionError> {
    let paths = paths.clone();
    match tokio::task::spawn_blocking(move || f(&paths)).await {
        Ok(r) => r.map_err(|e| {
            if e.is_busy() { SessionError::Busy(e.to_string()) } else { SessionError::Files(e.to_string()) }
        }),
        Err(e) => Err(SessionError::Files(format!("blocking task failed: {e}"))),
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
    fn now() -> Instant {
        Instant::now()
    }

    /// Resumes from the files: the first message after start (see the module doc).
    async fn resume(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), ActorProcessingErr> {
        let ctx = self.ctx.clone();
        let sid = self.session.id.clone();
        self.hold = ctx.store.call(move |c| store::session_hold(c, &sid)).await?;
        // A container of this session that no actor owns (its previous actor failed) must go
        // before this actor may start one: one container per session, always.
        let list =
            tokio::time::timeout(Duration::from_secs(30), ctx.runtime.list_managed(&ctx.config.install_id))
                .await
                .map_err(|_| "listing containers timed out")??;
        for c in list {
            if c.session_id.as_deref() == Some(self.session.id.as_str()) {
                warn!(session = %self.session.id, container = %c.id, "removing a container left by a previous session actor");
                ctx.runtime.remove(&c.id).await?;
            }
        }
        let owner = ctx.config.container_owner;
        // Rows a stopped host left `sending` are settled by the outbox (re-sent with the same key
        // on idempotent channels, else failed and the chat told).
        blocking(&self.paths, move |p| files::prepare(p, owner)).await?;
        // Claims of the container that died with the previous actor (or host) cost a try.
        let sid = self.session.id.clone();
        let (previous, _) = ctx.store.call(move |c| store::generations(c, &sid)).await?;
        self.count_leftover_claims(previous).await?;
        self.resumed = true;
        self.outbox.poke();
        self.check(myself).await
    }

    /// Marks `sessions.work_pending` (only when it changes).
    async fn set_work_flag(&mut self, pending: bool) -> Result<(), ActorProcessingErr> {
        if self.work_flag == Some(pending) {
            return Ok(());
        }
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_work_pending(c, &sid, pending)).await?;
        self.work_flag = Some(pending);
        Ok(())
    }

    /// Ensures the image tier (off the mailbox), takes a slot and spawns a container, or joins
    /// the slot queue. Re-entered by [`SessionMessage::TierReady`] and
    /// [`SessionMessage::SlotGranted`], so every guard is checked again then: a Kill, a hold or
    /// a backoff may have arrived meanwhile.
    async fn spawn_container(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), ActorProcessingErr> {
        if !matches!(self.phase, Phase::Gone) || self.hold.is_some() || !self.resumed {
            return Ok(());
        }
        // Already waiting for the image or for a slot: their messages come back here.
        if self.tier_wait.is_some() || (self.slot_wait.is_some() && self.permit.is_none()) {
            return Ok(());
        }
        if self.next_spawn_at.is_some_and(|t| Self::now() < t) {
            return Ok(());
        }
        if self.check_workspace().await? {
            return Ok(());
        }
        // The provider, runner.json and the proxy: a provider that cannot be used (unknown,
        // key unset, bad base_url) stops this session's turns with one line naming the key.
        let sid = self.session.id.clone();
        let row = self.ctx.store.call(move |c| store::runner_config(c, &sid)).await?;
        let image = row.as_ref().and_then(|r| r.image_tag.clone());
        let prepared = match row {
            Some(row) => crate::session::runner::settings(&self.ctx, &self.session, &row),
            None => Err("the session row is gone".to_string()),
        };
        let settings = match prepared {
            Ok(s) => s,
            Err(line) => {
                self.provider_failed(line).await?;
                return Ok(());
            }
        };
        // The tier runner.json names (explicit, else `standard` for a real provider) is ensured
        // before a slot is taken: building the `standard` image the first time takes minutes,
        // and a slot held that long would keep other sessions' containers from starting.
        if self.tier_ready != Some(settings.image_tier) {
            let (runtime, tier, me) = (self.ctx.runtime.clone(), settings.image_tier, myself.clone());
            self.tier_wait = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                let result = runtime.ensure_tier(tier).await.map_err(|e| e.to_string());
                let _ = me.cast(SessionMessage::TierReady { tier, result });
            })));
            return Ok(());
        }
        if self.permit.is_none() {
            match self.ctx.slots.try_acquire() {
                Some(p) => self.permit = Some(p),
                None => {
                    if self.slot_wait.is_none() {
                        let (ahead, granted) = self.ctx.slots.acquire();
                        let me = myself.clone();
                        self.slot_wait = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                            let permit = granted.await;
                            // A session that is gone drops the permit here: the next waiter gets it.
                            let _ = me.cast(SessionMessage::SlotGranted(permit));
                        })));
                        if !self.queued_noted {
                            self.queued_noted = true;
                            notices::tell_queued(&self.ctx, &self.session, ahead).await;
                        }
                    }
                    return Ok(());
                }
            }
        }
        self.queued_noted = false;
        let text = crate::session::runner::to_json(&settings);
        let file = self.paths.host_dir.join(layout::RUNNER_SETTINGS);
        tokio::task::spawn_blocking(move || crate::session::runner::write_atomic(&file, text.as_bytes()))
            .await
            .map_err(|e| format!("writing {}: {e}", layout::RUNNER_SETTINGS))??;
        // The old proxy goes first: its drop removes the socket file the new one binds.
        self.proxy = None;
        let me = myself.clone();
        let scope = ProxyScope {
            session_id: self.session.id.clone(),
            agent_group_id: self.session.agent_group_id.clone(),
            provider: settings.provider.name.clone(),
            egress_allow: settings.egress_allow.clone(),
            socket: self.paths.host_dir.join(layout::PROXY_SOCKET),
            store: self.ctx.store.clone(),
            on_event: Arc::new(move |e| {
                let _ = me.cast(SessionMessage::Proxy(e));
            }),
        };
        match self.ctx.config.gateway.open(scope).await {
            Ok(guard) => self.proxy = Some(guard),
            Err(e) => {
                self.provider_failed(e.to_string()).await?;
                return Ok(());
            }
        }
        self.provider_error = None;
        // The ensure was for this spawn only: the next one checks the image again.
        self.tier_ready = None;
        let sid = self.session.id.clone();
        let generation = self.ctx.store.call(move |c| store::next_generation(c, &sid)).await?;
        let agent_group = self.session.agent_group_id.clone();
        let destinations = self.ctx.store.call(move |c| store::destinations_of(c, &agent_group)).await?;
        let routing = routing_of(&self.session);
        blocking(&self.paths, move |p| {
            files::clear_heartbeat(p);
            files::project(p, &destinations, &routing)
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
            skills_dir: self.ctx.config.skills_dir.clone(),
            env: vec![
                (layout::ENV_GENERATION.into(), generation.to_string()),
                (layout::ENV_SESSION_ID.into(), self.session.id.clone()),
                (layout::ENV_PROVIDER.into(), settings.provider.name.clone()),
                (layout::ENV_ASSISTANT_NAME.into(), self.session.assistant_name.clone()),
                (
                    layout::ENV_MAX_MESSAGES_PER_PROMPT.into(),
                    self.session.max_messages_per_prompt.to_string(),
                ),
            ],
            image_tier: settings.image_tier,
            image,
        };
        let args = ContainerArgs {
            runtime: self.ctx.runtime.clone(),
            spec,
            stop_grace: self.ctx.config.container_stop_grace,
            live: self.ctx.live_containers.clone(),
        };
        self.wake.expect(generation);
        self.outbox.set_generation(generation);
        self.newest_claim_seen = None;
        self.declared_timeout = None;
        let (actor, _) = Actor::spawn_linked(None, ContainerActor, args, myself.get_cell()).await?;
        self.container = Some(actor);
        self.phase.spawned(generation, Self::now().into_std());
        self.respawn = Respawn::NotWanted;
        self.last_activity = Self::now();
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_container_status(c, &sid, "starting")).await?;
        Ok(())
    }

    /// Carries out a lifecycle action.
    async fn act(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        action: Action,
    ) -> Result<(), ActorProcessingErr> {
        match action {
            Action::None => Ok(()),
            Action::Stop(cause) => {
                if let Some(c) = &self.container {
                    let _ = c.cast(ContainerMessage::Stop { cause });
                }
                Ok(())
            }
            Action::Spawn => {
                // Wanted until a container is spawned: the spawn may have to wait for the image
                // or a slot, whose messages come back through `check`.
                self.respawn = Respawn::Wanted;
                self.next_spawn_at = None;
                self.spawn_container(myself).await
            }
        }
    }

    /// The container is gone: count the tries of what it left in flight, then decide.
    async fn container_gone(
        &mut self,
        myself: &ActorRef<SessionMessage>,
        exit: ContainerExit,
    ) -> Result<(), ActorProcessingErr> {
        let Some(generation) = self.phase.generation() else { return Ok(()) };
        let Some(gone) = self.phase.gone(generation, &exit, Self::now().into_std()) else { return Ok(()) };
        self.container = None;
        self.wake.disconnect();
        info!(session = %self.session.id, generation, %exit, "container gone");
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_container_status(c, &sid, "stopped")).await?;
        // Whatever it finished is delivered by the outbox; only true leftovers count.
        self.outbox.poke();
        let counted = self.count_leftover_claims(generation).await?;
        if gone.clean || counted > 0 {
            // A crash that cost its messages a try is paced by the try backoff already.
            self.spawn_backoff.reset();
            self.next_spawn_at = None;
        } else {
            // A container that died without costing any message a try (e.g. at startup, or it
            // never said hello) would otherwise respawn at once, forever: back off, and give up
            // on the waiting messages after `max_tries`.
            let delay = match self.spawn_backoff.on_failure() {
                RestartDecision::RestartAfter(d) => d,
                RestartDecision::GiveUp { .. } => RestartPolicy::container_spawn().max_delay,
            };
            let failures = self.spawn_backoff.consecutive_failures();
            self.next_spawn_at = Some(Self::now() + delay);
            warn!(session = %self.session.id, failures, ?delay, %exit, "container failed without doing any work");
            if i64::from(failures) >= self.ctx.config.max_tries {
                let failed = blocking(&self.paths, files::fail_pending).await?;
                for o in failed {
                    let text = format!(
                        "Sorry, I could not process your message: the agent's container keeps failing to start ({exit})."
                    );
                    self.tell_failed(o, text).await;
                }
                self.spawn_backoff.reset();
            }
        }
        if gone.then == Some(Then::Respawn) && self.hold.is_none() {
            // `check` spawns it, keeping the slot of the container it replaces.
            self.respawn = Respawn::Wanted;
            self.next_spawn_at = None;
        } else {
            // Others may be waiting: the slot goes back, and this session queues like anyone else.
            self.permit = None;
        }
        self.check(myself).await
    }

    /// The session's provider cannot be used: its waiting messages fail with `line` (which names
    /// the config key), the slot goes back, and no container starts until a new message comes
    /// (which meets the same check). Other sessions are not affected.
    async fn provider_failed(&mut self, line: String) -> Result<(), ActorProcessingErr> {
        if self.provider_error.as_deref() != Some(line.as_str()) {
            error!(session = %self.session.id, agent_group = %self.session.agent_group_id, "provider unusable: {line}");
            self.provider_error = Some(line.clone());
        }
        self.permit = None;
        self.respawn = Respawn::NotWanted;
        let failed = blocking(&self.paths, files::fail_pending).await?;
        for o in failed {
            self.tell_failed(o, format!("Sorry, I could not process your message: {line}")).await;
        }
        Ok(())
    }

    /// Tells the user a message will not be answered.
    async fn tell_failed(&self, o: files::RetryOutcome, text: String) {
        notices::tell_failed(
            &self.ctx,
            &self.session,
            &self.paths,
            &o.id,
            o.channel_type,
            o.platform_id,
            text,
        )
        .await;
    }

    /// Counts one failed try for every claim a dead container of `generation` left `processing`
    /// (each generation at most once), failing and telling the user at the limit.
    async fn count_leftover_claims(&mut self, generation: i64) -> Result<usize, ActorProcessingErr> {
        let sid = self.session.id.clone();
        let (_, counted) = self.ctx.store.call(move |c| store::generations(c, &sid)).await?;
        if generation <= counted || generation == 0 {
            return Ok(0);
        }
        // Claims are never below the ack cursor (it stops at the first row still `processing`),
        // so the read starts there: a session with 100,000 finished turns reads none of them.
        let claims_from_rowid = blocking(&self.paths, files::read_cursors).await?.processing_ack;
        let req = container_files::OutboundRequest {
            claims_of_generation: Some(generation),
            claims_from_rowid,
            ..Default::default()
        };
        let limits = container_files::ReadLimits {
            max_file_bytes: self.ctx.config.outbound_max_bytes,
            ..Default::default()
        };
        let claims = match container_files::read(self.paths.clone(), limits, req).await {
            Ok(s) => s.claims,
            Err(container_files::ReadError::Violation(v)) => {
                self.quarantine(v.to_string()).await?;
                vec![]
            }
            // Unreadable now: counted at the next container exit or start (never twice).
            Err(e) => {
                warn!(session = %self.session.id, error = %e, "claims of the dead container not readable; not counted now");
                return Ok(0);
            }
        };
        // A malformed claim row names no message the host could count a try for.
        let ids: Vec<String> = claims.into_iter().filter_map(Result::ok).map(|c| c.message_id).collect();
        let (max, base) = (self.ctx.config.max_tries, self.ctx.config.retry_backoff);
        let outcomes = if ids.is_empty() {
            vec![]
        } else {
            blocking(&self.paths, move |p| files::count_failed_try(p, &ids, max, base)).await?
        };
        // Recorded before telling anyone: a crash from here on must not count these claims again.
        let sid = self.session.id.clone();
        self.ctx.store.call(move |c| store::set_tries_counted(c, &sid, generation)).await?;
        let counted_now = outcomes.len();
        for o in outcomes {
            if o.failed {
                warn!(session = %self.session.id, message = %o.id, tries = o.tries, "message failed: out of tries");
                let text = format!(
                    "Sorry, I could not process your message: the agent failed {} times. It will not be retried.",
                    o.tries
                );
                self.tell_failed(o, text).await;
            } else {
                info!(session = %self.session.id, message = %o.id, tries = o.tries, "message will be retried");
            }
        }
        Ok(counted_now)
    }

    /// Quarantines the session: container killed, status and reason recorded, chat and owner
    /// told once, slot freed when the container is gone. Other sessions are unaffected.
    async fn quarantine(&mut self, reason: String) -> Result<(), ActorProcessingErr> {
        self.hold_session(SessionHold::Quarantined(reason)).await
    }

    /// Puts the session on hold (quarantined or paused); see [`SessionState::quarantine`].
    async fn hold_session(&mut self, hold: SessionHold) -> Result<(), ActorProcessingErr> {
        if self.hold.is_some() {
            return Ok(());
        }
        match &hold {
            SessionHold::Quarantined(reason) => {
                error!(session = %self.session.id, %reason, "session quarantined: its container broke the rules for container files")
            }
            SessionHold::Paused(reason) => warn!(session = %self.session.id, %reason, "session paused"),
        }
        let (sid, h) = (self.session.id.clone(), hold.clone());
        let first = self.ctx.store.call(move |c| store::hold_session(c, &sid, &h)).await?;
        self.hold = Some(hold.clone());
        self.work_flag = Some(true);
        let action = self.phase.kill(StopCause::Hold(hold.reason().to_string()), Then::Stay);
        if let (Action::Stop(cause), Some(c)) = (action, &self.container) {
            let _ = c.cast(ContainerMessage::Stop { cause });
        }
        self.slot_wait = None;
        // No container will run: a build in progress is abandoned (the next spawn restarts it).
        self.tier_wait = None;
        self.respawn = Respawn::NotWanted;
        if first {
            notices::tell_held(&self.ctx, &self.session, &hold).await;
        }
        Ok(())
    }

    /// Measures the workspace (bounded walk, off the mailbox) at most every
    /// `workspace_check_every`, and pauses the session when it is over
    /// `container.workspace_max_mb`. Returns true when the session was paused.
    async fn check_workspace(&mut self) -> Result<bool, ActorProcessingErr> {
        let max = self.ctx.config.workspace_max_bytes;
        let now = Self::now();
        let every = self.ctx.config.workspace_check_every;
        if max == 0 || self.last_workspace_check.is_some_and(|t| now.duration_since(t) < every) {
            return Ok(false);
        }
        self.last_workspace_check = Some(now);
        let dir = self.paths.workspace_dir.clone();
        let usage = tokio::task::spawn_blocking(move || {
            crate::disk::workspace_usage(
                &dir,
                WORKSPACE_MAX_ENTRIES,
                std::time::Instant::now() + WORKSPACE_WALK_DEADLINE,
            )
        })
        .await;
        let Ok(Ok(usage)) = usage else { return Ok(false) };
        // An incomplete walk is a lower bound: over the limit is certain, under it is not.
        if usage.bytes <= max {
            return Ok(false);
        }
        let reason = format!("workspace holds {usage}, over container.workspace_max_mb = {} MiB", max >> 20);
        self.hold_session(SessionHold::Paused(reason)).await?;
        Ok(true)
    }

    /// Evaluates the session now and arms the timer for the next due instant. The only place
    /// that decides to spawn, judge a running container, or stop the actor.
    async fn check(&mut self, myself: &ActorRef<SessionMessage>) -> Result<(), ActorProcessingErr> {
        if !self.resumed {
            return Ok(());
        }
        let cfg = self.ctx.config.clone();
        let now = Self::now();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        match &self.phase {
            Phase::Spawning { .. } | Phase::Starting { .. } => {
                let action = self.phase.check_hello(now.into_std(), cfg.container_start_timeout);
                if let Some(d) = self.phase.hello_deadline(cfg.container_start_timeout) {
                    at(Instant::from_std(d));
                }
                self.act(myself, action).await?;
            }
            Phase::Ready { .. } => {
                if self.check_workspace().await? {
                    return Ok(());
                }
                let work = blocking(&self.paths, files::pending_work).await?;
                let heartbeat_age = container_files::heartbeat_age(&self.paths);
                let signs = Signs {
                    newest_claim_age: self.newest_claim_seen.map(|t| now.duration_since(t)),
                    heartbeat_age,
                    declared_timeout: self.declared_timeout,
                    idle_for: now.duration_since(self.last_activity),
                    pending: work.pending,
                    slot_waiters: self.ctx.slots.waiting(),
                };
                let tolerances = Tolerances {
                    claim_stuck_after: cfg.claim_stuck_after,
                    heartbeat_ceiling: cfg.heartbeat_ceiling,
                    idle_timeout: cfg.container_idle_timeout,
                    yield_after: cfg.yield_slot_after,
                };
                let action = match verdict(&signs, &tolerances) {
                    Verdict::Alive { check_in } => {
                        at(now + check_in);
                        Action::None
                    }
                    Verdict::Stuck { silent_for, tolerance } => {
                        self.phase.kill(StopCause::Stuck { silent_for, tolerance }, Then::Respawn)
                    }
                    Verdict::Idle => self.phase.kill(StopCause::Idle, Then::Stay),
                    Verdict::YieldSlot => self.phase.kill(StopCause::YieldSlot, Then::Stay),
                };
                self.act(myself, action).await?;
            }
            Phase::Stopping { .. } => {}
            Phase::Gone => {
                let work = blocking(&self.paths, files::pending_work).await?;
                if self.hold.is_none() {
                    if work.due_now || self.respawn == Respawn::Wanted {
                        if work.due_now {
                            self.set_work_flag(true).await?;
                        }
                        self.spawn_container(myself).await?;
                        if let Some(t) = self.next_spawn_at {
                            at(t);
                        }
                    } else if let Some(Ok(due)) =
                        work.next_due.as_deref().map(nanoclaw_protocol::time::parse_ts)
                    {
                        let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
                        at(now + wait + Duration::from_millis(10));
                    }
                }
                let quiet = matches!(self.phase, Phase::Gone)
                    && self.slot_wait.is_none()
                    && self.tier_wait.is_none()
                    && self.respawn == Respawn::NotWanted
                    && (work.pending == 0 || self.hold.is_some())
                    && !self.outstanding;
                if quiet && self.hold.is_some() {
                    // A held session has no use for its actor: the next message (or the periodic
                    // resume after a release) starts a fresh one, which reads the hold again.
                    debug!(session = %self.session.id, "held; session actor stops");
                    myself.stop(Some("held".into()));
                    return Ok(());
                }
                if quiet {
                    let linger_end = self.last_activity + cfg.session_linger;
                    if now >= linger_end {
                        if self.hold.is_none() {
                            self.set_work_flag(false).await?;
                        }
                        debug!(session = %self.session.id, "idle; session actor stops");
                        myself.stop(Some("idle".into()));
                        return Ok(());
                    }
                    at(linger_end);
                }
            }
        }
        self.arm(myself, next);
        Ok(())
    }

    /// Arms the one timer for `at` (or the slow fallback), replacing an earlier one.
    fn arm(&mut self, myself: &ActorRef<SessionMessage>, at: Option<Instant>) {
        let now = Self::now();
        let at = at.unwrap_or(now + self.ctx.config.fallback_check).min(now + self.ctx.config.fallback_check);
        if self.timer.as_ref().is_some_and(|(t, h)| *t == at && !h.is_finished()) {
            return;
        }
        let delay = at.saturating_duration_since(now);
        let handle = myself.send_after(delay, || SessionMessage::Timer);
        self.timer = Some((at, AbortOnDropHandle::new(handle)));
    }
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
        // Only host-written folders here: the host folder is created (0755) and the socket bound;
        // nothing the container writes is read before the first message, under deadlines.
        std::fs::create_dir_all(&paths.host_dir).map_err(|e| format!("{}: {e}", paths.host_dir.display()))?;
        let notify = Arc::new(OutboxPokes::default());
        let me = myself.clone();
        let me2 = myself.clone();
        let wake = WakeLink::bind(
            &paths.wake_socket(),
            notify.clone(),
            move |conn| me.cast(SessionMessage::WakeConnected(conn)).is_ok(),
            move |violation| {
                let _ = me2.cast(SessionMessage::Outbox(OutboxReport::Violation(violation.to_string())));
            },
        )?;
        let me = myself.clone();
        let outbox = Outbox::spawn(ctx.clone(), session.clone(), paths.clone(), notify, move |report| {
            me.cast(SessionMessage::Outbox(report)).is_ok()
        });
        Ok(SessionState {
            ctx,
            session,
            paths,
            phase: Phase::Gone,
            container: None,
            wake,
            outbox,
            proxy: None,
            provider_error: None,
            permit: None,
            slot_wait: None,
            tier_wait: None,
            tier_ready: None,
            respawn: Respawn::NotWanted,
            queued_noted: false,
            image_failure_noted: false,
            hold: None,
            resumed: false,
            spawn_backoff: RestartPolicy::container_spawn().tracker(),
            next_spawn_at: None,
            last_activity: Instant::now(),
            newest_claim_seen: None,
            declared_timeout: None,
            outstanding: false,
            work_flag: None,
            last_workspace_check: None,
            timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // The slow fallback: stops by itself with the actor.
        myself.send_interval(state.ctx.config.fallback_check, || SessionMessage::Timer);
        myself.cast(SessionMessage::Resume)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionMessage,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMessage::Resume => state.resume(&myself).await?,
            SessionMessage::Enqueue { mut rows, reply } => {
                let owner = state.ctx.config.container_owner;
                let resumed = state.resumed;
                let max_text = state.ctx.config.routing.max_inbound_bytes;
                let result = blocking(&state.paths, move |p| {
                    if !resumed {
                        files::prepare(p, owner)?;
                    }
                    files::spill_long_texts(p, &mut rows, max_text)?;
                    files::write_inbound(p, &rows)
                })
                .await;
                let added = result.as_ref().map(|n| *n).unwrap_or(0);
                let busy = matches!(result, Err(SessionError::Busy(_)));
                let _ = reply.send(result);
                if busy {
                    // Only the container can hold a lock on inbound.db this long: a read
                    // transaction kept open on purpose (or a hung runner). Killing it releases
                    // the lock; the router's retry then stores the message.
                    state
                        .quarantine(format!(
                            "inbound.db: the container held a lock on it for more than {} ms",
                            nanoclaw_protocol::schema::HOST_WRITE_BUSY_TIMEOUT_MS
                        ))
                        .await?;
                }
                if added > 0 {
                    state.last_activity = SessionState::now();
                    state.set_work_flag(true).await?;
                    match &state.phase {
                        Phase::Gone => state.check(&myself).await?,
                        Phase::Ready { .. } => {
                            state.wake.wake();
                            debug!(session = %state.session.id, "hop: container woken");
                        }
                        _ => {}
                    }
                }
            }
            SessionMessage::Kill { reason, then } => {
                let action = state.phase.kill(StopCause::Requested(reason), then);
                state.act(&myself, action).await?;
            }
            SessionMessage::Restart { rows, reason, reply } => {
                let owner = state.ctx.config.container_owner;
                let resumed = state.resumed;
                let result = blocking(&state.paths, move |p| {
                    if !resumed {
                        files::prepare(p, owner)?;
                    }
                    files::write_inbound(p, &rows)
                })
                .await;
                let ok = result.is_ok();
                let _ = reply.send(result);
                if ok {
                    // Written before the kill: the replacement's first read takes the note; the
                    // old container never may (`on_wake`).
                    state.set_work_flag(true).await?;
                    let action = state.phase.kill(StopCause::Requested(reason), Then::Respawn);
                    state.act(&myself, action).await?;
                }
            }
            SessionMessage::WakeConnected(conn) => {
                let generation = conn.generation;
                if state.phase.hello(generation, SessionState::now().into_std()) {
                    state.wake.connect(conn);
                    // Input may have arrived between the runner's first read and this hello (no
                    // wake byte reached it then): one byte now, so it never waits for its fallback.
                    state.wake.wake();
                    state.last_activity = SessionState::now();
                    let sid = state.session.id.clone();
                    state.ctx.store.call(move |c| store::set_container_status(c, &sid, "running")).await?;
                    state.check(&myself).await?;
                }
            }
            SessionMessage::Outbox(OutboxReport::Violation(reason)) => state.quarantine(reason).await?,
            SessionMessage::Outbox(OutboxReport::Progress {
                finished,
                delivered,
                newest_claim_seen,
                declared_timeout,
                outstanding,
                notes,
            }) => {
                if notes > 0 {
                    // The runner may be waiting in a tool for one of these (an action's answer).
                    state.wake.wake();
                }
                if finished > 0 || delivered > 0 {
                    state.last_activity = SessionState::now();
                    state.spawn_backoff.reset();
                }
                state.newest_claim_seen = newest_claim_seen;
                state.declared_timeout = declared_timeout;
                state.outstanding = outstanding;
                state.check(&myself).await?;
            }
            SessionMessage::Timer => state.check(&myself).await?,
            SessionMessage::SlotGranted(permit) => {
                state.slot_wait = None;
                state.permit = Some(permit);
                // Spawns for pending work or a wanted respawn.
                state.check(&myself).await?;
                if matches!(state.phase, Phase::Gone) {
                    // Neither (any more), or spawning is backing off: pass the slot on.
                    state.permit = None;
                }
            }
            SessionMessage::TierReady { tier, result } => {
                state.tier_wait = None;
                match result {
                    Ok(()) => {
                        state.tier_ready = Some(tier);
                        state.image_failure_noted = false;
                    }
                    Err(e) => {
                        // No debootstrap, not root, a failed build: retried with the spawn
                        // backoff (no slot is held while ensuring, so none goes back).
                        let delay = match state.spawn_backoff.on_failure() {
                            RestartDecision::RestartAfter(d) => d,
                            RestartDecision::GiveUp { .. } => RestartPolicy::container_spawn().max_delay,
                        };
                        warn!(session = %state.session.id, tier = tier.as_str(), error = %e, ?delay, "agent image unavailable");
                        state.next_spawn_at = Some(SessionState::now() + delay);
                        // The user hears it once (messages are kept: a later try may work, e.g.
                        // after `apt-get install debootstrap`); the log has every try.
                        if !state.image_failure_noted {
                            state.image_failure_noted = true;
                            notices::tell_image_failed(&state.ctx, &state.session, tier, &e, delay).await;
                        }
                    }
                }
                // The spawn that asked for the image goes on through `check` (for pending work
                // or a wanted respawn; `spawn_container` re-checks phase, hold, backoff and the
                // workspace), which also arms the timer (the backoff after a failure).
                state.check(&myself).await?;
            }
            SessionMessage::Proxy(event) => {
                notices::tell_owner_proxy(&state.ctx, &state.session, &event).await
            }
            SessionMessage::RefreshDestinations => {
                let agent_group = state.session.agent_group_id.clone();
                let destinations =
                    state.ctx.store.call(move |c| store::destinations_of(c, &agent_group)).await?;
                let routing = routing_of(&state.session);
                if let Err(e) =
                    blocking(&state.paths, move |p| files::project(p, &destinations, &routing)).await
                {
                    // Not fatal: the next container start projects them again.
                    warn!(session = %state.session.id, error = %e, "destinations not refreshed");
                }
            }
            SessionMessage::Status(reply) => {
                let pending =
                    blocking(&state.paths, files::pending_work).await.map(|w| w.pending).unwrap_or(-1);
                let _ = reply.send(SessionStatus {
                    session_id: state.session.id.clone(),
                    agent_group_id: state.session.agent_group_id.clone(),
                    container_generation: state.phase.generation(),
                    container_ready: state.phase.is_ready(),
                    pending,
                    hold: state.hold.clone(),
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
        let is_current = |id: ractor::ActorId| state.container.as_ref().is_some_and(|c| c.get_id() == id);
        match event {
            SupervisionEvent::ActorStarted(cell) if is_current(cell.get_id()) => state.phase.started(),
            SupervisionEvent::ActorTerminated(cell, boxed, reason) if is_current(cell.get_id()) => {
                let exit = boxed
                    .and_then(|mut b| b.take::<ContainerState>().ok())
                    .and_then(|s| s.exit().cloned())
                    .unwrap_or_else(|| ContainerExit::Lost(reason.unwrap_or_else(|| "stopped".into())));
                state.container_gone(&myself, exit).await?;
            }
            SupervisionEvent::ActorFailed(cell, err) if is_current(cell.get_id()) => {
                state.container_gone(&myself, ContainerExit::StartFailed(err.to_string())).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop the container gracefully (ractor would only kill its actor, leaving the container;
        // the registry entry and the sweeper cover the case where this is skipped).
        if let Some(actor) = state.container.take() {
            let grace = state.ctx.config.container_stop_grace + Duration::from_secs(10);
            actor.stop_and_wait(Some("session stopping".into()), Some(grace)).await.ok();
        }
        let sid = state.session.id.clone();
        let _ = state.ctx.store.call(move |c| store::set_container_status(c, &sid, "stopped")).await;
        Ok(())
    }
}
