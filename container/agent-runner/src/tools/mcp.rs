//! MCP servers (issue 6 part 7): each `mcp_servers` entry of `runner.json` runs as a child
//! process of the runner, speaking MCP over its stdin/stdout through the `rmcp` client; its
//! tools are offered to the model as `mcp__<server>__<tool>`.
//!
//! A server is as untrusted as the model that configured it, so everything it can do is bounded:
//! - **Start**: all servers start concurrently, each within [`START_DEADLINE`] (spawn, the MCP
//!   handshake and listing its tools). One that fails, times out or writes garbage is killed,
//!   logged and reported in [`McpHost::failed`] (the system prompt names it); the others work.
//! - **Stdout**: read by our own pump, not by rmcp directly. Every line must be a JSON object of
//!   at most [`MAX_LINE_BYTES`]; anything else marks the server failed at once and closes its
//!   connection. (rmcp's transport skips unparsable lines silently and accepts 16 MiB lines, so a
//!   server printing junk would look like a slow one and cost the whole start deadline; this is
//!   why the runner does not use `TokioChildProcess`, whose stdout it cannot see.)
//! - **Stderr**: logged with the server's name, at most [`MAX_STDERR_LOG_BYTES`] per server (the
//!   rest is read and dropped, so the server never blocks on a full pipe).
//! - **Tools**: at most [`MAX_TOOLS_PER_SERVER`] from at most [`MAX_LIST_PAGES`] pages; names must
//!   fit the model APIs' `^[A-Za-z0-9_-]{1,128}$` once prefixed (others are skipped and logged);
//!   schemas over [`MAX_SCHEMA_BYTES`] are skipped, descriptions cut at [`MAX_DESCRIPTION_BYTES`].
//! - **Calls**: each within the server's `timeout_s` (default [`DEFAULT_CALL_TIMEOUT_S`]); text
//!   content joined and capped at [`MAX_RESULT_BYTES`] with the cut marked; `is_error` becomes a
//!   tool error.
//! - **Lifetime**: each server runs in its own process group, killed (SIGKILL to the group) when
//!   the last tool holding it is dropped — with the runner — or when its start fails. Inside a
//!   container, the container's end kills whatever a SIGKILLed runner left.

use super::{Tool, ToolContext, ToolError, ToolResult, cap_text};
use crate::model::ToolSpec;
use async_trait::async_trait;
use nanoclaw_protocol::settings::{McpServerSpec, ToolSelection};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rmcp::model::{CallToolRequestParams, ContentBlock, PaginatedRequestParams};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// Time a server has to start, answer the MCP handshake and list its tools.
pub const START_DEADLINE: Duration = Duration::from_secs(10);
/// Per-call timeout when the spec sets none.
pub const DEFAULT_CALL_TIMEOUT_S: u32 = 60;
/// Longest line (one JSON-RPC message) a server may write to stdout.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most bytes of a tool result given to the model; the rest is cut and the cut marked.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Most stderr bytes of one server that reach the runner log.
pub const MAX_STDERR_LOG_BYTES: usize = 16 * 1024;
/// Most tools taken from one server.
pub const MAX_TOOLS_PER_SERVER: usize = 128;
/// Most `tools/list` pages read from one server.
pub const MAX_LIST_PAGES: usize = 8;
/// Longest input schema (serialised) offered to the model.
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;
/// Longest tool description offered to the model.
pub const MAX_DESCRIPTION_BYTES: usize = 2 * 1024;
/// Longest tool name the model APIs accept.
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// Longest failure reason kept (it goes into the system prompt).
const MAX_REASON_BYTES: usize = 300;

/// A server that is not available, and why (for the log and the system prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedServer {
    /// The server's name in `mcp_servers`.
    pub name: String,
    /// Why, in words (bounded; server-written bytes appear only escaped).
    pub reason: String,
}

