//! `ChannelActor`: one channel adapter (DESIGN §4, §9).
//!
//! Spawned by the [`super::channel_supervisor::ChannelSupervisor`], one per adapter. `pre_start`
//! starts the adapter with an [`InboundSink`]; a routing task feeds each submission to the
//! [`Router`] in arrival order and returns the ack the adapter waits for before acknowledging
//! the platform. Deliveries and notices go through this actor's mailbox, one at a time. If the
//! adapter reports a lost connection ([`InboundSink::fail`]) the actor fails and its supervisor
//! restarts it with backoff.

use crate::ports::channel::{
    ChannelAdapter, DeliveryError, InboundSink, Notice, OutboundMessage, SubmitError,
};
use crate::router::Router;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The channel actor (configuration only).
pub struct ChannelActor;

/// Arguments of [`ChannelActor`].
pub struct ChannelArgs {
    /// The adapter.
    pub adapter: Arc<dyn ChannelAdapter>,
    /// Where inbound messages go.
    pub router: Router,
    /// Where this channel's last sign of life is published.
    pub health: crate::context::ChannelHealthMap,
}

/// Private state.
pub struct ChannelState {
    adapter: Arc<dyn ChannelAdapter>,
    routing: tokio::task::JoinHandle<()>,
    failures: tokio::task::JoinHandle<()>,
    /// The adapter's sink: its last sign of life.
    sink: InboundSink,
    health: crate::context::ChannelHealthMap,
    started: chrono::DateTime<chrono::Utc>,
}

/// Messages of [`ChannelActor`].
pub enum ChannelMessage {
    /// Deliver one message.
    Deliver {
        /// The message.
        message: OutboundMessage,
        /// The platform message id, or why not.
        reply: RpcReplyPort<Result<Option<String>, DeliveryError>>,
    },
    /// Pass a progress note to the adapter.
    Notice(Notice),
    /// The adapter lost its platform for good.
    AdapterFailed(String),
    /// Check the platform's sign of life against the adapter's liveness timeout.
    CheckLiveness,
}

/// Delivers through a channel actor with a timeout. A timeout is not retryable: the platform may
/// have accepted the message (at most once, DESIGN §5 invariant 3).
pub async fn deliver(
    channel: &ActorRef<ChannelMessage>,
    message: OutboundMessage,
    timeout: Duration,
) -> Result<Option<String>, DeliveryError> {
    let ms = timeout.as_millis().min(u64::MAX as u128) as u64;
    match ractor::call_t!(channel, |reply| ChannelMessage::Deliver { message, reply }, ms) {
        Ok(r) => r,
        Err(ractor::RactorErr::Timeout) => Err(DeliveryError {
            message: format!("no answer from the channel within {timeout:?}"),
            retryable: false,
        }),
        // The actor was gone before it took the message: nothing was sent.
        Err(e) => Err(DeliveryError { message: format!("channel unavailable: {e}"), retryable: true }),
    }
}

impl Actor for ChannelActor {
    type Msg = ChannelMessage;
    type State = ChannelState;
    type Arguments = ChannelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ChannelArgs,
    ) -> Result<ChannelState, ActorProcessingErr> {
        let (sink, mut submissions, mut fail_rx) = InboundSink::new(256);
        let adapter_sink = sink.clone();
        let router = args.router;
        let supports_threads = args.adapter.supports_threads();
        let (health, channel_type) = (args.health.clone(), args.adapter.channel_type().to_string());
        let routing = tokio::spawn(async move {
            while let Some(sub) = submissions.recv().await {
                if let Some(h) = health.write().get_mut(&channel_type) {
                    h.last_event = Some(chrono::Utc::now());
                }
                let mut event = sub.event;
                if !supports_threads {
                    event.thread_id = None;
                }
                let result = router.route(event).await.map_err(SubmitError::Route);
                let _ = sub.ack.send(result);
            }
        });
        let me = myself.clone();
        let failures = tokio::spawn(async move {
            if let Some(reason) = fail_rx.recv().await {
                let _ = me.cast(ChannelMessage::AdapterFailed(reason));
            }
        });
        if let Err(e) = args.adapter.start(adapter_sink).await {
            routing.abort();
            failures.abort();
            return Err(format!("channel {}: start failed: {e}", args.adapter.channel_type()).into());
        }
        info!(channel = args.adapter.channel_type(), "channel started");
        if let Some(timeout) = args.adapter.liveness_timeout() {
            myself.send_interval((timeout / 4).max(Duration::from_millis(10)), || {
                ChannelMessage::CheckLiveness
            });
        }
        Ok(ChannelState {
            adapter: args.adapter,
            routing,
            failures,
            sink,
            health: args.health,
            started: chrono::Utc::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: ChannelMessage,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChannelMessage::Deliver { message, reply } => {
                let result = state.adapter.deliver(&message).await;
                let _ = reply.send(result);
            }
            ChannelMessage::Notice(notice) => state.adapter.notice(&notice).await,
            ChannelMessage::CheckLiveness => {
                let last = state.sink.last_sign_of_life();
                if let Some(h) = state.health.write().get_mut(state.adapter.channel_type()) {
                    h.last_event = last;
                }
                if let Some(timeout) = state.adapter.liveness_timeout() {
                    let silent =
                        (chrono::Utc::now() - last.unwrap_or(state.started)).to_std().unwrap_or_default();
                    if silent > timeout {
                        warn!(
                            channel = state.adapter.channel_type(),
                            ?silent,
                            "channel silent while connected; restarting it"
                        );
                        return Err(format!(
                            "channel {}: no sign of life for {silent:?}",
                            state.adapter.channel_type()
                        )
                        .into());
                    }
                }
            }
            ChannelMessage::AdapterFailed(reason) => {
                warn!(channel = state.adapter.channel_type(), %reason, "channel adapter failed");
                return Err(format!("channel {}: {reason}", state.adapter.channel_type()).into());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        state.adapter.stop().await;
        state.routing.abort();
        state.failures.abort();
        Ok(())
    }
}
