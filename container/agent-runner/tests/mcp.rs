//! MCP servers (issue 6 part 7) against a real rmcp server built in this workspace
//! (`testing/mcp-fixture`): listing, calls through an echo `tool` line and the whole runner,
//! per-call timeouts, error results, the result cap, and servers that fail to start (garbage on
//! stdout, immediate exit, missing program, no answer) without blocking the good one.

mod support;

use nanoclaw_agent::tools::mcp::{McpHost, START_DEADLINE};
use nanoclaw_protocol::settings::McpServerSpec;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{Session, texts};

/// The fixture binary, built once per test process. A bin crate cannot be a dev-dependency, so
/// `CARGO_BIN_EXE_*` does not exist here; `cargo build -p mcp-fixture` into this test's own target
/// dir is a no-op when it is fresh and never leaves a stale binary in use.
fn fixture() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> → target/<profile>, target.
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let target = profile_dir.parent().unwrap();
            let profile = profile_dir.file_name().unwrap().to_str().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "-q", "-p", "mcp-fixture", "--target-dir"]).arg(target);
            if profile != "debug" {
                cmd.args(["--profile", profile]);
            }
            let status = cmd.status().expect("cannot run cargo to build the MCP fixture");
            assert!(status.success(), "cargo build -p mcp-fixture failed: {status}");
            let bin = profile_dir.join("mcp-fixture");
            assert!(bin.is_file(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

fn spec(args: &[&str], timeout_s: Option<u32>) -> McpServerSpec {
    McpServerSpec {
        command: fixture().display().to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        timeout_s,
    }
}

fn settings(servers: serde_json::Value) -> serde_json::Value {
    Session::settings(json!({ "mcp_servers": servers }))
}

/// Processes whose command line holds `marker` and that are not zombies.
fn live_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if !stat.contains(") Z ") && !stat.is_empty() {
            found.push(format!("{}: {cmdline}", dir.display()));
        }
    }
    found
}

#[tokio::test]
async fn good_server_is_listed_with_its_schemas() {
    let servers = BTreeMap::from([("good".to_string(), spec(&["--stderr"], None))]);
    let host = McpHost::start(&servers).await;
    assert!(host.failed().is_empty(), "{host:?}");
    assert_eq!(host.prompt_note(), None);
    let specs: Vec<_> = host.tools().iter().map(|t| t.spec()).collect();
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mcp__good__big", "mcp__good__echo", "mcp__good__fail", "mcp__good__sleep"]);
    // The server's own schema and description are passed through.
    let echo = &specs[1];
    assert_eq!(echo.description, "Answers with the given text");
    assert_eq!(echo.input_schema["type"], "object");
    assert_eq!(echo.input_schema["properties"]["text"]["type"], "string", "{}", echo.input_schema);
    assert_eq!(echo.input_schema["required"], json!(["text"]));
    // The declared timeout (for the host's stuck detection) is the per-call timeout.
    assert_eq!(host.tools()[1].declared_timeout(&json!({})), Duration::from_secs(60));
}

