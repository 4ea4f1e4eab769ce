//! Retries of transient provider failures, and the classification of failed answers.
//!
//! One [`super::Model::complete`] call makes up to 1 + [`RetryPolicy::max_retries`] attempts.
//! Between attempts it waits a jittered exponential delay from `backon` (at least
//! [`RetryPolicy::min_delay`]) or, when the answer said `retry-after: <seconds>`, exactly that;
//! all waits together stay within [`RetryPolicy::total`] (a wait that would pass it ends the
//! retries at once). Retried ([`Attempt::Retry`]): HTTP 429, 529 and other 5xx, a proxy that
//! cannot be reached or drops the connection before answering, an Anthropic `overloaded_error`
//! (or `api_error`, `rate_limit_error`) event and an OpenAI `error` chunk inside a `200` stream.
//! Everything else ends the call at once ([`Attempt::Fail`]). A retry restarts the whole call:
//! nothing of a failed attempt is kept.
//!
//! The loop is written out ([`Retrier`]) rather than backon's `Retryable::retry(..).adjust(..)`
//! because each attempt needs the caller's `&mut dyn EventSink`, which an `FnMut` returning a
//! future cannot lend (and an async closure's future cannot be proven `Send` for
//! `async_trait`); the delays are backon's `ExponentialBuilder`, and `retry-after` replaces
//! them exactly as `adjust` would. Waits use `tokio::time::sleep`, so tests run them under paused
//! time.

use super::ModelError;
use super::http::{Answer, HttpError};
use super::sse::keeping_alive;
use crate::provider::EventSink;
use backon::{BackoffBuilder, ExponentialBuilder};
use nanoclaw_protocol::proxy::{ProxyError, ProxyErrorKind};
use std::time::Duration;
use tracing::warn;

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Shortest wait before a retry (the first one; later ones double, plus jitter).
    pub min_delay: Duration,
    /// Longest computed wait.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// Most time spent waiting between attempts, in all.
    pub total: Duration,
}

impl Default for RetryPolicy {
    /// 1 s, doubling (≤ 20 s), 3 retries, ≤ 60 s of waiting.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
            max_retries: 3,
            total: Duration::from_secs(60),
        }
    }
}

/// The outcome of one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Transient: try again after the backoff (or `retry_after`, when the server named one).
    Retry {
        /// One line for the user if it is the last try.
        message: String,
        /// The server's `retry-after`.
        retry_after: Option<Duration>,
    },
    /// Final: the call fails with this error.
    Fail(ModelError),
}

impl From<ModelError> for Attempt {
    fn from(e: ModelError) -> Self {
        Attempt::Fail(e)
    }
}

impl From<HttpError> for Attempt {
    /// Connection failures before an answer are retried; a stalled or broken body, or a size
    /// cap, ends the call (a stall is worth a later retry of the turn, so it is
    /// [`ModelError::Retryable`]; the others are [`ModelError::Fatal`]).
    fn from(e: HttpError) -> Self {
        let message = e.to_string();
        match e {
            HttpError::Connect(_) => Attempt::Retry { message, retry_after: None },
            HttpError::FirstByte(_) | HttpError::Idle(_) => Attempt::Fail(ModelError::Retryable { message }),
            HttpError::Broken { .. } | HttpError::TooLarge | HttpError::RequestTooLarge(_) => {
                Attempt::Fail(ModelError::Fatal { message })
            }
        }
    }
}

/// The retry state of one call: after each failed attempt, [`Retrier::after`] waits and says
/// whether to try again.
///
/// ```ignore
/// let mut retrier = Retrier::new(&policy);
/// loop {
///     match attempt(retrier.attempt()).await {
///         Ok(reply) => return Ok(reply),
///         Err(failure) => retrier.after(failure, events).await?,
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Retrier {
    backoff: backon::ExponentialBackoff,
    waited: Duration,
    total: Duration,
    attempt: usize,
}

