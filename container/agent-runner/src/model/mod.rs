//! One call to a model: the provider-neutral conversation types and the [`Model`] trait.
//!
//! The tool loop (a turn: call the model, run the tools it asks for, call it again …) is built on
//! this trait; each provider kind (`echo`, `openai`, `anthropic`, `command`) implements one call.
//! The conversation is kept in these neutral types (they are also the transcript format on
//! disk), and each HTTP provider translates them to its API at the call. Retries of transient
//! failures (429, 529, 5xx, resets, overloaded events) happen inside [`Model::complete`]; the
//! errors it returns are the ones the loop must act on ([`ModelError`]).

pub mod anthropic;
pub mod command;
pub mod echo;
pub mod http;
pub mod openai;
pub mod retry;
pub mod sse;
pub(crate) mod wire;

use crate::provider::EventSink;
use async_trait::async_trait;
use nanoclaw_protocol::settings::{ProviderKind, RunnerProvider};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user (chat messages, and the host's notes).
    User,
    /// The model.
    Assistant,
    /// Results of tool calls, answering the assistant message before.
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said, in order.
    pub content: Vec<Block>,
}

/// A part of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// The model asks for a tool call.
    ToolCall(ToolCall),
    /// The result of a tool call.
    ToolResult {
        /// The [`ToolCall::id`] answered.
        call_id: String,
        /// The result (or the error) as text.
        content: String,
        /// The call failed; `content` says why.
        is_error: bool,
    },
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call (echo: `echo-<seq>-<n>`).
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments, a JSON object (parsed from the provider's assembled string).
    pub arguments: serde_json::Value,
}

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name (`send_message`, `mcp__<server>__<tool>`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments (an object schema).
    pub input_schema: serde_json::Value,
}

/// One model call.
#[derive(Debug, Clone, Copy)]
pub struct ModelRequest<'a> {
    /// The system prompt.
    pub system: &'a str,
    /// The conversation so far, oldest first; the last message is the user's or tool results.
    pub messages: &'a [ChatMessage],
    /// Tools offered.
    pub tools: &'a [ToolSpec],
    /// Most tokens of the answer.
    pub max_output_tokens: u32,
    /// Sampling temperature (`None`: the server's default).
    pub temperature: Option<f32>,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    /// Text and tool calls, in the order the model gave them.
    pub blocks: Vec<Block>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Tokens used.
    pub usage: Usage,
}

/// Why a model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A final answer.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit `max_output_tokens`.
    MaxTokens,
    /// Anything else the provider said (kept for logs).
    Other(String),
}

/// Tokens of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
}

/// A failed model call, by what the loop does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Still failing after the retries (rate limit, overload, 5xx, network): the turn fails
    /// with the reason and may be retried later.
    #[error("{message}")]
    Retryable {
        /// One line for the user.
        message: String,
    },
    /// The key was refused (401/403): the turn fails with a plain message naming the variable.
    #[error("{message}")]
    Auth {
        /// One line for the user.
        message: String,
    },
    /// The request is over the model's context: compact and retry once.
    #[error("{message}")]
    ContextLength {
        /// The server's words.
        message: String,
    },
    /// Anything else (malformed stream, truncated tool-call JSON, a body over 8 MiB, a proxy
    /// refusal): the turn fails with the reason, the container keeps serving.
    #[error("{message}")]
    Fatal {
        /// One line for the user.
        message: String,
    },
    /// The `echo` directive `!exit <code>`: the runner exits with that code (crash tests).
    #[error("exit {0} requested")]
    Exit(i32),
}

/// One model call at a time, for one provider.
#[async_trait]
pub trait Model: Send {
    /// The provider's name (the conversation key `continuation:<name>`).
    fn name(&self) -> &str;

    /// Calls the model once. `events` gets progress (each refreshes the heartbeat).
    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError>;
}

/// The model for `provider`, talking through the credential proxy at `proxy_socket`.
///
/// Errors (one line) when the kind is not available in this build.
pub fn for_settings(provider: &RunnerProvider, proxy_socket: &Path) -> Result<Box<dyn Model>, String> {
    match provider.kind {
        ProviderKind::Openai => Ok(Box::new(
            openai::OpenAi::new(&provider.name, wire::model_of(provider)?, proxy_socket)
                .with_max_tokens_field(provider.max_tokens_field),
        )),
        ProviderKind::Anthropic => {
            Ok(Box::new(anthropic::Anthropic::new(&provider.name, wire::model_of(provider)?, proxy_socket)))
        }
        ProviderKind::Command if provider.command.is_empty() => {
            Err(format!("providers.{}.command is empty", provider.name))
        }
        ProviderKind::Command => {
            Ok(Box::new(command::CommandModel::new(&provider.name, provider.command.clone())))
        }
        ProviderKind::Echo => Ok(Box::new(echo::EchoModel::new(&provider.name))),
    }
}
