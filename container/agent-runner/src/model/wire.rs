//! What the HTTP model implementations share: one call through the credential proxy with its
//! retries and its event-stream loop ([`call`], each API supplying an [`Assembler`]), and small
//! helpers (quoting, numbers, tool-call arguments).

use super::http::ProxyClient;
use super::retry::{Attempt, Retrier, RetryPolicy, refusal};
use super::sse::{self, Pulse, SseError, SseEvent, keeping_alive};
use super::{ModelError, ModelReply};
use crate::provider::{EventSink, ProviderEvent};
use bytes::Bytes;
use futures_util::StreamExt;
use nanoclaw_protocol::settings::RunnerProvider;

/// How one provider API turns the event stream of a `200` answer into a reply.
pub(crate) trait Assembler: Default + Send {
    /// Takes one server-sent event; `Ok(true)` once the answer is complete (the rest of the
    /// stream is not read). An `Err` ends the attempt (retried or not, as the [`Attempt`] says).
    fn take(&mut self, event: &SseEvent) -> Result<bool, Attempt>;

    /// The reply, when the stream ended or [`Assembler::take`] said it is complete; errors when
    /// the answer is unfinished.
    fn finish(self) -> Result<ModelReply, Attempt>;
}

/// One model call through the proxy: `POST /<provider>/<path>` with `headers` and `body`, the
/// streamed answer read by a fresh `A` per attempt, retried as `policy` allows (429, 529, 5xx,
/// resets, overloaded events; `retry-after` honoured). Reports progress and keep-alive activity
/// to `events` while it waits.
///
/// Errors: the last attempt's [`ModelError`] (a refusal, a fatal stream error, spent retries).
pub(crate) async fn call<A: Assembler>(
    http: &ProxyClient,
    policy: &RetryPolicy,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
    events: &mut dyn EventSink,
) -> Result<ModelReply, ModelError> {
    let body = Bytes::from(serde_json::to_vec(body).expect("a JSON value serializes"));
    let mut retrier = Retrier::new(policy);
    loop {
        match attempt::<A>(http, path, headers, body.clone(), retrier.attempt(), events).await {
            Ok(reply) => return Ok(reply),
            Err(failure) => retrier.after(failure, events).await?,
        }
    }
}

/// One try of [`call`].
async fn attempt<A: Assembler>(
    http: &ProxyClient,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    number: usize,
    events: &mut dyn EventSink,
) -> Result<ModelReply, Attempt> {
    events.event(ProviderEvent::Progress { message: format!("{}: request {number}", http.provider()) });
    let answer = keeping_alive(http.post_json(path, headers, body), events).await?;
    if answer.status != 200 {
        return Err(refusal(answer).await);
    }
    let mut stream = sse::events(answer.into_stream());
    let mut pulse = Pulse::default();
    let mut acc = A::default();
    while let Some(event) = keeping_alive(stream.next(), events).await {
        let event = match event {
            Ok(event) => event,
            Err(SseError::Http(e)) => return Err(e.into()),
            Err(e @ SseError::Malformed(_)) => {
                return Err(ModelError::Fatal { message: e.to_string() }.into());
            }
        };
        pulse.beat(events);
        if acc.take(&event)? {
            break;
        }
    }
    acc.finish()
}

/// The model id of an HTTP provider; errors (one line naming the setting) when unset.
pub(crate) fn model_of(provider: &RunnerProvider) -> Result<&str, String> {
    provider
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("providers.{}.model is not set", provider.name))
}

/// At most `max` bytes of `text`, cut at a character boundary (for messages quoting input).
pub(crate) fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A temperature as JSON with its short decimal form (`0.7`, not `0.699999988079071`).
pub(crate) fn temperature(t: f32) -> serde_json::Value {
    t.to_string().parse::<f64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null)
}

/// The assembled arguments of tool call `index` (`name`) as a JSON object; an empty string is
/// `{}`.
///
/// Errors: [`ModelError::Fatal`] naming the call when the text is not complete JSON (a
/// truncated stream) or not an object.
pub(crate) fn parse_arguments(index: u64, name: &str, text: &str) -> Result<serde_json::Value, ModelError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(ModelError::Fatal {
            message: format!(
                "tool call {index} ({name}): the arguments are not a JSON object: {}",
                clip(text, 200)
            ),
        }),
        Err(e) => Err(ModelError::Fatal {
            message: format!(
                "tool call {index} ({name}): the arguments are not complete JSON ({e}): {}",
                clip(text, 200)
            ),
        }),
    }
}
