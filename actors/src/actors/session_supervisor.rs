//! `SessionSupervisor`: spawns session actors on demand and restarts failed ones.
//!
//! Spawned by the root supervisor. It keeps one [`SessionActor`] per session id. A session actor
//! that stops when idle is forgotten; one that fails is forgotten and resumed after a backoff
//! ([`RestartPolicy::session`]: 1 s doubling to 60 s, with jitter) — its state lives in the DBs, so the replacement continues where it
//! left off. Stopping this actor stops every session actor gracefully (each stops its container).
//!
//! At its start (the host's, or its own restart) it resumes every session flagged with pending
//! work in the central store (`sessions.work_pending`): one indexed query, however many sessions
//! exist, and no session file is read here — each session actor reads its own files in its own
//! first message, under its own deadlines, so the sessions resume concurrently.

use super::session::{SessionActor, SessionArgs, SessionHandle, SessionMessage};
use crate::context::ServiceContext;
use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::store::{self, SessionInfo};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The session supervisor (configuration only).
pub struct SessionSupervisor;

/// Private state.
pub struct SessionSupervisorState {
    ctx: Arc<ServiceContext>,
    sessions: HashMap<String, ActorRef<SessionMessage>>,
    by_actor: HashMap<ActorId, String>,
    /// Resume backoff of failed sessions ([`RestartPolicy::session`]), dropped on a clean stop.
    failures: HashMap<String, RestartTracker>,
}

/// How often sessions flagged with pending work but without a live actor are resumed (besides
/// at start): a released session, or one whose resumption was lost, waits at most this long.
pub const RESUME_FLAGGED_EVERY: Duration = Duration::from_secs(60);

/// Messages of [`SessionSupervisor`].
pub enum SessionSupervisorMessage {
    /// Resume every active session flagged `work_pending` that has no live actor.
    ResumeFlagged,
    /// The live session actor of a session, spawned if needed.
    Get {
        /// The session.
        session: Box<SessionInfo>,
        /// Reply.
        reply: RpcReplyPort<Result<SessionHandle, SessionsError>>,
    },
    /// Spawn the actor of a session id if it is not live (recovery, restart after failure).
    Resume(String),
    /// Live session actors.
    List(RpcReplyPort<Vec<SessionHandle>>),
}