/// The running MCP servers of this runner, and those that failed.
pub struct McpHost {
    tools: Vec<Arc<dyn Tool>>,
    failed: Vec<FailedServer>,
}

impl std::fmt::Debug for McpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHost")
            .field("tools", &self.tools.iter().map(|t| t.spec().name).collect::<Vec<_>>())
            .field("failed", &self.failed)
            .finish()
    }
}

impl McpHost {
    /// Starts every server in `specs` concurrently, each within [`START_DEADLINE`]; never fails
    /// as a whole (a server that does not come up is in [`Self::failed`]).
    pub async fn start(specs: &BTreeMap<String, McpServerSpec>) -> Self {
        let mut set = tokio::task::JoinSet::new();
        for (name, spec) in specs {
            let (name, spec) = (name.clone(), spec.clone());
            set.spawn(async move {
                let r = match tokio::time::timeout(START_DEADLINE, start_one(&name, &spec)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "did not start within {} s (no MCP handshake and tool list)",
                        START_DEADLINE.as_secs()
                    )),
                };
                (name, r)
            });
        }
        let mut host = Self { tools: Vec::new(), failed: Vec::new() };
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((name, Ok(tools))) => {
                    info!(server = %name, tools = tools.len(), "MCP server started");
                    host.tools.extend(tools);
                }
                Ok((name, Err(reason))) => {
                    let reason = bounded(&reason);
                    warn!(server = %name, %reason, "MCP server failed");
                    host.failed.push(FailedServer { name, reason });
                }
                // A start task cannot panic short of a bug; it is not worth taking the runner down.
                Err(e) => warn!(error = %e, "MCP start task failed"),
            }
        }
        host.tools.sort_by_key(|t| t.spec().name);
        host.failed.sort_by(|a, b| a.name.cmp(&b.name));
        host
    }

    /// The tools of every running server (`mcp__<server>__<tool>`).
    pub fn tools(&self) -> &[Arc<dyn Tool>] {
        &self.tools
    }

    /// The servers that failed to start, by name.
    pub fn failed(&self) -> &[FailedServer] {
        &self.failed
    }

    /// Adds the tools `selection` allows to `registry` (the same rule as the built-in tools: a
    /// tool not offered cannot be called).
    pub fn register_into(&self, registry: &mut super::ToolRegistry, selection: &ToolSelection) {
        for tool in &self.tools {
            if selection.allows(&tool.spec().name) {
                registry.register(Arc::clone(tool));
            }
        }
    }

    /// A paragraph for the system prompt naming the failed servers, or `None` when all started:
    /// the model should tell the user instead of guessing why a tool is missing.
    pub fn prompt_note(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let mut note = String::from("MCP servers that failed to start (their tools are not available):\n");
        for f in &self.failed {
            note.push_str(&format!("- {}: {}\n", f.name, f.reason));
        }
        Some(note)
    }
}

/// `text` on one line, control characters escaped, at most [`MAX_REASON_BYTES`].
fn bounded(text: &str) -> String {
    let flat: String = text
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    let mut end = flat.len().min(MAX_REASON_BYTES);
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    if end < flat.len() { format!("{}…", &flat[..end]) } else { flat }
}

