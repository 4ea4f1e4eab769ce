//! The host's own outbox: notes the host sends to chats itself (the refusal of an admin-only
//! command, the answer to a decision by reply), with the delivery rule of every session outbox (DESIGN §5
//! invariant 3). A note is a `host_outbox` row committed with the decision that caused it; this
//! task commits `sending` before each send and the outcome after it. At start, a note left
//! `sending` by a crash is sent again with the same key on an idempotent channel, and failed
//! (never sent twice) on the others. A note that answers a message (`in_reply_to`) is the host's
//! whole answer to it — no agent took the message — so its delivery is followed by the
//! message's `Processed` notice (a one-turn `nanoclaw chat` ends there).
//!
//! One task, woken by [`HostOutbox::poke`] and by a timer for the next retry; a slow fallback
//! pass ([`FALLBACK`]) covers a lost poke.

use crate::context::Channels;
use crate::ports::channel::{Delivery, DeliveryError, Notice, OutboundMessage};
use crate::store::{self, HostNote, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// The slow fallback pass.
pub const FALLBACK: Duration = Duration::from_secs(60);
/// Attempts of one note before it is failed.
pub const ATTEMPTS: i64 = 5;
/// Notes handled per pass.
const PAGE: usize = 64;

/// Handle to the host outbox task; dropping it stops the task.
pub struct HostOutbox {
    poke: Arc<Notify>,
    _task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for HostOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostOutbox")
    }
}

impl HostOutbox {
    /// Starts the task over `store`, delivering through `channels` (each send within
    /// `delivery_timeout`; retries after `backoff × 2^(attempt-1)`).
    pub fn spawn(store: Store, channels: Channels, delivery_timeout: Duration, backoff: Duration) -> Self {
        let poke = Arc::new(Notify::new());
        let worker = Worker {
            store,
            channels,
            delivery_timeout,
            backoff,
            poke: poke.clone(),
            retry_at: HashMap::new(),
        };
        Self { poke, _task: AbortOnDropHandle::new(tokio::spawn(worker.run())) }
    }

    /// The notification that asks for a pass (shared with the router).
    pub fn notifier(&self) -> Arc<Notify> {
        self.poke.clone()
    }
}

struct Worker {
    store: Store,
    channels: Channels,
    delivery_timeout: Duration,
    backoff: Duration,
    poke: Arc<Notify>,
    /// Notes waiting for a retry, and when.
    retry_at: HashMap<String, Instant>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "host outbox pass failed; will retry");
            }
            let next = self.retry_at.values().min().copied().unwrap_or_else(|| Instant::now() + FALLBACK);
            tokio::select! {
                _ = self.poke.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Notes left `sending` (by a crash, or a lost outcome commit: every send of this task ends
    /// with one before its pass ends): again (same key) where the channel deduplicates, else
    /// failed. A channel not running yet (the host is starting) is looked at again shortly.
    async fn settle_interrupted(&mut self) -> Result<(), store::StoreError> {
        let notes = self.store.call(|c| store::host_notes(c, "sending", PAGE)).await?;
        for note in notes {
            let Some(channel) = self.channels.for_channel_type(&note.channel_type) else {
                self.retry_at.insert(note.id.clone(), Instant::now() + Duration::from_secs(2));
                continue;
            };
            self.retry_at.remove(&note.id);
            let (status, error) = if channel.idempotent_sends() {
                ("pending", None)
            } else {
                ("failed", Some("delivery outcome unknown: the host stopped during the send; not re-sent"))
            };
            warn!(note = %note.id, status, "host note interrupted by a stop");
            let id = note.id.clone();
            self.store.call(move |c| store::host_note_status(c, &id, status, error)).await?;
        }
        Ok(())
    }

    async fn pass(&mut self) -> Result<(), store::StoreError> {
        self.settle_interrupted().await?;
        let notes = self.store.call(|c| store::host_notes(c, "pending", PAGE)).await?;
        let now = Instant::now();
        for note in notes {
            if self.retry_at.get(&note.id).is_some_and(|t| now < *t) {
                continue;
            }
            self.deliver(note).await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, note: HostNote) -> Result<(), store::StoreError> {
        let Some(channel) = self.channels.for_channel_type(&note.channel_type) else {
            // Not running (restarting): look again later without spending an attempt.
            self.retry_at.insert(note.id.clone(), Instant::now() + Duration::from_secs(2));
            return Ok(());
        };
        let id = note.id.clone();
        // The reservation is committed before the send (invariant 3).
        self.store.call(move |c| store::host_note_status(c, &id, "sending", None)).await?;
        let message = OutboundMessage {
            platform_id: note.platform_id.clone(),
            thread_id: note.thread_id.clone(),
            text: note.text.clone(),
            in_reply_to: note.in_reply_to.clone(),
            message_out_id: note.id.clone(),
        };
        let sent = channel.perform(Delivery::Message(message), self.delivery_timeout).await;
        // A note that answers a message is the host's whole answer to it (a decision, a refused
        // command: no agent took the message): the chat hears that the message is finished.
        if sent.is_ok()
            && let Some(answered) = &note.in_reply_to
        {
            channel.notice(Notice::Processed {
                platform_id: note.platform_id.clone(),
                platform_message_id: answered.clone(),
            });
        }
        let attempts = note.attempts + 1;
        let (status, error) = match &sent {
            Ok(_) => ("delivered", None),
            Err(e) if e.may_retry(channel.idempotent_sends()) && attempts < ATTEMPTS => {
                ("pending", Some(e.to_string()))
            }
            Err(e) => ("failed", Some(e.to_string())),
        };
        match status {
            "pending" => {
                let delay = self.backoff * 2u32.saturating_pow((attempts - 1).clamp(0, 16) as u32);
                self.retry_at.insert(note.id.clone(), Instant::now() + delay);
            }
            _ => {
                self.retry_at.remove(&note.id);
            }
        }
        if let Err(DeliveryError::Timeout | DeliveryError::OutcomeUnknown { .. }) = &sent
            && status == "failed"
        {
            warn!(note = %note.id, "host note may not have arrived (outcome unknown, channel not idempotent)");
        }
        debug!(note = %note.id, status, "host note");
        let id = note.id.clone();
        let error = error.clone();
        self.store.call(move |c| store::host_note_status(c, &id, status, error.as_deref())).await
    }
}
