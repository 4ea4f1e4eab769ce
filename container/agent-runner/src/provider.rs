//! The `Provider` port and the offline `echo` provider.
//!
//! A provider runs one turn: it gets the [`Turn`] (system context, prompt, structured messages,
//! the continuation of the previous turn), reports streaming [`ProviderEvent`]s as they happen —
//! each one refreshes the heartbeat, and `Init` persists the continuation at once so a crash
//! mid-turn can resume — and returns the final text, whose `<message to="…">` blocks become
//! replies. Errors say whether a retry may help ([`ProviderError::retryable`]) and whether the
//! continuation is unusable ([`ProviderError::session_invalid`]) — the shape real providers
//! (OpenAI-compatible, Anthropic, external command) need, following reference §9.

use crate::prompt::Turn;
use async_trait::async_trait;
use nanoclaw_protocol::content::TaskContent;
use nanoclaw_protocol::output::message_block;
use nanoclaw_protocol::rows::InboundKind;
use std::time::Duration;

/// A streaming event of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// The provider (re)opened its conversation; `continuation` resumes it next turn.
    Init {
        /// Opaque resume token (a conversation id, a turn counter, …).
        continuation: String,
    },
    /// Still working (no visible output yet).
    Activity,
    /// A progress note for logs.
    Progress {
        /// What is happening.
        message: String,
    },
    /// A tool call started; `declared_timeout_ms` extends stuck detection while it runs.
    ToolStarted {
        /// Tool name.
        name: String,
        /// How long the tool may legitimately take, in ms.
        declared_timeout_ms: Option<i64>,
    },
    /// The tool call ended.
    ToolFinished,
}

/// Receives a turn's events.
pub trait EventSink: Send {
    /// Called for every event, in order.
    fn event(&mut self, event: ProviderEvent);
}

/// The end of a successful turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutput {
    /// The final text; its message blocks are the replies.
    pub text: String,
    /// Continuation to store for the next turn (`None` keeps the stored one).
    pub continuation: Option<String>,
}

/// A failed turn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// One line for logs and for the user.
    pub message: String,
    /// A later retry of the same turn may succeed (rate limit, overload, network).
    pub retryable: bool,
    /// The continuation is unusable and must be dropped (the next turn starts fresh).
    pub session_invalid: bool,
}

/// What the runner does on a directive that ends the process (used by tests of crash handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRequest(pub i32);

/// A model (or stand-in) that answers turns.
#[async_trait]
pub trait Provider: Send {
    /// Name, used in the continuation key `continuation:<name>`.
    fn name(&self) -> &str;

    /// Runs one turn. Long waits must be `.await`s so SIGTERM can interrupt them.
    async fn run_turn(&mut self, turn: &Turn, events: &mut dyn EventSink) -> Result<TurnOutput, TurnFailure>;
}

/// Why a turn did not produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnFailure {
    /// The provider failed.
    Error(ProviderError),
    /// The turn asked the runner to exit at once with this code, leaving its claims in place
    /// (a simulated crash: the echo provider's `!exit` directive).
    Exit(ExitRequest),
}

/// Builds the provider named in the configuration.
///
/// Errors with the list of known names for an unknown one.
pub fn by_name(name: &str) -> Result<Box<dyn Provider>, String> {
    match name {
        "echo" => Ok(Box::new(EchoProvider::default())),
        other => Err(format!("unknown provider {other:?} (known: echo)")),
    }
}

/// The offline default provider: deterministic, no model (DESIGN §8).
///
/// Each triggering chat message gets one reply `echo: <text>` addressed to the chat it came
/// from (with `reply_to` naming it); a task gets `echo: task: <prompt>`. Accumulated context (`trigger = 0`) gets none.
/// Directives at the start of a message make every host flow testable without a model:
///
/// | directive | effect |
/// |---|---|
/// | `!sleep <ms> …` | works for `ms` (heartbeat kept fresh), then replies |
/// | `!hang <ms> …` | blocks for `ms` without any event (no heartbeat), then replies |
/// | `!exit <code>` | the runner exits at once with `code`, mid-turn, claims left behind |
/// | `!error <text>` | the turn fails with a non-retryable error `text` |
/// | `!raw <text>` | `text` is the whole output, verbatim (tests the output syntax) |
/// | `!turns` | replies `echo: turns=<n>`, the number of turns in this conversation, which
/// |  | survives container restarts through the continuation |
#[derive(Debug, Default)]
pub struct EchoProvider {
    _private: (),
}

fn directive(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('!')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    Some((word, args.trim()))
}

fn leading_ms(args: &str) -> u64 {
    args.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0).min(3_600_000)
}

