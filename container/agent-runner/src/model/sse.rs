//! Server-sent events over a provider's streamed answer.
//!
//! [`events`] turns the body chunks of [`super::http::Answer::into_stream`] into [`SseEvent`]s
//! with `eventsource-stream` (which handles `\r\n`, comments, multi-line `data:` and events split
//! across chunks). What the events mean is the provider's business (`openai.rs`,
//! `anthropic.rs`); the rules shared by both are here: a `data:` payload that is not JSON is a
//! [`ModelError::Fatal`] naming it ([`json`]), and progress is reported at most once a second
//! while events flow ([`Pulse`]) and every 15 s while nothing does ([`keeping_alive`]). Unknown
//! event names are skipped by the providers, never an error.

use super::ModelError;
use super::http::HttpError;
use crate::provider::{EventSink, ProviderEvent};
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Longest silence towards the heartbeat while a call waits (an answer's head, a slow chunk, a
/// retry's backoff, a command's next line): the host deems a claim silent for 60 s stuck.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Awaits `work`, reporting [`ProviderEvent::Activity`] to `events` every [`KEEPALIVE`]
/// meanwhile (`work` is never cancelled by it).
pub async fn keeping_alive<F: Future>(work: F, events: &mut dyn EventSink) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => events.event(ProviderEvent::Activity),
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name (`message` when the server gave none, as the SSE spec says).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why the event stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// The body failed (deadline, break, size cap).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The bytes are not an event stream (not UTF-8, or a line the SSE grammar refuses).
    #[error("the provider's event stream is malformed: {0}")]
    Malformed(String),
}

/// The events of `body`, in order; the stream ends after the first error.
pub fn events<S>(body: S) -> impl Stream<Item = Result<SseEvent, SseError>> + Send + Unpin
where
    S: Stream<Item = Result<Bytes, HttpError>> + Send + Unpin,
{
    let mut failed = false;
    body.eventsource()
        .take_while(move |item| {
            let go = !failed;
            failed |= item.is_err();
            std::future::ready(go)
        })
        .map(|item| match item {
            Ok(event) => Ok(SseEvent { event: event.event, data: event.data }),
            Err(EventStreamError::Transport(e)) => Err(SseError::Http(e)),
            Err(EventStreamError::Utf8(e)) => Err(SseError::Malformed(format!("not UTF-8: {e}"))),
            Err(EventStreamError::Parser(e)) => Err(SseError::Malformed(e.to_string())),
        })
}

/// The `data:` of `event` parsed as JSON.
///
/// Errors: [`ModelError::Fatal`] naming the event and quoting (at most 200 bytes of) the data.
pub fn json(event: &SseEvent) -> Result<serde_json::Value, ModelError> {
    serde_json::from_str(&event.data).map_err(|e| ModelError::Fatal {
        message: format!(
            "malformed event from the provider ({}): {e}: data {:?}",
            event.event,
            super::wire::clip(&event.data, 200)
        ),
    })
}

/// Reports [`ProviderEvent::Activity`] at most once per second while a stream runs, so the
/// heartbeat stays fresh without a file touch per token.
#[derive(Debug, Default)]
pub struct Pulse {
    last: Option<Instant>,
}

impl Pulse {
    /// Reports activity to `events` unless it did less than a second ago.
    pub fn beat(&mut self, events: &mut dyn EventSink) {
        let now = Instant::now();
        if self.last.is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1)) {
            self.last = Some(now);
            events.event(ProviderEvent::Activity);
        }
    }
}
