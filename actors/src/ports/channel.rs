//! The `ChannelAdapter` port: one chat platform account (DESIGN §9).
//!
//! An adapter pushes platform messages into an [`InboundSink`] and acknowledges the platform only
//! after [`InboundSink::submit`] returned: by then the message is committed (and deduplicated) in
//! the central ledger (DESIGN §5 invariant 2).
//!
//! It delivers replies with [`ChannelAdapter::deliver`]. Delivery is exactly once where the
//! platform allows it and never silently lost where it does not (DESIGN §5 invariant 3):
//! - an adapter whose [`ChannelAdapter::idempotent_sends`] is true promises that delivering the
//!   same [`OutboundMessage::message_out_id`] twice shows the message once, so any failure may
//!   be retried with the same key;
//! - elsewhere only a [`DeliveryError::NotSent`] with `retryable` may be retried: it promises the
//!   platform did **not** accept the message. [`DeliveryError::Timeout`] and
//!   [`DeliveryError::OutcomeUnknown`] mean it may have; retrying could show it twice.
//!
//! Besides text, an adapter may deliver files ([`ChannelAdapter::deliver_files`]) and cards
//! ([`ChannelAdapter::deliver_card`]), edit a message it sent ([`ChannelAdapter::edit`]), react
//! to a message ([`ChannelAdapter::react`]) and show that the agent is working
//! ([`Notice::Working`]). Platforms differ: each default says what the platform cannot do
//! ([`DeliveryError::Unsupported`], never retried) or degrades to text (a card). The same rule
//! holds for every kind; edits and reactions carry a key too, and setting the same text or
//! reaction twice shows once on every platform, so they are naturally idempotent.
//!
//! The rule for the session's outbox is [`DeliveryError::may_retry`]: retry `NotSent{retryable}`
//! freely; `Timeout` / `OutcomeUnknown` only on an idempotent channel (same key); otherwise mark
//! the row failed and tell the chat that a reply may be missing.
//!
//! Resources: [`ChannelAdapter::start`] returns an [`AdapterGuard`] owning everything the start
//! acquired (tasks, listeners, socket files, connections). The channel actor keeps it in its
//! state, so it is released when the actor ends in any way — also when a handler fails or panics
//! and ractor skips `post_stop`, where [`ChannelAdapter::stop`] is not called.

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
    /// The chat's display name, when the platform gives one (names the chat's messaging group
    /// and its destination when the router creates them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_name: Option<String>,
}

/// Longest id of an inbound event (`platform_id`, `platform_message_id`, `thread_id`,
/// `sender_id`), bytes.
pub const MAX_EVENT_ID_BYTES: usize = 512;
/// Longest display name of an inbound event (`sender_name`, `chat_name`), characters.
pub const MAX_EVENT_NAME_CHARS: usize = 256;

impl InboundEvent {
    /// Checks the event at the adapter boundary: ids non-empty (the optional ones when given),
    /// at most [`MAX_EVENT_ID_BYTES`], without control characters; names at most
    /// [`MAX_EVENT_NAME_CHARS`] without control characters. Errors with one line naming the
    /// field. The text is not checked here (newlines are text).
    pub fn check(&self) -> Result<(), String> {
        let shown = |v: &str| v.chars().take(40).flat_map(char::escape_default).collect::<String>();
        let ids = [
            ("channel_type", Some(&self.channel_type)),
            ("platform_id", Some(&self.platform_id)),
            ("platform_message_id", Some(&self.platform_message_id)),
            ("thread_id", self.thread_id.as_ref()),
            ("sender_id", self.sender_id.as_ref()),
        ];
        for (field, value) in ids {
            let Some(v) = value else { continue };
            if v.is_empty() || v.len() > MAX_EVENT_ID_BYTES || v.chars().any(char::is_control) {
                return Err(format!(
                    "{field}: 1-{MAX_EVENT_ID_BYTES} bytes without control characters (got {} bytes: \"{}\")",
                    v.len(),
                    shown(v)
                ));
            }
        }
        for (field, value) in [("sender_name", &self.sender_name), ("chat_name", &self.chat_name)] {
            if let Some(v) = value
                && (v.chars().count() > MAX_EVENT_NAME_CHARS || v.chars().any(char::is_control))
            {
                return Err(format!(
                    "{field}: at most {MAX_EVENT_NAME_CHARS} characters without control characters"
                ));
            }
        }
        Ok(())
    }
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
    /// The event breaks the rules of [`InboundEvent::check`] (the line names the field): never
    /// committed, counted in the channel's health (`rejected`).
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Too many messages of this chat (or of the channel) wait for routing; nothing was
    /// committed. The platform redelivers later (its message is not acknowledged).
    #[error("busy: {0}")]
    Busy(String),
}

