//! The `command` provider: a program in the image that speaks JSON lines (for users who wrap a
//! CLI agent).
//!
//! Each model call runs the provider's `command` (argv, no shell) as a child of the runner
//! (killed when the call ends or is dropped), writes one request line to its stdin and closes
//! it, then reads one JSON object per line from its stdout until a `result` or `error` line.
//!
//! Request (one line on stdin):
//!
//! ```json
//! {"type":"request","system":"…","messages":[…],"tools":[…],"max_output_tokens":4096,
//!  "temperature":null,"continuation":null}
//! ```
//!
//! `messages` are [`super::ChatMessage`]s as the transcript stores them (`{"role":"user",
//! "content":[{"type":"text","text":"…"}]}`, blocks `text`, `tool_call {id, name, arguments}`,
//! `tool_result {call_id, content, is_error}`), `tools` are [`super::ToolSpec`]s (`{name,
//! description, input_schema}`), `continuation` is what the program returned last time in this
//! runner (`null` at first and after a restart: the messages carry the whole conversation).
//!
//! Answer lines (stdout, each at most [`MAX_LINE_BYTES`]):
//!
//! | line | meaning |
//! |---|---|
//! | `{"type":"text","text":"…"}` | text of the answer (pieces are joined) |
//! | `{"type":"tool_call","id":"…","name":"…","arguments":{…}}` | a tool call |
//! | `{"type":"progress"}` | still working (refreshes the heartbeat) |
//! | `{"type":"result","stop":"end_turn"\|"tool_use"\|"max_tokens","usage":{"input_tokens":0,"output_tokens":0},"continuation":"…"}` | the end (all fields optional) |
//! | `{"type":"error","message":"…","retryable":false}` | the call failed |
//!
//! Unknown `type`s are skipped; a line that is not a JSON object, a line over the limit, no
//! line for [`IDLE_DEADLINE`], or an exit before `result` fail the call
//! ([`ModelError::Fatal`], quoting the end of stderr). `retryable: true` errors are retried like
//! HTTP ones ([`super::retry`]).

use super::retry::{Attempt, Retrier, RetryPolicy};
use super::sse::{Pulse, keeping_alive};
use super::{Block, Model, ModelError, ModelReply, ModelRequest, StopReason, ToolCall, Usage};
use crate::provider::{EventSink, ProviderEvent};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing::debug;

/// Longest stdout line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Longest silence on stdout between two lines.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(600);

/// Bytes of stderr kept (the end) for error messages.
const STDERR_TAIL: usize = 2048;

/// A provider of kind `command`.
#[derive(Debug)]
pub struct CommandModel {
    name: String,
    argv: Vec<String>,
    continuation: Option<String>,
    policy: RetryPolicy,
}

impl CommandModel {
    /// The provider `name` running `argv` (program first; must not be empty).
    pub fn new(name: &str, argv: Vec<String>) -> Self {
        Self::with_policy(name, argv, RetryPolicy::default())
    }

    /// Same with another retry policy (tests).
    pub fn with_policy(name: &str, argv: Vec<String>, policy: RetryPolicy) -> Self {
        Self { name: name.to_owned(), argv, continuation: None, policy }
    }

