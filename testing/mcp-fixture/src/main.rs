//! A small MCP server over stdio for the runner's MCP tests (issue 6 part 7).
//!
//! Tools: `echo {text}` answers the text, `sleep {ms}` answers after that long (for call
//! timeouts), `fail {text}` answers an error result (`is_error`), `big {bytes}` answers that many
//! bytes (for the result cap). Flags make it misbehave the ways a real server can:
//! `--garbage` writes junk to stdout instead of speaking MCP and then stays alive (a server that
//! merely exits would be caught by EOF; this one must be caught by what it writes), `--exit`
//! exits at once with status 3. `--stderr` writes a line to stderr first (the runner logs it).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Arguments of `echo` and `fail`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Text {
    /// The text to answer with.
    text: String,
}

/// Arguments of `sleep`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Sleep {
    /// How long to wait before answering, in milliseconds.
    ms: u64,
}

/// Arguments of `big`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Big {
    /// How many bytes to answer with.
    bytes: usize,
}

/// The server: its tools, routed by rmcp's macros (`#[tool_handler]` builds the router from
/// `Self::tool_router()`, so the server holds no state).
#[derive(Clone)]
struct Fixture;

#[tool_router]
impl Fixture {
    #[tool(description = "Answers with the given text")]
    fn echo(&self, Parameters(Text { text }): Parameters<Text>) -> String {
        text
    }

    #[tool(description = "Waits ms milliseconds, then answers")]
    async fn sleep(&self, Parameters(Sleep { ms }): Parameters<Sleep>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "Answers with an error result carrying the text")]
    fn fail(&self, Parameters(Text { text }): Parameters<Text>) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(text)])
    }

    #[tool(description = "Answers with that many bytes of 'x'")]
    fn big(&self, Parameters(Big { bytes }): Parameters<Big>) -> String {
        "x".repeat(bytes)
    }
}

#[tool_handler]
impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--stderr") {
        eprintln!("mcp-fixture: starting (stderr line for the runner log)");
    }
    if has("--exit") {
        std::process::exit(3);
    }
    if has("--garbage") {
        let mut out = tokio::io::stdout();
        for _ in 0..3 {
            let _ = out.write_all(b"this is not JSON-RPC \x01\x02 {{{\n").await;
        }
        let _ = out.flush().await;
        // Stay alive: the runner must not rely on EOF to notice.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let server = Fixture;
    match server.serve(rmcp::transport::stdio()).await {
        Ok(running) => {
            let _ = running.waiting().await;
        }
        Err(e) => {
            eprintln!("mcp-fixture: {e}");
            std::process::exit(1);
        }
    }
}