/// True for a name the model APIs accept as (part of) a tool name.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Kills the server's process group when dropped (the direct child is also `kill_on_drop`; the
/// group covers what it started, e.g. `npx` → `node`).
struct ProcessGroup {
    pgid: Option<Pid>,
    child: tokio::process::Child,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// One running server, shared by its tools.
struct Server {
    name: String,
    client: RunningService<RoleClient, ()>,
    /// Set by the stdout pump when the server wrote something that is not MCP.
    broken: Arc<Mutex<Option<String>>>,
    call_timeout: Duration,
    _group: ProcessGroup,
}

impl Server {
    /// Why the server is unusable, if the pump found out.
    fn broken(&self) -> Option<String> {
        self.broken.lock().ok().and_then(|b| b.clone())
    }
}

/// Reads one `\n`-terminated line into `line` (without the newline). Returns `Ok(false)` at EOF,
/// `Ok(true)` with `*too_long` set when the line passed `max` (only its first `max` bytes are
/// kept; the rest is read and dropped), never holding more than `max` + one read in memory.
async fn read_line_bounded<R: AsyncRead + Unpin>(
    r: &mut R,
    pending: &mut Vec<u8>,
    line: &mut Vec<u8>,
    max: usize,
    too_long: &mut bool,
) -> std::io::Result<bool> {
    line.clear();
    *too_long = false;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(pos + 1);
            pending.pop();
            let room = max.saturating_sub(line.len());
            *too_long |= pending.len() > room;
            line.extend_from_slice(&pending[..pending.len().min(room)]);
            *pending = rest;
            return Ok(true);
        }
        let room = max.saturating_sub(line.len());
        *too_long |= pending.len() > room;
        line.extend_from_slice(&pending[..pending.len().min(room)]);
        pending.clear();
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(!line.is_empty());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Copies the server's stdout to rmcp, line by line, while every line is a JSON object of at
/// most [`MAX_LINE_BYTES`]. On anything else: records why in `broken` and stops, which closes
/// rmcp's side (it sees EOF: pending requests fail at once).
async fn pump_stdout(
    name: String,
    mut stdout: tokio::process::ChildStdout,
    mut to_rmcp: tokio::io::DuplexStream,
    broken: Arc<Mutex<Option<String>>>,
) {
    let (mut pending, mut line, mut too_long) = (Vec::new(), Vec::new(), false);
    let fail = |why: String| {
        warn!(server = %name, reason = %why, "MCP server marked failed");
        if let Ok(mut b) = broken.lock() {
            b.get_or_insert(why);
        }
    };
    loop {
        match read_line_bounded(&mut stdout, &mut pending, &mut line, MAX_LINE_BYTES, &mut too_long).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return fail(format!("reading its output failed: {e}")),
        }
        if too_long {
            return fail(format!("wrote a line longer than {MAX_LINE_BYTES} bytes"));
        }
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let is_object = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
            && text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !is_object {
            let shown = String::from_utf8_lossy(&text[..text.len().min(60)]).into_owned();
            return fail(format!("wrote something that is not MCP (JSON-RPC) to stdout: {shown:?}"));
        }
        if to_rmcp.write_all(text).await.is_err() || to_rmcp.write_all(b"\n").await.is_err() {
            return; // rmcp's side is gone: the server is being shut down.
        }
    }
}

/// Logs the server's stderr, line by line, up to [`MAX_STDERR_LOG_BYTES`]; drains the rest.
async fn log_stderr(name: String, mut stderr: tokio::process::ChildStderr) {
    let (mut pending, mut line, mut too_long) = (Vec::new(), Vec::new(), false);
    let mut logged = 0usize;
    while let Ok(true) = read_line_bounded(&mut stderr, &mut pending, &mut line, 1024, &mut too_long).await {
        if logged >= MAX_STDERR_LOG_BYTES {
            continue;
        }
        logged += line.len();
        let text = bounded(&String::from_utf8_lossy(&line));
        info!(server = %name, cut = too_long, "mcp stderr: {text}");
        if logged >= MAX_STDERR_LOG_BYTES {
            warn!(server = %name, "mcp stderr: more than {MAX_STDERR_LOG_BYTES} bytes; the rest is not logged");
        }
    }
}

