//! The runner's settings for one container: `runner.json` in the session's host folder.
//!
//! The host writes this file before each container start (it is read-only for the container, like
//! everything in the host folder) from the agent group's container config, the session row and
//! the host config. It holds **no secret**: a provider's API key stays on the host, which injects
//! it in the credential proxy (`proxy.sock`, see [`crate::proxy`]); the runner only names the
//! provider. Unknown fields are refused, so a host and a runner of different versions fail loudly
//! instead of ignoring a setting.
//!
//! Without the file the runner uses [`RunnerSettings::echo_default`], the offline default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest `runner.json` the runner reads, in bytes.
pub const MAX_SETTINGS_BYTES: u64 = 256 * 1024;

/// Default of [`RunnerSettings::max_tool_rounds`]: model calls per turn before the turn is ended.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 32;

/// Everything the runner needs to know about its agent, besides the session DBs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerSettings {
    /// The model provider of this session (resolved by the host: session → group config →
    /// `agent.provider` → `echo`).
    pub provider: RunnerProvider,
    /// The image tier the container runs (tools that need a shell refuse on `minimal`).
    pub image_tier: ImageTier,
    /// Most model calls in one turn (the tool loop's bound).
    #[serde(default = "default_max_tool_rounds")]
    pub max_tool_rounds: u32,
    /// Which tools the model is offered.
    #[serde(default)]
    pub tools: ToolSelection,
    /// MCP servers to start with the runner, by name.
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerSpec>,
    /// Skills (folders under the read-only skills mount) whose `SKILL.md` goes into the prompt.
    #[serde(default)]
    pub skills: Vec<String>,
    /// IANA time zone of the user (`Europe/Berlin`), for the prompt's local time.
    pub timezone: String,
    /// The agent's display name.
    pub assistant_name: String,
    /// Hosts `web_fetch` may reach (the host enforces it; the runner only tells the model).
    #[serde(default)]
    pub egress_allow: Vec<String>,
}

fn default_max_tool_rounds() -> u32 {
    DEFAULT_MAX_TOOL_ROUNDS
}

impl RunnerSettings {
    /// The settings of a container started without `runner.json`: the offline `echo` provider on
    /// the `minimal` tier, UTC.
    pub fn echo_default(assistant_name: &str) -> Self {
        Self {
            provider: RunnerProvider::echo(),
            image_tier: ImageTier::Minimal,
            max_tool_rounds: DEFAULT_MAX_TOOL_ROUNDS,
            tools: ToolSelection::All,
            mcp_servers: BTreeMap::new(),
            skills: vec![],
            timezone: "UTC".into(),
            assistant_name: assistant_name.into(),
            egress_allow: vec![],
        }
    }
}

/// One provider as the runner sees it: what to call and how, never a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerProvider {
    /// The provider's name in the host config (`anthropic`, `local`, …): the first path segment
    /// of every proxy request and the key of the conversation (`continuation:<name>`).
    pub name: String,
    /// Which protocol it speaks.
    pub kind: ProviderKind,
    /// The model id sent in requests (`None` for `echo` and `command`).
    #[serde(default)]
    pub model: Option<String>,
    /// The model's context window in tokens; the conversation is compacted past 80 % of it.
    pub context_tokens: u32,
    /// Most tokens one answer may have.
    pub max_output_tokens: u32,
    /// Sampling temperature (`None`: the server's default).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// For [`ProviderKind::Command`]: the program and its arguments, run inside the container.
    #[serde(default)]
    pub command: Vec<String>,
    /// For [`ProviderKind::Openai`]: the request field that carries `max_output_tokens`.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
}

/// The Chat Completions request field that limits the answer's tokens (`openai` providers).
///
/// OpenAI deprecated `max_tokens` for `max_completion_tokens`, and its reasoning models refuse
/// `max_tokens` outright; compatible servers (Ollama, LM Studio, older llama.cpp and vLLM) read
/// only `max_tokens` and silently ignore the other, leaving answers unbounded. Sending both is
/// refused by the reasoning models, so the host picks one per provider
/// (`providers.<name>.max_tokens_field`, default by `base_url`: `api.openai.com` →
/// `max_completion_tokens`, anything else → `max_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`: read by every compatible server.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current field.
    MaxCompletionTokens,
}

impl MaxTokensField {
    /// The JSON field name.
    pub fn as_str(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }

    /// Parses a field name as written in the config (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "max_tokens" => Some(MaxTokensField::MaxTokens),
            "max_completion_tokens" => Some(MaxTokensField::MaxCompletionTokens),
            _ => None,
        }
    }
}

impl RunnerProvider {
    /// The offline `echo` provider.
    pub fn echo() -> Self {
        Self {
            name: "echo".into(),
            kind: ProviderKind::Echo,
            model: None,
            context_tokens: 100_000,
            max_output_tokens: 4096,
            temperature: None,
            command: vec![],
            max_tokens_field: MaxTokensField::MaxTokens,
        }
    }
}

/// The protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Offline stand-in: echoes, and drives tools from `tool <name> <json>` lines.
    Echo,
    /// OpenAI Chat Completions (hosted, Ollama, vLLM, llama.cpp).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// A program in the image speaking JSON lines on stdin/stdout.
    Command,
}

impl ProviderKind {
    /// The name used in config files (`kind = "openai"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Command => "command",
        }
    }

    /// Parses a config value; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Echo, Self::Openai, Self::Anthropic, Self::Command].into_iter().find(|k| k.as_str() == s)
    }
}

/// The image tier of a container (DESIGN §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageTier {
    /// `FROM scratch` + the runner: no shell, no tools that run programs.
    #[default]
    Minimal,
    /// A Debian root filesystem with a shell, git, python3, ripgrep, jq, curl and the runner.
    Standard,
}

impl ImageTier {
    /// The name used in `container_configs.image_tier`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Standard => "standard",
        }
    }

    /// Parses a config value; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Minimal, Self::Standard].into_iter().find(|t| t.as_str() == s)
    }
}

/// Which tools the model is offered (`container_configs.tools`): a small model with a small
/// context cannot take the schemas of every tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolSelection {
    /// Every tool (the default).
    #[default]
    All,
    /// Only these, by name (MCP tools as `mcp__<server>__<tool>`).
    Only(Vec<String>),
}

impl ToolSelection {
    /// True when the tool named `name` is offered.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// An MCP server started as a child process of the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// Program to run (inside the container).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-call timeout in seconds (default 60).
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_unknown_fields_are_refused() {
        let s = RunnerSettings::echo_default("Andy");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RunnerSettings>(&text).unwrap(), s);
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["api_key"] = "sk-nope".into();
        let e = serde_json::from_value::<RunnerSettings>(v).unwrap_err().to_string();
        assert!(e.contains("api_key"), "{e}");
    }

    #[test]
    fn kinds_tiers_and_selections_parse() {
        assert_eq!(ProviderKind::parse("anthropic"), Some(ProviderKind::Anthropic));
        assert_eq!(ProviderKind::parse("gpt"), None);
        assert_eq!(ImageTier::parse("standard"), Some(ImageTier::Standard));
        let only: ToolSelection = serde_json::from_str(r#"{"only":["send_message"]}"#).unwrap();
        assert!(only.allows("send_message") && !only.allows("run_command"));
        assert!(serde_json::from_str::<ToolSelection>(r#""all""#).unwrap().allows("x"));
    }
}