/// One submission: the event and where its ack goes.
#[derive(Debug)]
pub struct Submission {
    /// The event.
    pub event: InboundEvent,
    /// Receives the routing result.
    pub ack: oneshot::Sender<Result<InboundAck, SubmitError>>,
}

/// A click handed to the channel actor, and where its answer goes.
#[derive(Debug)]
pub struct ClickSubmission {
    /// The click.
    pub click: Click,
    /// Receives the answer for the clicking user (one line: "approved", "not allowed", …).
    pub answer: oneshot::Sender<Result<String, SubmitError>>,
}

/// Most clicks waiting for the channel actor; more are refused [`SubmitError::Busy`].
pub const CLICK_QUEUE: usize = 64;

/// What the channel actor drains from an [`InboundSink`].
#[derive(Debug)]
pub struct SinkReceivers {
    /// Inbound events.
    pub submissions: mpsc::Receiver<Submission>,
    /// The adapter's report that it lost its platform ([`InboundSink::fail`]).
    pub failures: mpsc::Receiver<String>,
    /// Button clicks ([`InboundSink::click`]).
    pub clicks: mpsc::Receiver<ClickSubmission>,
}

/// Where an adapter sends what it receives. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InboundSink {
    tx: mpsc::Sender<Submission>,
    /// Capacity 1: the first reason wins, later ones coalesce into it (the actor fails once).
    fail_tx: mpsc::Sender<String>,
    /// Bounded ([`CLICK_QUEUE`]): a flood of clicks is refused, never queued without end.
    click_tx: mpsc::Sender<ClickSubmission>,
    /// Unix ms of the last sign of life from the platform (an event or a keepalive); 0 = none.
    last_sign: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl InboundSink {
    /// Creates a sink and the receivers the channel actor drains.
    /// `capacity` bounds the submissions waiting for the router.
    pub fn new(capacity: usize) -> (InboundSink, SinkReceivers) {
        let (tx, submissions) = mpsc::channel(capacity);
        let (fail_tx, failures) = mpsc::channel(1);
        let (click_tx, clicks) = mpsc::channel(CLICK_QUEUE);
        (
            InboundSink { tx, fail_tx, click_tx, last_sign: Default::default() },
            SinkReceivers { submissions, failures, clicks },
        )
    }

    /// Reports a click on a button of a [`ChoiceCard`] and waits for the answer to show the
    /// clicking user (one line). The click decides nothing by itself: the host checks the
    /// callback against the stored card and the user against the approvers.
    ///
    /// Errors: [`SubmitError::Closed`] when the channel is stopping, [`SubmitError::Busy`] when
    /// [`CLICK_QUEUE`] clicks wait already.
    pub async fn click(&self, click: Click) -> Result<String, SubmitError> {
        self.alive();
        let (answer, rx) = oneshot::channel();
        self.click_tx.try_send(ClickSubmission { click, answer }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SubmitError::Busy("too many clicks wait for an answer".into())
            }
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })?;
        rx.await.map_err(|_| SubmitError::Closed)?
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
    /// Only the first reason of one run is kept.
    pub fn fail(&self, reason: impl Into<String>) {
        let _ = self.fail_tx.try_send(reason.into());
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
    /// The `messages_out` id (or a host id for host notes): the idempotency key of the send
    /// ([`ChannelAdapter::idempotent_sends`]) and the key in logs.
    pub message_out_id: String,
}

/// One file to send, read by the host from the container's outbox (at most 50 MiB).
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundFile {
    /// The name the user sees (no `/`, not `.` or `..`).
    pub name: String,
    /// The content.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for OutboundFile {
    // The bytes are left out: a log line must not carry 50 MiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundFile").field("name", &self.name).field("bytes", &self.bytes.len()).finish()
    }
}

/// A link button of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkButton {
    /// The label.
    pub label: String,
    /// An `http` or `https` URL (validated).
    pub url: String,
}

/// A card: a title, a text and link buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCard {
    /// The title.
    pub title: String,
    /// The body text.
    pub text: String,
    /// The link buttons, at most 10.
    pub buttons: Vec<LinkButton>,
}

impl OutboundCard {
    /// The card as plain text (title, text, one `label: url` line per button), for platforms
    /// without cards.
    pub fn as_text(&self) -> String {
        let mut out = format!("{}\n{}", self.title, self.text);
        for b in &self.buttons {
            out.push_str(&format!("\n{}: {}", b.label, b.url));
        }
        out
    }
}