/// Spawns one server, does the handshake and lists its tools (the caller bounds the time; when
/// it gives up, dropping this future kills the process group).
async fn start_one(name: &str, spec: &McpServerSpec) -> Result<Vec<Arc<dyn Tool>>, String> {
    if !valid_name(name) {
        return Err("the server name may hold only letters, digits, '_' and '-'".into());
    }
    let mut cmd = tokio::process::Command::new(&spec.command);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {:?}: {e}", spec.command))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("its stdio pipes were not created".into());
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let mut group = ProcessGroup { pgid, child };
    tokio::spawn(log_stderr(name.to_string(), stderr));
    let (to_rmcp, from_pump) = tokio::io::duplex(64 * 1024);
    let broken = Arc::new(Mutex::new(None::<String>));
    tokio::spawn(pump_stdout(name.to_string(), stdout, to_rmcp, Arc::clone(&broken)));
    let reason = |e: &dyn std::fmt::Display, group: &mut ProcessGroup| -> String {
        if let Some(b) = broken.lock().ok().and_then(|b| b.clone()) {
            return b;
        }
        match group.child.try_wait() {
            Ok(Some(status)) => format!("exited ({status}) before answering: {e}"),
            _ => e.to_string(),
        }
    };
    let client = match ().serve((from_pump, stdin)).await {
        Ok(c) => c,
        Err(e) => return Err(reason(&e, &mut group)),
    };
    let mut listed = Vec::new();
    let mut cursor = None;
    for page in 0.. {
        if page == MAX_LIST_PAGES {
            warn!(server = %name, "more than {MAX_LIST_PAGES} pages of tools; the rest are ignored");
            break;
        }
        let params = cursor.take().map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        let result = match client.list_tools(params).await {
            Ok(r) => r,
            Err(e) => return Err(reason(&format!("listing its tools failed: {e}"), &mut group)),
        };
        listed.extend(result.tools);
        match result.next_cursor {
            Some(c) if listed.len() < MAX_TOOLS_PER_SERVER => cursor = Some(c),
            _ => break,
        }
    }
    if listed.len() > MAX_TOOLS_PER_SERVER {
        warn!(server = %name, listed = listed.len(), "more than {MAX_TOOLS_PER_SERVER} tools; the rest are ignored");
        listed.truncate(MAX_TOOLS_PER_SERVER);
    }
    let server = Arc::new(Server {
        name: name.to_string(),
        client,
        broken,
        call_timeout: Duration::from_secs(u64::from(spec.timeout_s.unwrap_or(DEFAULT_CALL_TIMEOUT_S))),
        _group: group,
    });
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for t in listed {
        let full = format!("mcp__{name}__{}", t.name);
        if !valid_name(&t.name) || full.len() > MAX_TOOL_NAME_BYTES {
            warn!(server = %name, tool = %bounded(&t.name), "MCP tool skipped: its name is not valid as mcp__<server>__<tool> (≤ {MAX_TOOL_NAME_BYTES} bytes of letters, digits, '_' and '-')");
            continue;
        }
        let schema = serde_json::Value::Object((*t.input_schema).clone());
        if schema.to_string().len() > MAX_SCHEMA_BYTES {
            warn!(server = %name, tool = %t.name, "MCP tool skipped: input schema over {MAX_SCHEMA_BYTES} bytes");
            continue;
        }
        let description = match t.description.as_deref() {
            Some(d) if !d.trim().is_empty() => cap_text(d, MAX_DESCRIPTION_BYTES),
            _ => format!("Tool {} of the MCP server {name}.", t.name),
        };
        tools.push(Arc::new(McpTool {
            spec: ToolSpec { name: full, description, input_schema: schema },
            tool: t.name.to_string(),
            server: Arc::clone(&server),
        }));
    }
    Ok(tools)
}

/// One tool of one server, as offered to the model.
struct McpTool {
    spec: ToolSpec,
    /// The server's own name for it.
    tool: String,
    server: Arc<Server>,
}