impl SessionSupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<SessionSupervisorMessage>,
        session: SessionInfo,
    ) -> Result<SessionHandle, SessionsError> {
        if let Some(a) = self.sessions.get(&session.id)
            && matches!(a.get_status(), ActorStatus::Running | ActorStatus::Starting | ActorStatus::Upgrading)
        {
            return Ok(SessionHandle::new(a.clone()));
        }
        let id = session.id.clone();
        let (actor, _) = Actor::spawn_linked(
            None,
            SessionActor,
            SessionArgs { ctx: self.ctx.clone(), session },
            myself.get_cell(),
        )
        .await
        .map_err(|e| SessionsError::Spawn(format!("session {id}: {e}")))?;
        self.by_actor.insert(actor.get_id(), id.clone());
        self.sessions.insert(id, actor.clone());
        Ok(SessionHandle::new(actor))
    }
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMessage;
    type State = SessionSupervisorState;
    type Arguments = Arc<ServiceContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<ServiceContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionSupervisorState {
            ctx,
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(SessionSupervisorMessage::ResumeFlagged)?;
        // Also picks up sessions released by an operator while the service runs.
        myself.send_interval(RESUME_FLAGGED_EVERY, || SessionSupervisorMessage::ResumeFlagged);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionSupervisorMessage::Get { session, reply } => {
                let result = state.spawn(&myself, *session).await;
                let _ = reply.send(result);
            }
            SessionSupervisorMessage::Resume(id) => {
                if state.sessions.contains_key(&id) {
                    return Ok(());
                }
                let sid = id.clone();
                match state.ctx.store.call(move |c| store::session_info(c, &sid)).await {
                    Ok(Some(info)) => {
                        if let Err(e) = state.spawn(&myself, info).await {
                            warn!(session = %id, error = %e, "resume failed");
                            schedule_resume(&myself, state, id);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(session = %id, error = %e, "resume: session lookup failed"),
                }
            }
            SessionSupervisorMessage::ResumeFlagged => {
                let ids = state.ctx.store.call(|c| store::sessions_with_work(c)).await?;
                let idle: Vec<String> = ids
                    .into_iter()
                    .filter(|id| !state.sessions.contains_key(id) && !state.failures.contains_key(id))
                    .collect();
                if !idle.is_empty() {
                    info!(sessions = idle.len(), "resuming sessions with pending work");
                }
                for id in idle {
                    myself.cast(SessionSupervisorMessage::Resume(id))?;
                }
            }
            SessionSupervisorMessage::List(reply) => {
                let _ = reply.send(state.sessions.values().cloned().map(SessionHandle::new).collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    if state.sessions.get(&id).is_some_and(|a| a.get_id() == cell.get_id()) {
                        state.sessions.remove(&id);
                    }
                    state.failures.remove(&id);
                    tracing::debug!(session = %id, reason = ?reason, "session actor stopped");
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    if state.sessions.get(&id).is_some_and(|a| a.get_id() == cell.get_id()) {
                        state.sessions.remove(&id);
                    }
                    warn!(session = %id, error = %err, "session actor failed; resuming after backoff");
                    // Its container slot (or queue place) went back when its state was dropped.
                    schedule_resume(&myself, state, id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let grace = state.ctx.config.container_stop_grace + Duration::from_secs(15);
        let stops = state
            .sessions
            .drain()
            .map(|(_, a)| async move { a.stop_and_wait(Some("shutdown".into()), Some(grace)).await });
        futures_util::future::join_all(stops).await;
        info!("sessions stopped");
        Ok(())
    }
}

fn schedule_resume(
    myself: &ActorRef<SessionSupervisorMessage>,
    state: &mut SessionSupervisorState,
    id: String,
) {
    let tracker = state.failures.entry(id.clone()).or_insert_with(|| RestartPolicy::session().tracker());
    // The session policy has no budget: a session keeps being resumed, ever more slowly.
    let delay = match tracker.on_failure() {
        RestartDecision::RestartAfter(d) => d,
        RestartDecision::GiveUp { .. } => RestartPolicy::session().max_delay,
    };
    myself.send_after(delay, move || SessionSupervisorMessage::Resume(id));
}

/// Why a session could not be reached. Display is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionsError {
    /// The session supervisor did not answer (it is restarting, or stopped).
    #[error("session supervisor: {0}")]
    Unavailable(String),
    /// The session actor could not be spawned.
    #[error("{0}")]
    Spawn(String),
}

/// Typed handle over the session supervisor. Clones share the supervisor they point at, and the
/// root supervisor points them at the replacement when it restarts the session supervisor
/// ([`SessionsHandle::replace`]): handles held by routers, channels and [`crate::Service`] stay
/// valid across restarts.
#[derive(Debug, Clone)]
pub struct SessionsHandle {
    actor: Arc<parking_lot::RwLock<ActorRef<SessionSupervisorMessage>>>,
}

impl SessionsHandle {
    /// Wraps the actor.
    pub fn new(actor: ActorRef<SessionSupervisorMessage>) -> Self {
        Self { actor: Arc::new(parking_lot::RwLock::new(actor)) }
    }

    /// Points this handle and all its clones at a new session supervisor.
    pub fn replace(&self, actor: ActorRef<SessionSupervisorMessage>) {
        *self.actor.write() = actor;
    }

    fn current(&self) -> ActorRef<SessionSupervisorMessage> {
        self.actor.read().clone()
    }

    /// The live session actor of `session`, spawned if needed (60 s timeout).
    pub async fn get(&self, session: SessionInfo) -> Result<SessionHandle, SessionsError> {
        ractor::call_t!(
            self.current(),
            |reply| SessionSupervisorMessage::Get { session: Box::new(session), reply },
            60_000
        )
        .map_err(|e| SessionsError::Unavailable(e.to_string()))?
    }

    /// Spawns the actor of a session id if it is not live.
    pub fn resume(&self, session_id: String) {
        let _ = self.current().cast(SessionSupervisorMessage::Resume(session_id));
    }

    /// Live session actors (5 s timeout).
    pub async fn list(&self) -> Result<Vec<SessionHandle>, SessionsError> {
        ractor::call_t!(self.current(), SessionSupervisorMessage::List, 5_000)
            .map_err(|e| SessionsError::Unavailable(e.to_string()))
    }
}