impl Retrier {
    /// Fresh state for one call under `policy`.
    pub fn new(policy: &RetryPolicy) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries)
            .build();
        Self { backoff, waited: Duration::ZERO, total: policy.total, attempt: 1 }
    }

    /// The number of the attempt about to run (1 for the first).
    pub fn attempt(&self) -> usize {
        self.attempt
    }

    /// Handles a failed attempt: waits and returns `Ok` when another attempt may run; returns
    /// the call's error when `failure` is final or the retries are spent
    /// ([`ModelError::Retryable`] with the last message).
    /// The wait keeps the heartbeat fresh through `events`.
    pub async fn after(&mut self, failure: Attempt, events: &mut dyn EventSink) -> Result<(), ModelError> {
        let (message, retry_after) = match failure {
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry { message, retry_after } => (message, retry_after),
        };
        // As backon's `adjust`: the server's retry-after replaces the computed delay, but only
        // while the backoff still allows a retry.
        match self.backoff.next().map(|computed| retry_after.unwrap_or(computed)) {
            Some(delay) if self.waited + delay <= self.total => {
                warn!(attempt = self.attempt, delay_ms = delay.as_millis() as u64, %message, "model call failed; retrying");
                keeping_alive(tokio::time::sleep(delay), events).await;
                self.waited += delay;
                self.attempt += 1;
                Ok(())
            }
            _ => Err(ModelError::Retryable { message }),
        }
    }
}

/// Most bytes of an error answer read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Classifies an answer whose status is not 200 (reads its body, at most 64 KiB):
///
/// - made by the proxy (header `x-nanoclaw-proxy`): 401 or `key_refused` (the proxy's 401/403
///   for a refused key) → [`ModelError::Auth`]; `upstream_unreachable` (the provider could not
///   be reached or did not answer in time: a reset connection, a network blip) →
///   [`Attempt::Retry`] like a 5xx of the provider's own; anything else (a path refusal is a 403
///   too, a spent budget a 429) → [`ModelError::Fatal`], not retried; all with the proxy's
///   message;
/// - 401/403 → [`ModelError::Auth`] "the provider refused the API key (HTTP 401)";
/// - 400 whose body speaks of the context length (`context_length_exceeded`,
///   `exceed_context_size_error`, "prompt is too long", "maximum context length") →
///   [`ModelError::ContextLength`] with the server's message;
/// - 429, 529, 5xx → [`Attempt::Retry`] with `retry-after`;
/// - anything else → [`ModelError::Fatal`] "the provider answered HTTP <status>: <message>".
pub async fn refusal(answer: Answer) -> Attempt {
    let status = answer.status.as_u16();
    let from_proxy = answer.from_proxy();
    let retry_after = answer.retry_after();
    let body = answer.text(ERROR_BODY_LIMIT).await.unwrap_or_default();
    if from_proxy {
        return Attempt::Fail(match serde_json::from_str::<ProxyError>(&body) {
            Ok(e) if status == 401 || e.error.kind == ProxyErrorKind::KeyRefused => {
                ModelError::Auth { message: e.error.message }
            }
            Ok(e) if e.error.kind == ProxyErrorKind::UpstreamUnreachable => {
                return Attempt::Retry { message: e.error.message, retry_after };
            }
            Ok(e) => ModelError::Fatal { message: e.error.message },
            Err(_) => ModelError::Fatal {
                message: format!(
                    "the credential proxy answered HTTP {status}: {}",
                    super::wire::clip(&body, 300)
                ),
            },
        });
    }
    let message = error_message(&body);
    match status {
        401 | 403 => Attempt::Fail(ModelError::Auth {
            message: format!("the provider refused the API key (HTTP {status})"),
        }),
        400 if is_context_length(&body) => Attempt::Fail(ModelError::ContextLength { message }),
        429 | 529 | 500..=599 => {
            Attempt::Retry { message: format!("the provider answered HTTP {status}: {message}"), retry_after }
        }
        _ => Attempt::Fail(ModelError::Fatal {
            message: format!("the provider answered HTTP {status}: {message}"),
        }),
    }
}

/// True when an error text says the prompt is over the model's context.
pub fn is_context_length(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["context_length_exceeded", "exceed_context_size_error", "prompt is too long", "maximum context length"]
        .iter()
        .any(|needle| lower.contains(needle))
}

/// The `error.message` of a provider's JSON error body (both APIs and llama.cpp use that
/// shape), else the body itself, clipped to 300 bytes.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_owned))
        .map(|m| super::wire::clip(&m, 300).to_owned())
        .unwrap_or_else(|| super::wire::clip(body.trim(), 300).to_owned())
}