#[async_trait]
impl Provider for EchoProvider {
    fn name(&self) -> &str {
        "echo"
    }

    async fn run_turn(&mut self, turn: &Turn, events: &mut dyn EventSink) -> Result<TurnOutput, TurnFailure> {
        let turns: u64 = turn
            .continuation
            .as_deref()
            .and_then(|c| c.strip_prefix("turns:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
            + 1;
        let continuation = format!("turns:{turns}");
        events.event(ProviderEvent::Init { continuation: continuation.clone() });
        let mut out = String::new();
        for m in turn.messages.iter().filter(|m| m.trigger) {
            let text = match m.kind {
                InboundKind::Task => format!(
                    "task: {}",
                    serde_json::from_str::<TaskContent>(&m.text)
                        .map(|t| t.prompt)
                        .unwrap_or_else(|_| m.text.clone())
                ),
                _ => m.text.clone(),
            };
            match directive(&text) {
                Some(("sleep", args)) => {
                    let mut left = leading_ms(args);
                    while left > 0 {
                        let step = left.min(200);
                        tokio::time::sleep(Duration::from_millis(step)).await;
                        left -= step;
                        events.event(ProviderEvent::Activity);
                    }
                }
                Some(("hang", args)) => tokio::time::sleep(Duration::from_millis(leading_ms(args))).await,
                Some(("exit", args)) => {
                    let code = args.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    return Err(TurnFailure::Exit(ExitRequest(code)));
                }
                Some(("error", args)) => {
                    return Err(TurnFailure::Error(ProviderError {
                        message: if args.is_empty() { "echo error".into() } else { args.to_string() },
                        retryable: false,
                        session_invalid: false,
                    }));
                }
                Some(("raw", args)) => {
                    out.push_str(args);
                    continue;
                }
                Some(("turns", _)) => {
                    out.push_str(&message_block(&m.from, Some(m.seq), &format!("echo: turns={turns}")));
                    continue;
                }
                _ => {}
            }
            out.push_str(&message_block(&m.from, Some(m.seq), &format!("echo: {text}")));
        }
        Ok(TurnOutput { text: out, continuation: Some(continuation) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::PromptMessage;

    struct Collect(Vec<ProviderEvent>);
    impl EventSink for Collect {
        fn event(&mut self, e: ProviderEvent) {
            self.0.push(e);
        }
    }

    fn turn(texts: &[(&str, bool)], continuation: Option<&str>) -> Turn {
        Turn {
            system: String::new(),
            prompt: String::new(),
            messages: texts
                .iter()
                .enumerate()
                .map(|(i, (t, trig))| PromptMessage {
                    id: format!("m{i}"),
                    seq: 2 * (i as i64 + 1),
                    from: "cli".into(),
                    sender: None,
                    text: t.to_string(),
                    trigger: *trig,
                    kind: InboundKind::Chat,
                })
                .collect(),
            continuation: continuation.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn echoes_each_triggering_message_and_counts_turns() {
        let mut p = EchoProvider::default();
        let mut sink = Collect(vec![]);
        let out = p
            .run_turn(&turn(&[("context", false), ("hello", true)], Some("turns:4")), &mut sink)
            .await
            .unwrap();
        assert_eq!(out.text, "<message to=\"cli\" reply_to=\"4\">echo: hello</message>");
        assert_eq!(out.continuation.as_deref(), Some("turns:5"));
        assert_eq!(sink.0[0], ProviderEvent::Init { continuation: "turns:5".into() });
        let out = p.run_turn(&turn(&[("!turns", true)], Some("turns:5")), &mut sink).await.unwrap();
        assert!(out.text.contains("echo: turns=6"));
    }

    #[tokio::test]
    async fn directives_fail_exit_and_emit_raw() {
        let mut p = EchoProvider::default();
        let mut sink = Collect(vec![]);
        let e = p.run_turn(&turn(&[("!error boom", true)], None), &mut sink).await.unwrap_err();
        assert_eq!(
            e,
            TurnFailure::Error(ProviderError {
                message: "boom".into(),
                retryable: false,
                session_invalid: false
            })
        );
        let e = p.run_turn(&turn(&[("!exit 3", true)], None), &mut sink).await.unwrap_err();
        assert_eq!(e, TurnFailure::Exit(ExitRequest(3)));
        let out = p
            .run_turn(&turn(&[("!raw <message to=\"x\">y</message>", true)], None), &mut sink)
            .await
            .unwrap();
        assert_eq!(out.text, "<message to=\"x\">y</message>");
    }

    #[test]
    fn unknown_provider_is_a_clear_error() {
        assert!(by_name("gpt").err().expect("unknown provider is an error").contains("known: echo"));
    }
}
