//! `ApprovalSupervisor`: one [`ApprovalActor`] per open approval (DESIGN §4, §10).
//!
//! At start it restores every open row page by page (a cursor over the ids, so 10^5 rows never
//! load at once): each gets its actor back, which arms the remaining lifetime or expires the row
//! at once. A new request ([`ApprovalSupervisorMessage::Spawn`]) or a decision
//! ([`ApprovalSupervisorMessage::Decided`]) reaches the row's actor, started when it is not
//! running. An actor that fails is started again from its row after a pause, at most
//! [`MAX_RESTARTS`] times; then the row is failed with the reason, so no request waits forever
//! on an actor that keeps crashing.

use crate::approvals::actor::{ApprovalActor, ApprovalArgs, ApprovalDeps, ApprovalMessage};
use crate::store::{self, ApprovalStatus};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Restarts of one approval's actor before its row is failed.
pub const MAX_RESTARTS: u32 = 3;
/// Pause before a failed approval actor is started again.
const RESTART_PAUSE: Duration = Duration::from_millis(200);
/// Open rows read per page at start.
const RESTORE_PAGE: usize = 500;

/// The approval supervisor (configuration only).
pub struct ApprovalSupervisor;

/// Messages of [`ApprovalSupervisor`].
#[derive(Debug)]
pub enum ApprovalSupervisorMessage {
    /// Restore the open rows after `after` (the next page; sent to itself at start).
    Restore {
        /// The last id of the previous page.
        after: String,
    },
    /// A new open row: start its actor (nothing when it runs).
    Spawn(String),
    /// A decision was taken on this row: tell its actor, starting it when it is not running.
    Decided(String),
    /// How many approval actors are alive.
    Live(RpcReplyPort<usize>),
}

/// Private state.
pub struct ApprovalSupervisorState {
    deps: Arc<ApprovalDeps>,
    by_id: HashMap<String, ActorRef<ApprovalMessage>>,
    by_actor: HashMap<ActorId, String>,
    restarts: HashMap<String, u32>,
}

impl ApprovalSupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<ApprovalSupervisorMessage>, id: String) {
        if self.by_id.contains_key(&id) {
            return;
        }
        let args: ApprovalArgs = (id.clone(), self.deps.clone());
        match Actor::spawn_linked(None, ApprovalActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), id.clone());
                self.by_id.insert(id, actor);
            }
            Err(e) => warn!(approval = %id, error = %e, "approval actor did not start"),
        }
    }
}

impl Actor for ApprovalSupervisor {
    type Msg = ApprovalSupervisorMessage;
    type State = ApprovalSupervisorState;
    type Arguments = Arc<ApprovalDeps>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        deps: Arc<ApprovalDeps>,
    ) -> Result<ApprovalSupervisorState, ActorProcessingErr> {
        let _ = myself.cast(ApprovalSupervisorMessage::Restore { after: String::new() });
        Ok(ApprovalSupervisorState {
            deps,
            by_id: HashMap::new(),
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ApprovalSupervisorMessage,
        state: &mut ApprovalSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ApprovalSupervisorMessage::Restore { after } => {
                let a = after.clone();
                let page = state
                    .deps
                    .ctx
                    .store
                    .call(move |c| store::approvals_to_restore(c, &a, RESTORE_PAGE))
                    .await?;
                let page_len = page.len();
                let last = page.last().cloned();
                for id in page {
                    state.spawn(&myself, id).await;
                }
                match last {
                    // The next page after this one's messages: decisions queued meanwhile run
                    // between pages.
                    Some(last) if page_len == RESTORE_PAGE => {
                        let _ = myself.cast(ApprovalSupervisorMessage::Restore { after: last });
                    }
                    _ if !state.by_id.is_empty() && after.is_empty() => {
                        info!(approvals = state.by_id.len(), "open approvals restored")
                    }
                    _ => {}
                }
            }
            ApprovalSupervisorMessage::Spawn(id) => state.spawn(&myself, id).await,
            ApprovalSupervisorMessage::Decided(id) => match state.by_id.get(&id) {
                Some(actor) => {
                    let _ = actor.cast(ApprovalMessage::Decided);
                }
                None => state.spawn(&myself, id).await,
            },
            ApprovalSupervisorMessage::Live(reply) => {
                let _ = reply.send(state.by_id.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut ApprovalSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(id) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
        state.by_id.remove(&id);
        let Some(why) = failure else {
            state.restarts.remove(&id);
            return Ok(());
        };
        let n = state.restarts.entry(id.clone()).or_default();
        *n += 1;
        if *n > MAX_RESTARTS {
            warn!(approval = %id, error = %why, "approval actor keeps failing; the request is failed");
            state.restarts.remove(&id);
            let reason = format!("the host could not handle it: {why}");
            let (i, r) = (id.clone(), reason);
            let failed = state
                .deps
                .ctx
                .store
                .call(move |c| store::finish_approval(c, &i, ApprovalStatus::Failed, Some(&r)))
                .await;
            if let Err(e) = failed {
                warn!(approval = %id, error = %e, "the request could not be marked failed");
            }
            // Told like any other failure (the card, the agent), off this mailbox; a row that
            // cannot even be read (what crashed its actor) is left as it is.
            let deps = state.deps.clone();
            tokio::spawn(async move {
                if let Ok(Some(row)) = deps.ctx.store.call(move |c| store::approval(c, &id)).await {
                    deps.report(&row).await;
                }
            });
            return Ok(());
        }
        warn!(approval = %id, error = %why, restart = *n, "approval actor failed; restarting it from its row");
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESTART_PAUSE).await;
            let _ = me.cast(ApprovalSupervisorMessage::Spawn(id));
        });
        Ok(())
    }
}
