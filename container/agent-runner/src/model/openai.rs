//! The `openai` provider: Chat Completions with streaming, through the credential proxy.
//!
//! Works against any compatible server (OpenAI, Ollama, vLLM, llama.cpp): `POST
//! /<provider>/chat/completions` (the provider's `base_url` ends in `/v1`) with `stream: true`,
//! `stream_options.include_usage`, `tools` as function specs. The answer is a stream of
//! `data: <chunk JSON>` events ending with `data: [DONE]`:
//!
//! - `choices[0].delta.content` pieces are joined into one text block;
//! - `choices[0].delta.tool_calls[]` pieces are assembled **by `index`** (parallel calls
//!   interleave), the id and name from the first piece that has them, `function.arguments`
//!   concatenated and parsed as JSON only at the end (a truncated object is a
//!   [`ModelError::Fatal`] naming the call);
//! - `finish_reason` gives the [`StopReason`] (`stop`, `tool_calls`, `length`);
//! - a final `choices: []` chunk carries `usage` (`prompt_tokens`, which include cached ones, and
//!   `completion_tokens`);
//! - a chunk with an `error` object inside the `200` stream is retried (a context-length error
//!   is not: [`ModelError::ContextLength`]); chunks of an unknown shape are logged and skipped.
//!
//! The neutral conversation becomes OpenAI messages: the system prompt first, user text as
//! `user`, assistant text and calls as one `assistant` message with `tool_calls`, every tool
//! result as its own `tool` message with `tool_call_id` (an error result is prefixed `error: `).

use super::http::ProxyClient;
use super::retry::{Attempt, RetryPolicy, is_context_length};
use super::sse::{self, SseEvent};
use super::{
    Block, ChatMessage, Model, ModelError, ModelReply, ModelRequest, Role, StopReason, ToolCall, Usage,
};
use crate::provider::EventSink;
use async_trait::async_trait;
use nanoclaw_protocol::settings::MaxTokensField;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use tracing::debug;

/// API path of a chat completion, relative to the provider's `base_url`.
pub const PATH: &str = "chat/completions";

/// A provider of kind `openai`.
#[derive(Debug)]
pub struct OpenAi {
    http: ProxyClient,
    model: String,
    policy: RetryPolicy,
    /// The request field of the token limit (the host chose it for this server).
    max_tokens_field: MaxTokensField,
}

impl OpenAi {
    /// The provider `name` asking for `model`, through the proxy socket at `proxy_socket`.
    pub fn new(name: &str, model: &str, proxy_socket: &Path) -> Self {
        Self::with_client(ProxyClient::new(proxy_socket, name), model, RetryPolicy::default())
    }

    /// Same with a given client and retry policy (tests).
    pub fn with_client(http: ProxyClient, model: &str, policy: RetryPolicy) -> Self {
        Self { http, model: model.to_owned(), policy, max_tokens_field: MaxTokensField::default() }
    }

    /// Sends the token limit as `field` (`max_tokens` unless told otherwise).
    pub fn with_max_tokens_field(mut self, field: MaxTokensField) -> Self {
        self.max_tokens_field = field;
        self
    }

    /// The JSON request body for `request`.
    pub fn request_body(&self, request: &ModelRequest<'_>) -> Value {
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": messages(request.system, request.messages),
        });
        body[self.max_tokens_field.as_str()] = json!(request.max_output_tokens);
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.input_schema,
                    }})
                })
                .collect();
        }
        if let Some(t) = request.temperature {
            body["temperature"] = super::wire::temperature(t);
        }
        body
    }
}

#[async_trait]
impl Model for OpenAi {
    fn name(&self) -> &str {
        self.http.provider()
    }

    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        super::wire::call::<Assembly>(
            &self.http,
            &self.policy,
            PATH,
            &[],
            &self.request_body(request),
            events,
        )
        .await
    }
}

