//! `Supervisor`: the root of the tree (DESIGN §4).
//!
//! `pre_start` spawns, in order: sweeper (whose first sweep removes orphaned containers of a
//! previous run without holding up the start), session supervisor, approval supervisor (which
//! restores open approvals; their cards wait for their channels), channel supervisor — channels
//! last, so no message arrives before sessions can take it. `post_start` routes ledger entries a crash left unrouted and resumes sessions with work.
//! A failed child is restarted after [`RestartPolicy::core_child`]: backoff, and a budget shared
//! by all core children (OTP's restart intensity) — more than 5 restarts in 60 s stop the root
//! (the service exits with an error rather than flapping). `post_stop` stops children in
//! the fixed order channels → sessions (each stopping its container) → approvals → sweeper.

use super::approval_supervisor::{ApprovalSupervisor, ApprovalSupervisorMessage};
use super::channel_supervisor::{ChannelSupervisor, ChannelSupervisorArgs, ChannelSupervisorMessage};
use super::session_supervisor::{SessionSupervisor, SessionSupervisorMessage, SessionsHandle};
use super::sweeper::{Sweeper, SweeperMessage};
use crate::approvals::ApprovalsHandle;
use crate::approvals::actor::ApprovalDeps;
use crate::context::ServiceContext;
use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::router::Router;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// The root supervisor (configuration only).
pub struct Supervisor;

/// Private state.
pub struct SupervisorState {
    ctx: Arc<ServiceContext>,
    router: Router,
    sweeper: ActorRef<SweeperMessage>,
    sessions: ActorRef<SessionSupervisorMessage>,
    /// Shared by every router: re-pointed when the session supervisor is restarted.
    sessions_handle: SessionsHandle,
    approvals: ActorRef<ApprovalSupervisorMessage>,
    /// Shared by the router and the sessions: re-pointed when the approval supervisor restarts.
    approvals_handle: ApprovalsHandle,
    approval_deps: Arc<ApprovalDeps>,
    channels: ActorRef<ChannelSupervisorMessage>,
    /// Restart pacing and budget of the core children together.
    restarts: RestartTracker,
    /// Deletes finished ledger keys past `routing.dedupe_retention`, hourly; ends with the state.
    _ledger_sweep: Option<tokio_util::task::AbortOnDropHandle<()>>,
    /// Delivers the host's own notes; stops with the state.
    _host_outbox: crate::host_outbox::HostOutbox,
}

/// How often finished ledger keys past their retention are deleted.
const LEDGER_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Ledger keys deleted per transaction of a sweep.
const LEDGER_SWEEP_BATCH: usize = 5_000;