/// The model-facing text of a result: text blocks joined, other blocks named, capped.
fn result_text(content: &[ContentBlock], structured: Option<&serde_json::Value>) -> String {
    let mut parts = Vec::with_capacity(content.len());
    for block in content {
        parts.push(match block {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(_) => "[an image, not shown]".to_string(),
            ContentBlock::Audio(_) => "[audio, not shown]".to_string(),
            ContentBlock::Resource(_) => "[an embedded resource, not shown]".to_string(),
            ContentBlock::ResourceLink(r) => format!("[resource {}]", r.uri),
            // The enum is non-exhaustive: kinds added by later protocol versions.
            _ => "[content of another kind, not shown]".to_string(),
        });
    }
    if parts.is_empty()
        && let Some(s) = structured
    {
        parts.push(s.to_string());
    }
    cap_text(&parts.join("\n"), MAX_RESULT_BYTES)
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    fn declared_timeout(&self, _args: &serde_json::Value) -> Duration {
        self.server.call_timeout
    }

    async fn call(&self, args: serde_json::Value, _cx: &mut ToolContext<'_>) -> ToolResult {
        let server = &self.server;
        if let Some(why) = server.broken() {
            return Err(ToolError(format!("MCP server {} failed: {why}", server.name)));
        }
        let mut params = CallToolRequestParams::new(self.tool.clone());
        match args {
            serde_json::Value::Object(map) => params = params.with_arguments(map),
            serde_json::Value::Null => {}
            other => {
                return Err(ToolError(format!("invalid arguments: expected a JSON object, got {other}")));
            }
        }
        let secs = server.call_timeout.as_secs();
        let result = match tokio::time::timeout(server.call_timeout, server.client.call_tool(params)).await {
            Err(_) => {
                return Err(ToolError(format!(
                    "{}: no answer from MCP server {} within {secs} s (its timeout_s)",
                    self.spec.name, server.name
                )));
            }
            Ok(Err(e)) => {
                let why = server.broken().unwrap_or_else(|| e.to_string());
                return Err(ToolError(format!(
                    "{}: MCP server {} failed: {why}",
                    self.spec.name, server.name
                )));
            }
            Ok(Ok(r)) => r,
        };
        let text = result_text(&result.content, result.structured_content.as_ref());
        if result.is_error == Some(true) { Err(ToolError(text)) } else { Ok(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = b"{\"a\":1}\nxxxxxxxxxxxxxxxxxxxx\nlast".to_vec();
        let mut r = &data[..];
        let (mut pending, mut line, mut long) = (Vec::new(), Vec::new(), false);
        assert!(read_line_bounded(&mut r, &mut pending, &mut line, 8, &mut long).await.unwrap());
        assert_eq!((line.as_slice(), long), (&b"{\"a\":1}"[..], false));
        assert!(read_line_bounded(&mut r, &mut pending, &mut line, 8, &mut long).await.unwrap());
        assert_eq!((line.as_slice(), long), (&b"xxxxxxxx"[..], true));
        assert!(read_line_bounded(&mut r, &mut pending, &mut line, 8, &mut long).await.unwrap());
        assert_eq!((line.as_slice(), long), (&b"last"[..], false));
        assert!(!read_line_bounded(&mut r, &mut pending, &mut line, 8, &mut long).await.unwrap());
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        let r = bounded(&format!("a\nb\u{1}{}", "é".repeat(400)));
        assert!(r.starts_with("a\\nb\\u{1}") && r.len() <= MAX_REASON_BYTES + "…".len(), "{r}");
    }

    #[test]
    fn results_join_text_and_cap() {
        let blocks = vec![ContentBlock::text("a"), ContentBlock::text("b")];
        assert_eq!(result_text(&blocks, None), "a\nb");
        let big = vec![ContentBlock::text("x".repeat(MAX_RESULT_BYTES + 10))];
        let t = result_text(&big, None);
        assert!(
            t.len() < MAX_RESULT_BYTES + 100 && t.ends_with("[… 10 bytes cut …]"),
            "{}",
            &t[t.len() - 40..]
        );
        assert_eq!(result_text(&[], Some(&serde_json::json!({"k": 1}))), "{\"k\":1}");
    }
}
