//! `ChannelActor`: one channel adapter, i.e. one chat platform account (DESIGN §4, §9).
//!
//! Spawned by the [`super::channel_supervisor::ChannelSupervisor`], one per account. `pre_start`
//! starts the adapter with an [`InboundSink`]; a routing task feeds each submission to the
//! [`Router`] in arrival order and returns the ack the adapter waits for before acknowledging
//! the platform. Deliveries and notices go through this actor's mailbox, one at a time, via a
//! [`ChannelHandle`].
//!
//! When it fails — the adapter reports a lost connection ([`InboundSink::fail`]), the platform
//! stays silent past the adapter's liveness timeout, or a handler panics — its supervisor
//! restarts it with backoff. Everything it runs (routing and failure tasks, the liveness timer,
//! the adapter's [`AdapterGuard`]) lives in its state and is released when the state drops, so a
//! failed channel frees its socket even though ractor skips `post_stop` after a failure.

pub use crate::handles::channel::{ChannelHandle, ChannelMessage};
use crate::ports::channel::{AdapterGuard, ChannelAdapter, InboundSink, SinkReceivers, SubmitError};
use crate::router::Router;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

/// Most submissions of one chat waiting for routing; more are refused with
/// [`SubmitError::Busy`] (the platform redelivers).
pub const CHAT_QUEUE: usize = 256;
/// Most submissions of one channel waiting for routing over all its chats.
pub const CHANNEL_QUEUE: usize = 4096;
/// Most submissions of one chat routed together ([`Router::route_batch`]).
pub const ROUTE_BATCH: usize = 32;

/// The submissions waiting per chat; a chat has an entry exactly while its worker runs.
#[derive(Default)]
struct ChatQueues {
    by_chat: std::collections::HashMap<String, std::collections::VecDeque<crate::ports::channel::Submission>>,
    total: usize,
}

impl ChatQueues {
    /// Queues `sub` for `chat`; true when the chat had no worker (the caller starts one).
    /// Errors (giving the submission back) when the chat's or the channel's queue is full.
    fn push(
        &mut self,
        chat: String,
        sub: crate::ports::channel::Submission,
    ) -> Result<bool, Box<(crate::ports::channel::Submission, String)>> {
        if self.total >= CHANNEL_QUEUE {
            return Err(Box::new((
                sub,
                format!("{CHANNEL_QUEUE} messages of this channel wait for routing"),
            )));
        }
        let queue = self.by_chat.entry(chat);
        let new = matches!(queue, std::collections::hash_map::Entry::Vacant(_));
        let queue = queue.or_default();
        if queue.len() >= CHAT_QUEUE {
            return Err(Box::new((sub, format!("{CHAT_QUEUE} messages of this chat wait for routing"))));
        }
        queue.push_back(sub);
        self.total += 1;
        Ok(new)
    }

    /// The next submissions of `chat`, at most `max`, in order; none (and the chat's entry
    /// removed, so the next push starts a worker) when it has none.
    fn pop_batch(&mut self, chat: &str, max: usize) -> Vec<crate::ports::channel::Submission> {
        let Some(queue) = self.by_chat.get_mut(chat) else { return vec![] };
        if queue.is_empty() {
            self.by_chat.remove(chat);
            return vec![];
        }
        let take = queue.len().min(max);
        self.total -= take;
        queue.drain(..take).collect()
    }
}

/// The channel actor (configuration only).
pub struct ChannelActor;

/// Arguments of [`ChannelActor`].
pub struct ChannelArgs {
    /// The adapter.
    pub adapter: Arc<dyn ChannelAdapter>,
    /// Where inbound messages go.
    pub router: Router,
    /// Where this channel's last sign of life is published (under its account).
    pub health: crate::context::ChannelHealthMap,
}

