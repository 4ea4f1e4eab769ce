//! The `anthropic` provider: the Messages API with streaming, through the credential proxy.
//!
//! `POST /<provider>/v1/messages` (the provider's `base_url` has no `/v1`) with the header
//! `anthropic-version: 2023-06-01`, `stream: true`, the system prompt as `system`, `tools` as
//! `{name, description, input_schema}`. The answer is a stream of named events:
//!
//! - `message_start`: `message.usage` gives the prompt tokens: `input_tokens +
//!   cache_read_input_tokens + cache_creation_input_tokens`;
//! - `content_block_start` opens block `index`: `text` or `tool_use` (`id`, `name`); other block
//!   types (`thinking`, server tools, …) are logged and skipped;
//! - `content_block_delta`: `text_delta.text` is appended to a text block,
//!   `input_json_delta.partial_json` to a tool call's input, which is parsed as JSON only at the
//!   end (a truncated object is a [`ModelError::Fatal`] naming the call). The input in
//!   `content_block_start` is used only when no delta came (llama.cpp omits it);
//! - `message_delta`: `delta.stop_reason` → [`StopReason`], `usage.output_tokens`;
//! - `message_stop` ends the answer; `ping` and unknown events are skipped;
//! - `error`: `overloaded_error`, `api_error` and `rate_limit_error` are retried, others fail the
//!   call ([`ModelError::Fatal`], or [`ModelError::ContextLength`] when it says so).
//!
//! The neutral conversation becomes Anthropic messages: tool results are `tool_result` blocks of
//! a `user` message, and consecutive messages of the same API role are merged (so the results
//! of parallel calls go in one `user` message, as the API requires).

use super::http::ProxyClient;
use super::retry::{Attempt, RetryPolicy, is_context_length};
use super::sse::{self, SseEvent};
use super::{
    Block, ChatMessage, Model, ModelError, ModelReply, ModelRequest, Role, StopReason, ToolCall, Usage,
};
use crate::provider::EventSink;
use async_trait::async_trait;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use tracing::{debug, warn};

/// API path of a message, relative to the provider's `base_url`.
pub const PATH: &str = "v1/messages";

/// The `anthropic-version` header sent with every request.
pub const API_VERSION: &str = "2023-06-01";

/// A provider of kind `anthropic`.
#[derive(Debug)]
pub struct Anthropic {
    http: ProxyClient,
    model: String,
    policy: RetryPolicy,
}

impl Anthropic {
    /// The provider `name` asking for `model`, through the proxy socket at `proxy_socket`.
    pub fn new(name: &str, model: &str, proxy_socket: &Path) -> Self {
        Self::with_client(ProxyClient::new(proxy_socket, name), model, RetryPolicy::default())
    }

    /// Same with a given client and retry policy (tests).
    pub fn with_client(http: ProxyClient, model: &str, policy: RetryPolicy) -> Self {
        Self { http, model: model.to_owned(), policy }
    }

    /// The JSON request body for `request`.
    pub fn request_body(&self, request: &ModelRequest<'_>) -> Value {
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "max_tokens": request.max_output_tokens,
            "messages": messages(request.messages),
        });
        if !request.system.is_empty() {
            body["system"] = request.system.into();
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(
                    |t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}),
                )
                .collect();
        }
        if let Some(t) = request.temperature {
            body["temperature"] = super::wire::temperature(t);
        }
        body
    }
}

#[async_trait]
impl Model for Anthropic {
    fn name(&self) -> &str {
        self.http.provider()
    }

    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        let headers = [("anthropic-version", API_VERSION)];
        super::wire::call::<Assembly>(
            &self.http,
            &self.policy,
            PATH,
            &headers,
            &self.request_body(request),
            events,
        )
        .await
    }
}

/// The neutral conversation as Anthropic `messages` (same-role neighbours merged).
fn messages(conversation: &[ChatMessage]) -> Vec<Value> {
    let mut out: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in conversation {
        let role = match message.role {
            Role::Assistant => "assistant",
            Role::User | Role::Tool => "user",
        };
        let mut blocks: Vec<Value> = message
            .content
            .iter()
            .filter_map(|block| match block {
                Block::Text { text } if text.is_empty() => None,
                Block::Text { text } => Some(json!({"type": "text", "text": text})),
                Block::ToolCall(call) => {
                    Some(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}))
                }
                Block::ToolResult { call_id, content, is_error } => Some(
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
                ),
            })
            .collect();
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, content)) if *last == role => content.append(&mut blocks),
            _ => out.push((role, blocks)),
        }
    }
    out.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()
}

/// A content block being assembled.
#[derive(Debug)]
enum Partial {
    Text(String),
    Tool { id: String, name: String, json: String, start_input: Option<Value> },
    Skipped,
}

