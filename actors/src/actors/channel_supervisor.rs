//! `ChannelSupervisor`: one [`ChannelActor`] per adapter, restarted with exponential backoff and
//! jitter (1 s up to 5 min, DESIGN §4) when it fails or its start fails. Keeps the
//! [`crate::context::Channels`] registry that session actors deliver through.

use super::channel::{ChannelActor, ChannelArgs, ChannelMessage};
use crate::context::ServiceContext;
use crate::ports::channel::{ChannelAdapter, ChannelHealth, ChannelState};
use crate::router::Router;
use backon::BackoffBuilder;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

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
    by_actor: HashMap<ActorId, String>,
    backoff: HashMap<String, backon::ExponentialBackoff>,
}

/// Messages of [`ChannelSupervisor`].
#[derive(Debug)]
pub enum ChannelSupervisorMessage {
    /// (Re)start the channel of this type.
    Start(String),
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
}

impl ChannelSupervisorState {
    fn adapter(&self, channel_type: &str) -> Option<Arc<dyn ChannelAdapter>> {
        self.ctx.adapters.iter().find(|a| a.channel_type() == channel_type).cloned()
    }

    async fn start(&mut self, myself: &ActorRef<ChannelSupervisorMessage>, channel_type: &str) {
        let Some(adapter) = self.adapter(channel_type) else { return };
        let args =
            ChannelArgs { adapter, router: self.router.clone(), health: self.ctx.channel_health.clone() };
        match Actor::spawn_linked(None, ChannelActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), channel_type.to_string());
                self.ctx.channels.write().insert(channel_type.to_string(), actor);
                self.set_state(channel_type, ChannelState::Connected, None);
            }
            Err(e) => {
                warn!(channel = channel_type, error = %e, "channel start failed");
                self.set_state(channel_type, ChannelState::Failed, Some(e.to_string()));
                self.retry(myself, channel_type);
            }
        }
    }

    fn set_state(&self, channel_type: &str, state: ChannelState, error: Option<String>) {
        let mut health = self.ctx.channel_health.write();
        let h = health.entry(channel_type.to_string()).or_insert_with(|| ChannelHealth {
            channel_type: channel_type.to_string(),
            state,
            since: chrono::Utc::now(),
            last_event: None,
            restarts: 0,
            last_error: None,
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

    fn retry(&mut self, myself: &ActorRef<ChannelSupervisorMessage>, channel_type: &str) {
        let delay = self
            .backoff
            .entry(channel_type.to_string())
            .or_insert_with(backoff)
            .next()
            .unwrap_or(Duration::from_secs(300));
        info!(channel = channel_type, ?delay, "restarting channel after backoff");
        let ct = channel_type.to_string();
        myself.send_after(delay, move || ChannelSupervisorMessage::Start(ct));
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
        Ok(ChannelSupervisorState {
            ctx: args.ctx,
            router: args.router,
            by_actor: HashMap::new(),
            backoff: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let types: Vec<String> = state.ctx.adapters.iter().map(|a| a.channel_type().to_string()).collect();
        for t in types {
            state.start(&myself, &t).await;
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
            ChannelSupervisorMessage::Start(t) => {
                if !state.ctx.channels.read().contains_key(&t) {
                    state.start(&myself, &t).await;
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
        if let Some(t) = state.by_actor.remove(&cell.get_id()) {
            state.ctx.channels.write().remove(&t);
            warn!(channel = %t, reason = %why, "channel actor ended");
            state.set_state(&t, ChannelState::Reconnecting, Some(why));
            state.retry(&myself, &t);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let actors: Vec<ActorRef<ChannelMessage>> =
            state.ctx.channels.write().drain().map(|(_, a)| a).collect();
        for a in actors {
            a.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10))).await.ok();
        }
        Ok(())
    }
}