/// Messages of [`Supervisor`].
pub enum SupervisorMessage {
    /// The router, for embedders that submit events directly.
    Router(ractor::RpcReplyPort<Router>),
    /// The current session supervisor.
    Sessions(ractor::RpcReplyPort<SessionsHandle>),
    /// Restart a core child by name (after backoff).
    Restart(&'static str),
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = Arc<ServiceContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<ServiceContext>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let cell = myself.get_cell();
        let (sweeper, _) = Actor::spawn_linked(None, Sweeper, ctx.clone(), cell.clone()).await?;
        let (sessions, _) = Actor::spawn_linked(None, SessionSupervisor, ctx.clone(), cell.clone()).await?;
        let sessions_handle = SessionsHandle::new(sessions.clone());
        let _ = ctx.sessions.set(sessions_handle.clone());
        let host_outbox = crate::host_outbox::HostOutbox::spawn(
            ctx.store.clone(),
            ctx.channels.clone(),
            ctx.config.delivery_timeout,
            ctx.config.delivery_backoff,
        );
        let approvals_handle = ApprovalsHandle::new(ctx.store.clone());
        let _ = ctx.approvals.set(approvals_handle.clone());
        let router = Router::new(ctx.store.clone(), sessions_handle.clone())
            .with_config(ctx.config.routing.clone())
            .with_host_outbox(host_outbox.notifier())
            .with_approvals(approvals_handle.clone(), ctx.config.approvals.clone())
            .with_disk_floor(ctx.config.data_dir.clone(), ctx.config.min_free_bytes);
        let approval_deps = Arc::new(ApprovalDeps {
            ctx: ctx.clone(),
            router: router.clone(),
            config: ctx.config.approvals.clone(),
        });
        let (approvals, _) =
            Actor::spawn_linked(None, ApprovalSupervisor, approval_deps.clone(), cell.clone()).await?;
        approvals_handle.replace(approvals.clone());
        let (channels, _) = Actor::spawn_linked(
            None,
            ChannelSupervisor,
            ChannelSupervisorArgs { ctx: ctx.clone(), router: router.clone() },
            cell,
        )
        .await?;
        Ok(SupervisorState {
            ctx,
            router,
            sweeper,
            sessions,
            sessions_handle,
            approvals,
            approvals_handle,
            approval_deps,
            channels,
            restarts: RestartPolicy::core_child().tracker(),
            _ledger_sweep: None,
            _host_outbox: host_outbox,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match state.router.recover().await {
            Ok(0) => {}
            Ok(n) => {
                info!(entries = n, "routed inbound messages a previous run had committed but not routed")
            }
            Err(e) => warn!(error = %e, "ledger recovery failed; will retry at next start"),
        }
        let router = state.router.clone();
        state._ledger_sweep = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(LEDGER_SWEEP_EVERY);
            loop {
                every.tick().await;
                match router.sweep_ledger(LEDGER_SWEEP_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => info!(keys = n, "deleted ledger keys past their retention"),
                    Err(e) => warn!(error = %e, "ledger sweep failed; next one in an hour"),
                }
                let before = chrono::Utc::now()
                    - chrono::Duration::from_std(crate::store::APPROVAL_RETENTION).expect("90 days fit");
                match router
                    .store()
                    .call(move |c| crate::store::sweep_approvals(c, before, LEDGER_SWEEP_BATCH))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => info!(approvals = n, "deleted decided approvals past their 90 days"),
                    Err(e) => warn!(error = %e, "approval sweep failed; next one in an hour"),
                }
            }
        })));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Router(reply) => {
                let _ = reply.send(state.router.clone());
            }
            SupervisorMessage::Sessions(reply) => {
                let _ = reply.send(state.sessions_handle.clone());
            }
            SupervisorMessage::Restart(which) => {
                let cell = myself.get_cell();
                let ctx = state.ctx.clone();
                match which {
                    "sweeper" => state.sweeper = Actor::spawn_linked(None, Sweeper, ctx, cell).await?.0,
                    "sessions" => {
                        state.sessions = Actor::spawn_linked(None, SessionSupervisor, ctx, cell).await?.0;
                        // Every router (the service's, the channels') shares this handle.
                        state.sessions_handle.replace(state.sessions.clone());
                    }
                    "approvals" => {
                        let deps = state.approval_deps.clone();
                        state.approvals = Actor::spawn_linked(None, ApprovalSupervisor, deps, cell).await?.0;
                        state.approvals_handle.replace(state.approvals.clone());
                    }
                    "channels" => {
                        let args = ChannelSupervisorArgs { ctx, router: state.router.clone() };
                        state.channels = Actor::spawn_linked(None, ChannelSupervisor, args, cell).await?.0;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why): (ActorCell, String) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let which = if id == state.sweeper.get_id() {
            "sweeper"
        } else if id == state.sessions.get_id() {
            "sessions"
        } else if id == state.approvals.get_id() {
            "approvals"
        } else if id == state.channels.get_id() {
            "channels"
        } else {
            return Ok(());
        };
        let delay = match state.restarts.on_failure() {
            RestartDecision::RestartAfter(delay) => delay,
            RestartDecision::GiveUp { failures, window } => {
                error!(child = which, reason = %why, failures, ?window, "restart budget exhausted; stopping the service");
                myself.stop(Some(format!("{which} keeps failing: {why}")));
                return Ok(());
            }
        };
        warn!(child = which, reason = %why, ?delay, "core actor ended; restarting");
        myself.send_after(delay, move || SupervisorMessage::Restart(which));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let grace = state.ctx.config.container_stop_grace + Duration::from_secs(20);
        state.channels.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(15))).await.ok();
        state.sessions.stop_and_wait(Some("shutdown".into()), Some(grace)).await.ok();
        state.approvals.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await.ok();
        state.sweeper.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await.ok();
        info!("supervisor stopped");
        Ok(())
    }
}