/// Longest callback data of a choice button, bytes: Telegram's `callback_data` limit, the
/// smallest of the platforms.
pub const MAX_CALLBACK_BYTES: usize = 64;

/// One option of a [`ChoiceCard`]: a button label and the data a click on it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceOption {
    /// The label.
    pub label: String,
    /// What a click returns ([`Click::callback`]): `nc:<approval id>:<option index>`, at most
    /// [`MAX_CALLBACK_BYTES`].
    pub callback: String,
}

/// A card that asks for a decision — an approval, or an agent's question — with one button per
/// option. Platforms without buttons show [`ChoiceCard::as_text`]: the options numbered, and how
/// to answer by a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceCard {
    /// The approval (or question) id the card is about.
    pub id: String,
    /// The title.
    pub title: String,
    /// The body: what is asked, cut to the platform's limit.
    pub text: String,
    /// The options, in order (2 to 10).
    pub options: Vec<ChoiceOption>,
    /// How to answer without buttons (`Reply approve <id> or deny <id>.`).
    pub reply_hint: String,
}

impl ChoiceCard {
    /// The card as plain text: title, body, the options numbered from 1, the reply hint.
    pub fn as_text(&self) -> String {
        let mut out = format!("{}\n{}", self.title, self.text);
        for (i, o) in self.options.iter().enumerate() {
            out.push_str(&format!("\n  {}. {}", i + 1, o.label));
        }
        if !self.reply_hint.is_empty() {
            out.push('\n');
            out.push_str(&self.reply_hint);
        }
        out
    }
}

/// A click on a button of a [`ChoiceCard`], as an adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The chat the card is in.
    pub platform_id: String,
    /// The clicking user's platform handle (namespaced like a sender id).
    pub user_id: String,
    /// The button's callback data, as the platform returned it (untrusted: it is parsed and
    /// checked against the stored card).
    pub callback: String,
}

/// A new text for a message the bot sent earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRequest {
    /// The chat.
    pub platform_id: String,
    /// The platform's id of the message to edit, as [`ChannelAdapter::deliver`] returned it.
    pub platform_message_id: String,
    /// The new text.
    pub text: String,
    /// The key of the edit (the edit row's key): logs, and dedupe where the platform keeps keys.
    pub message_out_id: String,
    /// The platform id of the message the edit row answers, when known (a client that shows
    /// only the answers to its own message uses it).
    pub in_reply_to: Option<String>,
}

/// A reaction to a message of the chat (received or sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionRequest {
    /// The chat.
    pub platform_id: String,
    /// The platform's id of the message reacted to.
    pub platform_message_id: String,
    /// The emoji.
    pub emoji: String,
    /// The key of the reaction row.
    pub message_out_id: String,
    /// The platform id of the message the reaction row answers, when known.
    pub in_reply_to: Option<String>,
}

/// One delivery of any kind, as the outbox hands it to a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A text message ([`ChannelAdapter::deliver`]).
    Message(OutboundMessage),
    /// Files with the message's text as caption (empty: none) ([`ChannelAdapter::deliver_files`]).
    Files {
        /// Chat, caption, reply-to and key.
        message: OutboundMessage,
        /// The files, 1 to 10.
        files: Vec<OutboundFile>,
    },
    /// A card; the message's text is unused ([`ChannelAdapter::deliver_card`]).
    Card {
        /// Chat, reply-to and key.
        message: OutboundMessage,
        /// The card.
        card: OutboundCard,
    },
    /// A card asking for a decision; the message's text is unused
    /// ([`ChannelAdapter::deliver_choice`]).
    Choice {
        /// Chat, thread and key.
        message: OutboundMessage,
        /// The card (boxed: the largest kind of delivery by far).
        card: Box<ChoiceCard>,
    },
    /// An edit ([`ChannelAdapter::edit`]).
    Edit(EditRequest),
    /// A reaction ([`ChannelAdapter::react`]).
    Reaction(ReactionRequest),
}

impl Delivery {
    /// The idempotency key, also the key in logs.
    pub fn key(&self) -> &str {
        match self {
            Delivery::Message(m)
            | Delivery::Files { message: m, .. }
            | Delivery::Card { message: m, .. }
            | Delivery::Choice { message: m, .. } => &m.message_out_id,
            Delivery::Edit(e) => &e.message_out_id,
            Delivery::Reaction(r) => &r.message_out_id,
        }
    }