#[tokio::test]
async fn broken_servers_are_named_and_do_not_block_the_good_one() {
    // A unique argument so this test's silent server can be found in /proc afterwards.
    let marker = format!("{}.{}", 900 + std::process::id() % 99, std::process::id());
    let servers = BTreeMap::from([
        ("good".to_string(), spec(&[], None)),
        ("garbage".to_string(), spec(&["--garbage"], None)),
        ("exits".to_string(), spec(&["--exit"], None)),
        (
            "missing".to_string(),
            McpServerSpec {
                command: "/nonexistent/mcp-server".into(),
                args: vec![],
                env: BTreeMap::new(),
                timeout_s: None,
            },
        ),
        // Speaks nothing at all: only the start deadline catches it.
        (
            "silent".to_string(),
            McpServerSpec {
                command: "sleep".into(),
                args: vec![marker.clone()],
                env: BTreeMap::new(),
                timeout_s: None,
            },
        ),
        ("bad.name".to_string(), spec(&[], None)),
    ]);
    let started = Instant::now();
    let host = McpHost::start(&servers).await;
    let took = started.elapsed();
    // Concurrent starts: the silent server costs the deadline once, not the sum of all.
    assert!(took >= START_DEADLINE && took < START_DEADLINE + Duration::from_secs(3), "{took:?}");
    let failed: BTreeMap<_, _> = host.failed().iter().map(|f| (f.name.as_str(), f.reason.as_str())).collect();
    assert_eq!(failed.len(), 5, "{failed:#?}");
    assert!(
        failed["garbage"].contains("not MCP") && failed["garbage"].contains("this is not JSON-RPC"),
        "{failed:#?}"
    );
    assert!(failed["exits"].contains("exited") && failed["exits"].contains('3'), "{failed:#?}");
    assert!(failed["missing"].contains("cannot run"), "{failed:#?}");
    assert!(failed["silent"].contains("did not start within 10 s"), "{failed:#?}");
    assert!(failed["bad.name"].contains("letters, digits"), "{failed:#?}");
    // Server-written bytes reach the prompt escaped, on one line per server.
    let note = host.prompt_note().unwrap();
    assert!(note.contains("- garbage: ") && !note.contains('\u{1}'), "{note}");
    assert_eq!(note.lines().count(), 6, "{note}");
    // The good one works.
    assert_eq!(host.tools().len(), 4, "{host:?}");
    // The silent server was killed when it was given up on (SIGKILL is delivered asynchronously:
    // wait for it to be gone, with a deadline).
    let pattern = format!("sleep {marker}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !live_processes_with(&pattern).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live_processes_with(&pattern), Vec::<String>::new());
}

#[tokio::test]
async fn garbage_is_caught_at_once_not_at_the_deadline() {
    let servers = BTreeMap::from([("garbage".to_string(), spec(&["--garbage"], None))]);
    let started = Instant::now();
    let host = McpHost::start(&servers).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(host.failed().len(), 1);
    assert!(host.failed()[0].reason.contains("not MCP"), "{host:?}");
    assert!(host.tools().is_empty());
}

#[tokio::test]
async fn echo_tool_line_reaches_the_server() {
    let mut s = Session::new(Some(settings(json!({
        "good": spec(&[], None),
        "bad": spec(&["--garbage"], None),
    }))));
    s.start();
    let r = texts(&s.turn(r#"tool mcp__good__echo {"text":"hi"}"#, 30).await);
    assert_eq!(r, vec!["tool mcp__good__echo: hi"]);
    // The broken server's tools do not exist.
    let r = texts(&s.turn(r#"tool mcp__bad__echo {"text":"hi"}"#, 30).await);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("error: unknown tool \"mcp__bad__echo\"") && r[0].contains("mcp__good__echo"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_call_over_its_timeout_is_a_tool_error_and_the_server_keeps_working() {
    let mut s = Session::new(Some(settings(json!({ "good": spec(&[], Some(1)) }))));
    s.start();
    let started = Instant::now();
    let r = texts(
        &s.turn("tool mcp__good__sleep {\"ms\":5000}\ntool mcp__good__echo {\"text\":\"after\"}", 30).await,
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        r[0],
        "tool mcp__good__sleep: error: mcp__good__sleep: no answer from MCP server good within 1 s (its timeout_s)"
    );
    assert_eq!(r[1], "tool mcp__good__echo: after");
}

#[tokio::test]
async fn error_results_and_big_results() {
    let mut s = Session::new(Some(settings(json!({ "good": spec(&[], None) }))));
    s.start();
    let r = texts(
        &s.turn(
            "tool mcp__good__fail {\"text\":\"nope\"}\ntool mcp__good__big {\"bytes\":100000}\ntool mcp__good__echo {\"txt\":\"x\"}",
            30,
        )
        .await,
    );
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0], "tool mcp__good__fail: error: nope");
    // Capped at 64 KiB, the cut marked.
    assert!(
        r[1].len() < 66 * 1024 && r[1].ends_with(&format!("[… {} bytes cut …]", 100_000 - 64 * 1024)),
        "{}",
        r[1].len()
    );
    // The server's own argument check comes back as a tool error, not a crash.
    assert!(r[2].starts_with("tool mcp__good__echo: error: "), "{r:?}");
}