/// What the stream said so far.
#[derive(Debug, Default)]
struct Assembly {
    blocks: BTreeMap<u64, Partial>,
    stop: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl super::wire::Assembler for Assembly {
    fn take(&mut self, event: &SseEvent) -> Result<bool, Attempt> {
        if event.event == "ping" {
            return Ok(false);
        }
        self.apply(&event.event, &sse::json(event)?)?;
        Ok(self.done)
    }

    fn finish(self) -> Result<ModelReply, Attempt> {
        self.reply()
    }
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

impl Assembly {
    fn apply(&mut self, name: &str, data: &Value) -> Result<(), Attempt> {
        // The data's `type` names the event; the `event:` line is the fallback.
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(name);
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                self.input_tokens = u64_at(data, "/message/usage/input_tokens")
                    + u64_at(data, "/message/usage/cache_read_input_tokens")
                    + u64_at(data, "/message/usage/cache_creation_input_tokens");
                self.output_tokens = u64_at(data, "/message/usage/output_tokens");
            }
            "content_block_start" => {
                let block = data.get("content_block").cloned().unwrap_or(Value::Null);
                let partial = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        Partial::Text(block.get("text").and_then(Value::as_str).unwrap_or("").to_owned())
                    }
                    Some("tool_use") => Partial::Tool {
                        id: block.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                        name: block.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
                        json: String::new(),
                        start_input: block.get("input").cloned(),
                    },
                    other => {
                        debug!(block_type = ?other, index, "skipping a content block of unknown type");
                        Partial::Skipped
                    }
                };
                self.blocks.insert(index, partial);
            }
            "content_block_delta" => {
                let delta = data.get("delta").cloned().unwrap_or(Value::Null);
                let delta_type = delta.get("type").and_then(Value::as_str);
                match (self.blocks.get_mut(&index), delta_type) {
                    (Some(Partial::Text(text)), Some("text_delta")) => {
                        text.push_str(delta.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    (Some(Partial::Tool { json, .. }), Some("input_json_delta")) => {
                        json.push_str(delta.get("partial_json").and_then(Value::as_str).unwrap_or(""));
                    }
                    // A delta before its block start: open the block it implies.
                    (None, Some("text_delta")) => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or("").to_owned();
                        self.blocks.insert(index, Partial::Text(text));
                    }
                    (_, other) => debug!(delta_type = ?other, index, "skipping a delta of unknown type"),
                }
            }
            "content_block_stop" => {}
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(reason.to_owned());
                }
                if let Some(out) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.output_tokens = out;
                }
            }
            "message_stop" => self.done = true,
            "ping" => {}
            "error" => {
                let error_type = data.pointer("/error/type").and_then(Value::as_str).unwrap_or("error");
                let message = data.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
                let message = format!(
                    "the provider reported {error_type} mid-stream: {}",
                    super::wire::clip(message, 300)
                );
                return Err(match error_type {
                    "overloaded_error" | "api_error" | "rate_limit_error" => {
                        Attempt::Retry { message, retry_after: None }
                    }
                    _ if is_context_length(&data.to_string()) => ModelError::ContextLength { message }.into(),
                    _ => ModelError::Fatal { message }.into(),
                });
            }
            other => warn!(event = other, "skipping an event of unknown type"),
        }
        Ok(())
    }

    fn reply(self) -> Result<ModelReply, Attempt> {
        if !self.done && self.stop.is_none() {
            return Err(ModelError::Fatal {
                message: "the provider's stream ended before the answer was complete (no message_stop)"
                    .into(),
            }
            .into());
        }
        let mut blocks = Vec::new();
        for (index, partial) in self.blocks {
            match partial {
                Partial::Text(text) if text.is_empty() => {}
                Partial::Text(text) => blocks.push(Block::Text { text }),
                Partial::Tool { id, name, json, start_input } => {
                    if name.is_empty() {
                        return Err(ModelError::Fatal {
                            message: format!("tool call {index}: the provider gave no tool name"),
                        }
                        .into());
                    }
                    let arguments = match start_input {
                        Some(input) if json.trim().is_empty() => input,
                        _ => super::wire::parse_arguments(index, &name, &json)?,
                    };
                    let id = if id.is_empty() { format!("toolu_{index}") } else { id };
                    blocks.push(Block::ToolCall(ToolCall { id, name, arguments }));
                }
                Partial::Skipped => {}
            }
        }
        let has_calls = blocks.iter().any(|b| matches!(b, Block::ToolCall(_)));
        let stop = match self.stop.as_deref() {
            Some("end_turn" | "stop_sequence") => StopReason::EndTurn,
            Some("tool_use") => StopReason::ToolUse,
            Some("max_tokens") => StopReason::MaxTokens,
            Some(other) => StopReason::Other(other.to_owned()),
            None if has_calls => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        Ok(ModelReply {
            blocks,
            stop,
            usage: Usage { input_tokens: self.input_tokens, output_tokens: self.output_tokens },
        })
    }
}