    /// Runs it on `adapter`; returns the platform's message id of a new message, when given.
    pub async fn run(&self, adapter: &dyn ChannelAdapter) -> Result<Option<String>, DeliveryError> {
        match self {
            Delivery::Message(m) => adapter.deliver(m).await,
            Delivery::Files { message, files } => adapter.deliver_files(message, files).await,
            Delivery::Card { message, card } => adapter.deliver_card(message, card).await,
            Delivery::Choice { message, card } => adapter.deliver_choice(message, card).await,
            Delivery::Edit(e) => adapter.edit(e).await.map(|()| None),
            Delivery::Reaction(r) => adapter.react(r).await.map(|()| None),
        }
    }
}

/// A delivery failure, typed by what it says about the platform's state (see the module doc).
/// Display is one line; `NotSent` and `OutcomeUnknown` show their message as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The channel did not answer within the delivery timeout; the platform may have accepted
    /// the message.
    #[error("no answer from the channel within the delivery timeout")]
    Timeout,
    /// The platform certainly did not accept the message.
    #[error("{message}")]
    NotSent {
        /// What went wrong.
        message: String,
        /// A later attempt may succeed (rate limit, network down before sending, channel
        /// restarting); false for permanent errors (unknown chat, message rejected).
        retryable: bool,
    },
    /// The send was handed over but its result was lost (the channel actor failed mid-send, the
    /// connection dropped after the request was written); the platform may have accepted it.
    #[error("{message}")]
    OutcomeUnknown {
        /// What went wrong.
        message: String,
    },
    /// The platform (or this adapter) cannot do this at all: nothing was sent, and a retry
    /// never helps.
    #[error("channel {channel_type} cannot {operation}")]
    Unsupported {
        /// The channel type.
        channel_type: String,
        /// What it cannot do (`send files`, `edit messages`, `add reactions`).
        operation: &'static str,
    },
}

impl DeliveryError {
    /// A permanent failure: the platform did not accept the message and never will.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::NotSent { message: message.into(), retryable: false }
    }

    /// A transient failure before anything reached the platform.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::NotSent { message: message.into(), retryable: true }
    }

    /// The outbox rule (DESIGN §5 invariant 3): may the same message be sent again (with the same
    /// `message_out_id`) through a channel whose [`ChannelAdapter::idempotent_sends`] is
    /// `idempotent_sends`? `NotSent{retryable}` always; `Timeout` and `OutcomeUnknown` only when
    /// the channel is idempotent; a permanent `NotSent` never. When it returns false after a
    /// `Timeout` / `OutcomeUnknown`, mark the row failed and tell the chat a reply may be missing.
    pub fn may_retry(&self, idempotent_sends: bool) -> bool {
        match self {
            DeliveryError::NotSent { retryable, .. } => *retryable,
            DeliveryError::Unsupported { .. } => false,
            DeliveryError::Timeout | DeliveryError::OutcomeUnknown { .. } => idempotent_sends,
        }
    }

    /// True when the platform certainly did not accept the message.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(self, DeliveryError::NotSent { .. } | DeliveryError::Unsupported { .. })
    }

    /// The channel of `channel_type` cannot do `operation`.
    pub fn unsupported(channel_type: &str, operation: &'static str) -> Self {
        Self::Unsupported { channel_type: channel_type.to_string(), operation }
    }
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
    /// The agent is working on the chat's messages (a typing indicator). Advisory, coalesced by
    /// the host to at most one per second per chat; sent when the tool being run changes.
    Working {
        /// The chat.
        platform_id: String,
        /// The tool being run, if any (at most 64 bytes, no control characters).
        tool: Option<String>,
    },
}

/// Errors starting an adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(pub String);

/// Everything one run of an adapter acquired (tasks, listeners, socket files, connections),
/// released when dropped. Dropping must release synchronously what a restart needs again (a
/// socket path, a port): the channel actor drops it when it ends — also after a failure or a
/// panic, where [`ChannelAdapter::stop`] is not called — and its restart may follow at once.
#[must_use = "dropping the guard stops the adapter"]
pub struct AdapterGuard {
    /// Held only to be dropped.
    _resources: Box<dyn Send>,
}

impl AdapterGuard {
    /// A guard owning `resources`, whose `Drop` releases them (for example
    /// `tokio_util::task::AbortOnDropHandle`s, a listener, a socket-file remover).
    pub fn new(resources: impl Send + 'static) -> Self {
        Self { _resources: Box::new(resources) }
    }

    /// A guard for an adapter that holds nothing per run.
    pub fn none() -> Self {
        Self::new(())
    }
}

