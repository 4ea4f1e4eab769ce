//! The `ChannelAdapter` port: one chat platform account (DESIGN §9).
//!
//! An adapter pushes platform messages into an [`InboundSink`] and acknowledges the platform only
//! after [`InboundSink::submit`] returned: by then the message is committed (and deduplicated) in
//! the central ledger (DESIGN §5 invariant 2). It delivers replies with
//! [`ChannelAdapter::deliver`], reporting whether a failure may be retried — a retryable error
//! promises the platform did **not** accept the message, which is what makes retries safe for
//! at-most-once delivery (invariant 3).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// A message from a platform, as an adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The adapter's channel type (`cli`, `telegram`, …).
    pub channel_type: String,
    /// The chat on the platform.
    pub platform_id: String,
    /// The thread, for platforms with threads.
    #[serde(default)]
    pub thread_id: Option<String>,
    /// The platform's id of this message; with `channel_type` the dedupe key.
    pub platform_message_id: String,
    /// The sender's platform handle (namespaced by the router as `<channel_type>:<handle>`
    /// unless it already contains `:`).
    #[serde(default)]
    pub sender_id: Option<String>,
    /// The sender's display name.
    #[serde(default)]
    pub sender_name: Option<String>,
    /// The text.
    pub text: String,
    /// The platform says the bot was mentioned (DMs count as mentions).
    #[serde(default)]
    pub is_mention: bool,
    /// The chat is a group chat.
    #[serde(default)]
    pub is_group: bool,
}

/// What the router did with a submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundAck {
    /// The ledger id (also the prefix of the `messages_in` ids).
    pub ledger_id: String,
    /// The event was seen before (same platform message id); nothing new was stored.
    pub duplicate: bool,
    /// Set when no agent took the message; the reason is recorded in `unregistered_senders`.
    pub dropped: Option<String>,
}

/// Why [`InboundSink::submit`] failed. The platform must not be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The channel actor is gone (the service is stopping or restarting the channel).
    #[error("channel is not accepting messages")]
    Closed,
    /// Routing failed; the message was not committed.
    #[error("routing failed: {0}")]
    Route(String),
}

/// One submission: the event and where its ack goes.
#[derive(Debug)]
pub struct Submission {
    /// The event.
    pub event: InboundEvent,
    /// Receives the routing result.
    pub ack: oneshot::Sender<Result<InboundAck, SubmitError>>,
}

/// Where an adapter sends what it receives. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InboundSink {
    tx: mpsc::Sender<Submission>,
    fail_tx: mpsc::UnboundedSender<String>,
    /// Unix ms of the last sign of life from the platform (an event or a keepalive); 0 = none.
    last_sign: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl InboundSink {
    /// Creates a sink and the receivers the channel actor drains.
    pub fn new(
        capacity: usize,
    ) -> (InboundSink, mpsc::Receiver<Submission>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (fail_tx, fail_rx) = mpsc::unbounded_channel();
        (InboundSink { tx, fail_tx, last_sign: Default::default() }, rx, fail_rx)
    }

    /// Submits an event and waits until it is committed to the ledger and routed.
    ///
    /// Errors: [`SubmitError::Closed`] when the channel is stopping, [`SubmitError::Route`] when
    /// the store failed. Either way the platform must not be acknowledged.
    pub async fn submit(&self, event: InboundEvent) -> Result<InboundAck, SubmitError> {
        self.alive();
        let (ack, rx) = oneshot::channel();
        self.tx.send(Submission { event, ack }).await.map_err(|_| SubmitError::Closed)?;
        rx.await.map_err(|_| SubmitError::Closed)?
    }

    /// Records a sign of life without an event (a platform keepalive or successful poll). An
    /// adapter with a [`ChannelAdapter::liveness_timeout`] must call this (or submit events) more
    /// often than that timeout, or it is considered dead and restarted.
    pub fn alive(&self) {
        self.last_sign.store(chrono::Utc::now().timestamp_millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The last sign of life, if any.
    pub fn last_sign_of_life(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.last_sign.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => chrono::DateTime::from_timestamp_millis(ms),
        }
    }

    /// Reports that the adapter lost its platform connection for good; the channel actor fails
    /// and its supervisor restarts it with backoff.
    pub fn fail(&self, reason: impl Into<String>) {
        let _ = self.fail_tx.send(reason.into());
    }
}

/// A reply to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The chat.
    pub platform_id: String,
    /// The thread.
    pub thread_id: Option<String>,
    /// The text (validated: non-empty, at most 64 KiB; adapters split to their platform limit).
    pub text: String,
    /// The platform id of the message this answers, when known.
    pub in_reply_to: Option<String>,
    /// The `messages_out` id (or a host id for host notes), for logs and idempotency keys.
    pub message_out_id: String,
}

/// A delivery failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What went wrong.
    pub message: String,
    /// The platform certainly did not accept the message and a later attempt may succeed.
    pub retryable: bool,
}

/// Progress notes about an inbound message (the CLI uses them to end a non-interactive turn;
/// chat platforms may map them to typing indicators or reactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The agent finished with this message; every reply it wrote so far was delivered.
    Processed {
        /// The chat.
        platform_id: String,
        /// The inbound platform message id.
        platform_message_id: String,
    },
    /// The message will not be answered.
    Failed {
        /// The chat.
        platform_id: String,
        /// The inbound platform message id.
        platform_message_id: String,
        /// Why, for the user.
        reason: String,
    },
}

/// Errors starting an adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(pub String);

/// A chat platform account.
#[async_trait]
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The channel type (`cli`, `telegram`, …): lowercase ASCII, digits, `-`, `_`.
    fn channel_type(&self) -> &str;

    /// Whether the platform has threads; when false the router drops thread ids.
    fn supports_threads(&self) -> bool;

    /// Starts receiving. Inbound messages go to `inbound` until [`ChannelAdapter::stop`].
    /// May be called again after a stop (a restart by the channel supervisor).
    async fn start(&self, inbound: InboundSink) -> Result<(), ChannelError>;

    /// Stops receiving and releases platform resources. Must be idempotent.
    async fn stop(&self);

    /// Delivers one message; returns the platform's message id when it gives one.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError>;

    /// A progress note about an inbound message. The default ignores it.
    async fn notice(&self, _notice: &Notice) {}

    /// How long the platform may stay silent (no event, no [`InboundSink::alive`]) before the
    /// connection is presumed dead while claiming to be up, and the channel is restarted
    /// (DESIGN §4; user-problems R3). `None` (the default): never presumed dead.
    fn liveness_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The connection state of a channel, as `ncl status` will show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// The adapter is started and receiving.
    Connected,
    /// It ended or went silent; a restart is scheduled.
    Reconnecting,
    /// Its last start failed; another attempt is scheduled.
    Failed,
}

/// Live health of one channel (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHealth {
    /// The channel type.
    pub channel_type: String,
    /// Connection state.
    pub state: ChannelState,
    /// When the state last changed.
    pub since: chrono::DateTime<chrono::Utc>,
    /// The last sign of life from the platform (an event or a keepalive).
    pub last_event: Option<chrono::DateTime<chrono::Utc>>,
    /// Restarts since the service started.
    pub restarts: u32,
    /// Why it last ended or failed.
    pub last_error: Option<String>,
}