/// The neutral conversation as OpenAI `messages`.
fn messages(system: &str, conversation: &[ChatMessage]) -> Vec<Value> {
    let mut out = Vec::new();
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in conversation {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for block in &message.content {
            match block {
                Block::Text { text: t } => text.push_str(t),
                Block::ToolCall(call) => calls.push(json!({
                    "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments.to_string()},
                })),
                Block::ToolResult { call_id, content, is_error } => {
                    let content = if *is_error { format!("error: {content}") } else { content.clone() };
                    results.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
                }
            }
        }
        match message.role {
            Role::Assistant => {
                if text.is_empty() && calls.is_empty() {
                    continue;
                }
                let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.into() }});
                if !calls.is_empty() {
                    m["tool_calls"] = calls.into();
                }
                out.push(m);
            }
            Role::User | Role::Tool => {
                out.extend(results);
                if !text.is_empty() {
                    out.push(json!({"role": "user", "content": text}));
                }
            }
        }
    }
    out
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct Partial {
    id: String,
    name: String,
    arguments: String,
}

/// What the stream said so far.
#[derive(Debug, Default)]
struct Assembly {
    text: String,
    calls: BTreeMap<u64, Partial>,
    finish: Option<String>,
    usage: Usage,
    done: bool,
}

impl super::wire::Assembler for Assembly {
    fn take(&mut self, event: &SseEvent) -> Result<bool, Attempt> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        self.apply(&sse::json(event)?)?;
        Ok(false)
    }

    fn finish(self) -> Result<ModelReply, Attempt> {
        self.reply()
    }
}

impl Assembly {
    fn apply(&mut self, chunk: &Value) -> Result<(), Attempt> {
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_owned();
            let message =
                format!("the provider reported an error mid-stream: {}", super::wire::clip(&message, 300));
            if is_context_length(&error.to_string()) {
                return Err(ModelError::ContextLength { message }.into());
            }
            return Err(Attempt::Retry { message, retry_after: None });
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.usage.output_tokens = usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            debug!(chunk = %super::wire::clip(&chunk.to_string(), 200), "skipping a chunk of unknown shape");
            return Ok(());
        };
        for choice in choices {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(reason.to_owned());
            }
            let Some(delta) = choice.get("delta") else { continue };
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                self.text.push_str(text);
            }
            let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) else { continue };
            for (position, call) in calls.iter().enumerate() {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
                let partial = self.calls.entry(index).or_default();
                // The id and name come once, in the call's first piece (some servers repeat them).
                if let Some(id) = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty())
                    && partial.id.is_empty()
                {
                    partial.id = id.to_owned();
                }
                let function = call.get("function");
                if let Some(name) =
                    function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty())
                    && partial.name.is_empty()
                {
                    partial.name = name.to_owned();
                }
                if let Some(piece) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                    partial.arguments.push_str(piece);
                }
            }
        }
        Ok(())
    }

    fn reply(self) -> Result<ModelReply, Attempt> {
        if !self.done && self.finish.is_none() {
            return Err(ModelError::Fatal {
                message:
                    "the provider's stream ended before the answer was complete (no finish_reason, no [DONE])"
                        .into(),
            }
            .into());
        }
        let mut blocks = Vec::new();
        if !self.text.is_empty() {
            blocks.push(Block::Text { text: self.text });
        }
        for (index, call) in self.calls {
            if call.name.is_empty() {
                return Err(ModelError::Fatal {
                    message: format!("tool call {index}: the provider gave no tool name"),
                }
                .into());
            }
            let arguments = super::wire::parse_arguments(index, &call.name, &call.arguments)?;
            let id = if call.id.is_empty() { format!("call_{index}") } else { call.id };
            blocks.push(Block::ToolCall(ToolCall { id, name: call.name, arguments }));
        }
        let has_calls = blocks.iter().any(|b| matches!(b, Block::ToolCall(_)));
        let stop = match self.finish.as_deref() {
            Some("stop") => StopReason::EndTurn,
            Some("tool_calls" | "function_call") => StopReason::ToolUse,
            Some("length") => StopReason::MaxTokens,
            Some(other) => StopReason::Other(other.to_owned()),
            None if has_calls => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        Ok(ModelReply { blocks, stop, usage: self.usage })
    }
}