    async fn attempt(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, Attempt> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(fatal(format!("providers.{}.command is empty", self.name)));
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fatal(format!("cannot start the command {program:?}: {e}")))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = child.stderr.take().map(|err| tokio::spawn(keep_tail(err, stderr.clone())));
        let line = json!({
            "type": "request",
            "system": request.system,
            "messages": request.messages,
            "tools": request.tools,
            "max_output_tokens": request.max_output_tokens,
            "temperature": request.temperature.map(super::wire::temperature),
            "continuation": self.continuation,
        });
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut bytes = serde_json::to_vec(&line).expect("a JSON value serializes");
        bytes.push(b'\n');
        // A program that exits without reading its request is judged by its output below.
        if let Err(e) = stdin.write_all(&bytes).await {
            debug!(error = %e, "the command did not read its request");
        }
        drop(stdin);

        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut pulse = Pulse::default();
        let mut text = String::new();
        let mut blocks = Vec::new();
        loop {
            let line = match keeping_alive(
                tokio::time::timeout(IDLE_DEADLINE, read_line(&mut stdout)),
                events,
            )
            .await
            {
                Err(_) => {
                    return Err(Attempt::Fail(ModelError::Retryable {
                        message: format!("the command said nothing for {} s", IDLE_DEADLINE.as_secs()),
                    }));
                }
                Ok(Err(e)) => return Err(fatal(e)),
                Ok(Ok(None)) => {
                    let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    if let Some(task) = stderr_task {
                        // A grandchild may hold stderr open: do not wait for it long.
                        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
                    }
                    let tail = tail_text(&stderr);
                    return Err(fatal(format!("the command ended before its result ({status}){tail}")));
                }
                Ok(Ok(Some(line))) => line,
            };
            if line.trim().is_empty() {
                continue;
            }
            pulse.beat(events);
            let value: Value = serde_json::from_str(&line).map_err(|e| {
                fatal(format!(
                    "the command wrote a line that is not JSON ({e}): {:?}",
                    super::wire::clip(&line, 200)
                ))
            })?;
            let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
            match kind {
                "text" => text.push_str(value.get("text").and_then(Value::as_str).unwrap_or("")),
                "tool_call" => {
                    if !text.is_empty() {
                        blocks.push(Block::Text { text: std::mem::take(&mut text) });
                    }
                    let call: ToolCall = serde_json::from_value(value.clone())
                        .map_err(|e| fatal(format!("the command wrote a bad tool_call line: {e}")))?;
                    if !call.arguments.is_object() {
                        return Err(fatal(format!(
                            "tool call {:?}: the arguments are not a JSON object",
                            call.name
                        )));
                    }
                    blocks.push(Block::ToolCall(call));
                }
                "progress" => events.event(ProviderEvent::Activity),
                "error" => {
                    let message =
                        value.get("message").and_then(Value::as_str).unwrap_or("the command failed");
                    let message = format!("the command failed: {}", super::wire::clip(message, 300));
                    return Err(if value.get("retryable").and_then(Value::as_bool) == Some(true) {
                        Attempt::Retry { message, retry_after: None }
                    } else {
                        fatal(message)
                    });
                }
                "result" => {
                    if !text.is_empty() {
                        blocks.push(Block::Text { text: std::mem::take(&mut text) });
                    }
                    if let Some(c) = value.get("continuation").and_then(Value::as_str) {
                        self.continuation = Some(c.to_owned());
                    }
                    let has_calls = blocks.iter().any(|b| matches!(b, Block::ToolCall(_)));
                    let stop = match value.get("stop").and_then(Value::as_str) {
                        Some("end_turn") => StopReason::EndTurn,
                        Some("tool_use") => StopReason::ToolUse,
                        Some("max_tokens") => StopReason::MaxTokens,
                        Some(other) => StopReason::Other(other.to_owned()),
                        None if has_calls => StopReason::ToolUse,
                        None => StopReason::EndTurn,
                    };
                    let usage = Usage {
                        input_tokens: value
                            .pointer("/usage/input_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                        output_tokens: value
                            .pointer("/usage/output_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    };
                    return Ok(ModelReply { blocks, stop, usage });
                }
                other => debug!(line_type = other, "skipping a command line of unknown type"),
            }
        }
    }
}

#[async_trait]
impl Model for CommandModel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        let mut retrier = Retrier::new(&self.policy);
        loop {
            events.event(ProviderEvent::Progress {
                message: format!("{}: run {}", self.name, retrier.attempt()),
            });
            match self.attempt(request, events).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => retrier.after(failure, events).await?,
            }
        }
    }
}

fn fatal(message: String) -> Attempt {
    Attempt::Fail(ModelError::Fatal { message })
}

/// The next line (without its `\n`), `None` at the end; errors past [`MAX_LINE_BYTES`] or on
/// bytes that are not UTF-8.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(|e| format!("reading the command's output: {e}"))?;
        if buf.is_empty() {
            return if line.is_empty() { Ok(None) } else { to_text(line).map(Some) };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > MAX_LINE_BYTES + 1 {
            return Err(format!("the command wrote a line over {} KiB", MAX_LINE_BYTES / 1024));
        }
        if done {
            line.pop();
            return to_text(line).map(Some);
        }
    }
}

fn to_text(line: Vec<u8>) -> Result<String, String> {
    String::from_utf8(line).map_err(|_| "the command wrote a line that is not UTF-8".to_owned())
}

/// Reads `stream` to its end, keeping its last [`STDERR_TAIL`] bytes in `tail`.
async fn keep_tail(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(&buf[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
    }
}

/// `: stderr: <last line>` when the command wrote to stderr.
fn tail_text(tail: &Arc<Mutex<Vec<u8>>>) -> String {
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    let text = String::from_utf8_lossy(&tail);
    let text = text.trim();
    if text.is_empty() { String::new() } else { format!(": stderr: {}", text.lines().last().unwrap_or("")) }
}