/// Private state. Field order is drop order: the adapter's resources go first, then the tasks.
pub struct ChannelState {
    /// What the adapter's start acquired; `None` once `post_stop` released it.
    run: Option<AdapterGuard>,
    adapter: Arc<dyn ChannelAdapter>,
    /// Feeds submissions to the router.
    _routing: AbortOnDropHandle<()>,
    /// Turns the adapter's [`InboundSink::fail`] into [`ChannelMessage::AdapterFailed`].
    _failures: AbortOnDropHandle<()>,
    /// The liveness timer, when the adapter has a liveness timeout.
    _liveness: Option<AbortOnDropHandle<()>>,
    /// The adapter's sink: its last sign of life.
    sink: InboundSink,
    health: crate::context::ChannelHealthMap,
    started: chrono::DateTime<chrono::Utc>,
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
        let (sink, receivers) = InboundSink::new(256);
        let SinkReceivers { mut submissions, failures: mut fail_rx, mut clicks } = receivers;
        let router = args.router;
        let (click_router, click_type) = (router.clone(), args.adapter.channel_type().to_string());
        let supports_threads = args.adapter.supports_threads();
        let (health, account) = (args.health.clone(), args.adapter.account().to_string());
        let routing = AbortOnDropHandle::new(tokio::spawn(async move {
            // Chats are routed concurrently, each chat's messages in order: a slow, full or
            // held session holds up only its own chat. Worker tasks live in the set and end
            // with this task (the set aborts them when dropped).
            let queues: Arc<parking_lot::Mutex<ChatQueues>> = Default::default();
            let mut workers = tokio::task::JoinSet::new();
            loop {
                let sub = tokio::select! {
                    sub = submissions.recv() => match sub {
                        Some(sub) => sub,
                        None => break,
                    },
                    Some(_) = workers.join_next(), if !workers.is_empty() => continue,
                };
                if let Some(h) = health.write().get_mut(&account) {
                    h.last_event = Some(chrono::Utc::now());
                }
                let mut sub = sub;
                if !supports_threads {
                    sub.event.thread_id = None;
                }
                if let Err(why) = sub.event.check() {
                    warn!(channel = %account, %why, "event refused at the adapter boundary");
                    if let Some(h) = health.write().get_mut(&account) {
                        h.rejected_events += 1;
                        h.last_rejection = Some(why.clone());
                    }
                    let _ = sub.ack.send(Err(SubmitError::Invalid(why)));
                    continue;
                }
                let chat = sub.event.platform_id.clone();
                let start_worker = match queues.lock().push(chat.clone(), sub) {
                    Ok(start) => start,
                    Err(refused) => {
                        let (sub, why) = *refused;
                        warn!(channel = %account, %chat, "{why}; message not taken (the platform redelivers it)");
                        let _ = sub.ack.send(Err(SubmitError::Busy(why)));
                        continue;
                    }
                };
                if start_worker {
                    let (queues, router) = (queues.clone(), router.clone());
                    workers.spawn(async move {
                        loop {
                            // What queued up for the chat is routed as one batch (in order); the
                            // lock is released before routing (a guard held across the await
                            // would block the dispatcher).
                            let subs = queues.lock().pop_batch(&chat, ROUTE_BATCH);
                            if subs.is_empty() {
                                break;
                            }
                            let (events, acks): (Vec<_>, Vec<_>) =
                                subs.into_iter().map(|s| (s.event, s.ack)).unzip();
                            let results = router.route_batch(events).await;
                            for (ack, result) in acks.into_iter().zip(results) {
                                let _ = ack.send(result.map_err(|e| SubmitError::Route(e.to_string())));
                            }
                        }
                    });
                }
            }
        }));
        let me = myself.clone();
        let failures = AbortOnDropHandle::new(tokio::spawn(async move {
            // Clicks are few and each is one store call: answered one at a time, in order; the
            // sink's bounded queue refuses a flood.
            let clicks = async move {
                while let Some(sub) = clicks.recv().await {
                    let answer = click_router.click(&click_type, sub.click).await;
                    let _ = sub.answer.send(answer.map_err(|e| SubmitError::Route(e.to_string())));
                }
            };
            let failed = async move {
                if let Some(reason) = fail_rx.recv().await {
                    let _ = me.cast(ChannelMessage::AdapterFailed(reason));
                }
            };
            tokio::join!(clicks, failed);
        }));
        // On error the tasks above drop (and abort) with this frame.
        let run = args.adapter.start(sink.clone()).await.map_err(|e| {
            ActorProcessingErr::from(format!("channel {}: start failed: {e}", args.adapter.account()))
        })?;
        info!(channel = args.adapter.account(), "channel started");
        let liveness = args.adapter.liveness_timeout().map(|timeout| {
            AbortOnDropHandle::new(myself.send_interval((timeout / 4).max(Duration::from_millis(10)), || {
                ChannelMessage::CheckLiveness
            }))
        });
        Ok(ChannelState {
            run: Some(run),
            adapter: args.adapter,
            _routing: routing,
            _failures: failures,
            _liveness: liveness,
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
        let account = state.adapter.account();
        match message {
            ChannelMessage::Deliver { message, reply } => {
                if reply.is_closed() {
                    // The caller timed out while this waited in the mailbox and has reported
                    // `Timeout`; sending now could only duplicate what it retries or report.
                    debug!(channel = account, row = %message.key(), "delivery abandoned by its caller; not sent");
                    return Ok(());
                }
                let result = message.run(state.adapter.as_ref()).await;
                let _ = reply.send(result);
            }
            ChannelMessage::Notice(notice) => state.adapter.notice(&notice).await,
            ChannelMessage::CheckLiveness => {
                let last = state.sink.last_sign_of_life();
                if let Some(h) = state.health.write().get_mut(account) {
                    h.last_event = last;
                }
                if let Some(timeout) = state.adapter.liveness_timeout() {
                    let silent =
                        (chrono::Utc::now() - last.unwrap_or(state.started)).to_std().unwrap_or_default();
                    if silent > timeout {
                        warn!(channel = account, ?silent, "channel silent while connected; restarting it");
                        return Err(format!("channel {account}: no sign of life for {silent:?}").into());
                    }
                }
            }
            ChannelMessage::AdapterFailed(reason) => {
                warn!(channel = account, %reason, "channel adapter failed");
                return Err(format!("channel {account}: {reason}").into());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        // The graceful part only; the guard (dropped here, or with the state after a failure)
        // releases the resources either way.
        state.adapter.stop().await;
        state.run = None;
        Ok(())
    }
}
