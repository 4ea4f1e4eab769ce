//! Tools the model may call: the [`Tool`] trait, the [`ToolRegistry`], and argument handling.
//!
//! Every tool's arguments are a Rust type with `#[serde(deny_unknown_fields)]`; its JSON schema
//! is generated from that type ([`schema_of`]) so the schema the model sees and the parser can
//! never disagree, and a bad call comes back to the model as a [`ToolError`] naming the field
//! ([`parse_args`]) — never a crash. Tools run in the runner's process, one at a time, in the
//! order the model asked for them.

pub mod chat;
pub mod command;
pub mod mcp;
pub mod system;
pub mod web;
pub mod workspace;

use crate::db::{SessionDb, Snapshot};
use crate::model::ToolSpec;
use crate::provider::{HostLink, SentText};
use async_trait::async_trait;
use nanoclaw_protocol::settings::{RunnerSettings, ToolSelection};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Everything a tool call may touch.
pub struct ToolContext<'a> {
    /// The session DBs (tools that send write `messages_out` rows and commit them at once).
    pub db: &'a mut SessionDb,
    /// The batch being answered (destinations, routing, the rows `in_reply_to` names).
    pub snapshot: &'a Snapshot,
    /// This container's settings (image tier, egress list, …).
    pub settings: &'a RunnerSettings,
    /// The session workspace (`/workspace` inside a container): file tools stay inside it.
    pub workspace: &'a Path,
    /// The wake link: an OUTPUT byte after a mid-turn commit, so the host delivers at once.
    pub link: &'a mut dyn HostLink,
    /// What this turn has done so far.
    pub ledger: &'a mut TurnLedger,
}

/// What a turn's tools did, for the loop's decisions at the end of the turn.
#[derive(Debug, Default)]
pub struct TurnLedger {
    /// Prefix of the ids of rows written in this turn.
    pub id_prefix: String,
    /// Texts sent by tools (for the final-answer dedupe and the no-nudge rule).
    pub sent: Vec<SentText>,
    next_id: u32,
}

impl TurnLedger {
    /// A ledger whose rows get ids `<id_prefix>-t<n>`.
    pub fn new(id_prefix: &str) -> Self {
        Self { id_prefix: id_prefix.to_string(), ..Self::default() }
    }

    /// The id of the next row a tool writes (unique in the turn, apart from the final replies'
    /// `<prefix>-<n>`).
    pub fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-t{}", self.id_prefix, self.next_id)
    }
}

/// Why a tool call failed, in words for the model (bad arguments name the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// A tool's answer: text for the model either way.
pub type ToolResult = Result<String, ToolError>;

/// One tool.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and argument schema, as offered to the model.
    fn spec(&self) -> ToolSpec;

    /// How long this call may legitimately take; recorded in `container_state` so the host's
    /// stuck detection waits that long (and no longer). `args` are the raw arguments.
    fn declared_timeout(&self, args: &serde_json::Value) -> Duration {
        let _ = args;
        Duration::from_secs(60)
    }

    /// Runs the call.
    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult;
}

/// The tools of this runner, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    /// Every tool built into the runner, limited to `selection` (a small model with a small
    /// context cannot take every schema; a tool that is not offered cannot be called either).
    /// `web_fetch` sends through the credential proxy at `proxy_socket`.
    pub fn builtin(selection: &ToolSelection, proxy_socket: &Path) -> Self {
        let all: Vec<Arc<dyn Tool>> = vec![
            Arc::new(chat::SendMessage),
            Arc::new(chat::SendFile),
            Arc::new(chat::EditMessage),
            Arc::new(chat::AddReaction),
            Arc::new(chat::SendCard),
            Arc::new(workspace::ReadFile),
            Arc::new(workspace::WriteFile),
            Arc::new(workspace::EditFile),
            Arc::new(workspace::ListFiles),
            Arc::new(workspace::SearchFiles),
            Arc::new(command::RunCommand),
            Arc::new(web::WebFetch::new(proxy_socket)),
        ];
        let mut registry = Self::default();
        let system = system::all().into_iter().map(|t| Arc::new(t) as Arc<dyn Tool>);
        for tool in all.into_iter().chain(system) {
            if selection.allows(&tool.spec().name) {
                registry.register(tool);
            }
        }
        registry
    }

    /// Adds (or replaces) a tool.
    pub fn register(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.spec().name, tool);
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// The specs of every tool, by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec()).collect()
    }

    /// The names of every tool, comma separated (for "unknown tool" answers).
    pub fn names(&self) -> String {
        self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Parses tool arguments, naming the offending field on failure (`path: invalid type …`,
/// `unknown field `pth`, expected `path``).
pub fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolError> {
    if !args.is_object() {
        return Err(ToolError(format!("invalid arguments: expected a JSON object, got {args}")));
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ToolError(format!("invalid arguments: {inner}"))
        } else {
            ToolError(format!("invalid arguments: {path}: {inner}"))
        }
    })
}

/// The JSON schema of an argument type, without the keys models do not need and some servers
/// reject (`$schema`, `title`, `format`).
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("$schema");
                map.remove("title");
                if map.get("format").is_some_and(|f| f.is_string()) {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = schemars::schema_for!(T).to_value();
    strip(&mut value);
    value
}

/// Shortens `text` to at most `max` bytes (on a char boundary), marking the cut.
pub fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… {} bytes cut …]", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        /// A path.
        path: String,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn schema_is_stripped_and_strict() {
        let s = schema_of::<Args>();
        assert!(s.get("$schema").is_none() && s.get("title").is_none(), "{s}");
        assert_eq!(s["additionalProperties"], serde_json::json!(false));
        assert_eq!(s["required"], serde_json::json!(["path"]));
        assert!(!s.to_string().contains("\"format\""), "{s}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_args::<Args>(serde_json::json!({"pth": "x"})).unwrap_err();
        assert!(e.0.contains("pth"), "{e}");
        let e = parse_args::<Args>(serde_json::json!({"path": 3})).unwrap_err();
        assert!(e.0.starts_with("invalid arguments: path:"), "{e}");
        let e = parse_args::<Args>(serde_json::json!("x")).unwrap_err();
        assert!(e.0.contains("JSON object"), "{e}");
    }
}
