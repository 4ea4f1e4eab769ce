//! `ChannelSupervisor`: one [`ChannelActor`] per channel account (DESIGN §4), restarted after
//! [`RestartPolicy::channel`] (1 s doubling to 5 min, jitter, never giving up) when it fails, ends
//! or its start fails. Keeps the [`crate::context::Channels`] registry that session actors deliver
//! through, and the channel health map, both keyed by account.
//!
//! Spawned by the root supervisor, last (no message arrives before sessions can take it). If it
//! fails, its children are killed with it (their adapters released by their state's guards) and
//! the root restarts it, which starts every channel again.

use super::channel::{ChannelActor, ChannelArgs, ChannelHandle};
use crate::context::ServiceContext;
use crate::ports::channel::{ChannelAdapter, ChannelHealth, ChannelState};
use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::router::Router;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// The channel supervisor (configuration only).
pub struct ChannelSupervisor;

/// Arguments of [`ChannelSupervisor`].
pub struct ChannelSupervisorArgs {
    /// Shared context (adapters, registry).
    pub ctx: Arc<ServiceContext>,
    /// Router for inbound messages.
    pub router: Router,
}

/// Private state.
pub struct ChannelSupervisorState {
    ctx: Arc<ServiceContext>,
    router: Router,
    /// The account of each live channel actor, to map supervision events back.
    by_actor: HashMap<ActorId, String>,
    /// Restart pacing per account.
    restarts: HashMap<String, RestartTracker>,
}

/// Messages of [`ChannelSupervisor`].
#[derive(Debug)]
pub enum ChannelSupervisorMessage {
    /// (Re)start the channel of this account, unless it is live.
    Start(String),
}

/// Errors of the channel configuration, found before any channel starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelConfigError {
    /// Two adapters claim one account.
    #[error("adapters: channel account {0} is given twice")]
    DuplicateAccount(String),
}

impl ChannelSupervisorState {
    fn adapter(&self, account: &str) -> Option<Arc<dyn ChannelAdapter>> {
        self.ctx.adapters.iter().find(|a| a.account() == account).cloned()
    }

    async fn start(&mut self, myself: &ActorRef<ChannelSupervisorMessage>, account: &str) {
        let Some(adapter) = self.adapter(account) else { return };
        let args = ChannelArgs {
            adapter: adapter.clone(),
            router: self.router.clone(),
            health: self.ctx.channel_health.clone(),
        };
        match Actor::spawn_linked(None, ChannelActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), account.to_string());
                self.ctx.channels.insert(ChannelHandle::new(actor, adapter.as_ref()));
                self.set_state(adapter.as_ref(), ChannelState::Connected, None);
            }
            Err(e) => {
                warn!(channel = account, error = %e, "channel start failed");
                self.set_state(adapter.as_ref(), ChannelState::Failed, Some(e.to_string()));
                self.retry(myself, account);
            }
        }
    }

    fn set_state(&self, adapter: &dyn ChannelAdapter, state: ChannelState, error: Option<String>) {
        let mut health = self.ctx.channel_health.write();
        let h = health.entry(adapter.account().to_string()).or_insert_with(|| ChannelHealth {
            account: adapter.account().to_string(),
            channel_type: adapter.channel_type().to_string(),
            state,
            since: chrono::Utc::now(),
            last_event: None,
            restarts: 0,
            last_error: None,
            rejected_events: 0,
            last_rejection: None,
        });
        if h.state != state {
            h.state = state;
            h.since = chrono::Utc::now();
        }
        if state == ChannelState::Reconnecting {
            h.restarts += 1;
        }
        if error.is_some() {
            h.last_error = error;
        }
    }

    fn retry(&mut self, myself: &ActorRef<ChannelSupervisorMessage>, account: &str) {
        let decision = self
            .restarts
            .entry(account.to_string())
            .or_insert_with(|| RestartPolicy::channel().tracker())
            .on_failure();
        match decision {
            RestartDecision::RestartAfter(delay) => {
                info!(channel = account, ?delay, "restarting channel after backoff");
                let account = account.to_string();
                myself.send_after(delay, move || ChannelSupervisorMessage::Start(account));
            }
            // The channel policy has no budget; a policy with one ends here.
            RestartDecision::GiveUp { failures, window } => {
                error!(channel = account, failures, ?window, "channel keeps failing; not restarting it");
            }
        }
    }
}

impl Actor for ChannelSupervisor {
    type Msg = ChannelSupervisorMessage;
    type State = ChannelSupervisorState;
    type Arguments = ChannelSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ChannelSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut seen = std::collections::HashSet::new();
        for a in &args.ctx.adapters {
            if !seen.insert(a.account()) {
                return Err(ChannelConfigError::DuplicateAccount(a.account().to_string()).into());
            }
        }
        // A predecessor that failed skipped its post_stop: its (killed) channels are still listed.
        args.ctx.channels.drain();
        Ok(ChannelSupervisorState {
            ctx: args.ctx,
            router: args.router,
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let accounts: Vec<String> = state.ctx.adapters.iter().map(|a| a.account().to_string()).collect();
        for account in accounts {
            state.start(&myself, &account).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChannelSupervisorMessage::Start(account) => {
                if !state.ctx.channels.contains(&account) {
                    state.start(&myself, &account).await;
                }
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
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            _ => return Ok(()),
        };
        if let Some(account) = state.by_actor.remove(&cell.get_id()) {
            state.ctx.channels.remove(&account, cell.get_id());
            warn!(channel = %account, reason = %why, "channel actor ended");
            if let Some(adapter) = state.adapter(&account) {
                state.set_state(adapter.as_ref(), ChannelState::Reconnecting, Some(why));
            }
            state.retry(&myself, &account);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for channel in state.ctx.channels.drain() {
            channel.actor().stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10))).await.ok();
        }
        Ok(())
    }
}