impl std::fmt::Debug for AdapterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdapterGuard")
    }
}

/// A chat platform account.
#[async_trait]
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The channel type (`cli`, `telegram`, …): lowercase ASCII, digits, `-`, `_`.
    fn channel_type(&self) -> &str;

    /// The account this adapter speaks as, unique among the service's adapters: the registry and
    /// the channel supervisor key channels by it. `<channel_type>:<account on the platform>`
    /// (`telegram:<bot username>`) when a platform may have several; the default, the channel
    /// type alone, fits platforms with one account per service (the CLI's is `cli`).
    fn account(&self) -> &str {
        self.channel_type()
    }

    /// Whether the platform has threads; when false the router drops thread ids.
    fn supports_threads(&self) -> bool;

    /// Whether delivery is idempotent by key: delivering the same
    /// [`OutboundMessage::message_out_id`] twice (even across restarts of the adapter) shows the
    /// message once. When true the outbox retries sends whose outcome is unknown
    /// ([`DeliveryError::may_retry`]); when false (the default) it never does. Only claim it when
    /// the platform dedupes by a key the adapter sends, or the adapter can look the key up.
    fn idempotent_sends(&self) -> bool {
        false
    }

    /// Starts receiving. Inbound messages go to `inbound` until the returned guard is dropped.
    /// May be called again after the guard of the previous run is dropped (a restart by the
    /// channel supervisor).
    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError>;

    /// A graceful stop before the guard is dropped (say goodbye to the platform, flush). Called
    /// only on a clean stop of the channel actor, so nothing may depend on it: what must be
    /// released belongs in the [`AdapterGuard`]. The default does nothing.
    async fn stop(&self) {}

    /// Delivers one message; returns the platform's message id when it gives one.
    ///
    /// Errors: see [`DeliveryError`]; return `NotSent` only when the platform certainly did not
    /// accept the message, `OutcomeUnknown` when the request may have reached it.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError>;

    /// Delivers files, with `message.text` as their caption (empty: none); returns the platform's
    /// id of the (first) message. The same rules as [`ChannelAdapter::deliver`], the same key.
    /// The default: [`DeliveryError::Unsupported`].
    async fn deliver_files(
        &self,
        _message: &OutboundMessage,
        _files: &[OutboundFile],
    ) -> Result<Option<String>, DeliveryError> {
        Err(DeliveryError::unsupported(self.channel_type(), "send files"))
    }

    /// Delivers a card (title, text, link buttons). The default sends
    /// [`OutboundCard::as_text`] through [`ChannelAdapter::deliver`] with the same key: a
    /// platform without buttons still shows the links.
    async fn deliver_card(
        &self,
        message: &OutboundMessage,
        card: &OutboundCard,
    ) -> Result<Option<String>, DeliveryError> {
        let text = OutboundMessage { text: card.as_text(), ..message.clone() };
        self.deliver(&text).await
    }

    /// Whether the platform shows [`ChoiceCard`] options as buttons whose clicks the adapter
    /// reports with [`InboundSink::click`]. The default: no (cards are text, answered by reply).
    fn supports_buttons(&self) -> bool {
        false
    }

    /// Delivers a card asking for a decision. The default sends [`ChoiceCard::as_text`] through
    /// [`ChannelAdapter::deliver`] with the same key: the options numbered, answered by a reply.
    async fn deliver_choice(
        &self,
        message: &OutboundMessage,
        card: &ChoiceCard,
    ) -> Result<Option<String>, DeliveryError> {
        let text = OutboundMessage { text: card.as_text(), ..message.clone() };
        self.deliver(&text).await
    }

    /// Replaces the text of a message this adapter delivered. The default:
    /// [`DeliveryError::Unsupported`].
    async fn edit(&self, _edit: &EditRequest) -> Result<(), DeliveryError> {
        Err(DeliveryError::unsupported(self.channel_type(), "edit messages"))
    }

    /// Adds a reaction to a message of the chat. The default: [`DeliveryError::Unsupported`].
    async fn react(&self, _reaction: &ReactionRequest) -> Result<(), DeliveryError> {
        Err(DeliveryError::unsupported(self.channel_type(), "add reactions"))
    }

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

/// Live health of one channel account (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHealth {
    /// The channel account ([`ChannelAdapter::account`]); the key of the health map.
    pub account: String,
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
    /// Events refused at the adapter boundary ([`InboundEvent::check`]) since the service
    /// started.
    #[serde(default)]
    pub rejected_events: u64,
    /// Why the last one was refused.
    #[serde(default)]
    pub last_rejection: Option<String>,
}
