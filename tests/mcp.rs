//! MCP servers in a real container (issue 6 "Must hold"): an MCP server built in this workspace
//! with rmcp (`testing/mcp-fixture`) is listed and called from a real container; a second, broken
//! server does not block it. Fails when Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips it,
//! loudly).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fixture binary, built into this test's own target dir (a bin crate cannot be a
/// dev-dependency, so there is no `CARGO_BIN_EXE_mcp-fixture`); a no-op when it is fresh.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap().to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "mcp-fixture", "--target-dir"]).arg(profile_dir.parent().unwrap());
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    assert!(cmd.status().expect("cannot run cargo").success(), "cargo build -p mcp-fixture failed");
    profile_dir.join("mcp-fixture")
}

#[test]
fn mcp_fixture_in_container() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    let mut c = server.client();
    // The group folder is mounted at /workspace/agent: the server binary goes there.
    let group = data.join("groups").join("main");
    std::fs::create_dir_all(&group).unwrap();
    let bin = group.join("mcp-fixture");
    std::fs::copy(fixture(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let servers = serde_json::json!({
        "good": {"command": "/workspace/agent/mcp-fixture"},
        "bad": {"command": "/workspace/agent/mcp-fixture", "args": ["--garbage"]},
    });
    let changed = store_db(&data)
        .execute(
            "UPDATE container_configs SET mcp_servers = ?1 WHERE agent_group_id = 'ag-main'",
            [servers.to_string()],
        )
        .unwrap();
    assert_eq!(changed, 1);

    // The host writes runner.json (with these servers) from container_configs before it
    // starts the container.
    c.send("m-0", "hello");
    let frames = c.until(Duration::from_secs(90), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(replies_to(&frames, "m-0"), vec!["echo: hello"], "{frames:?}");
    let install = nanoclaw::daemon::install_id(&data);
    let runner_json = session_dir(&data).join("host").join(nanoclaw_protocol::layout::RUNNER_SETTINGS);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(runner_json).unwrap()).unwrap();
    assert_eq!(written["mcp_servers"]["good"]["command"], "/workspace/agent/mcp-fixture", "{written}");

    c.send("m-1", r#"tool mcp__good__echo {"text":"hi from the container"}"#);
    let frames = c.until(Duration::from_secs(90), |f| f["type"] == "done" && f["id"] == "m-1");
    assert_eq!(replies_to(&frames, "m-1"), vec!["tool mcp__good__echo: hi from the container"], "{frames:?}");
    // The broken server is not offered (and did not stop the good one above).
    c.send("m-2", r#"tool mcp__bad__echo {"text":"x"}"#);
    let frames = c.until(Duration::from_secs(30), |f| f["type"] == "done" && f["id"] == "m-2");
    let replies = replies_to(&frames, "m-2");
    assert_eq!(replies.len(), 1, "{frames:?}");
    assert!(replies[0].contains("unknown tool \"mcp__bad__echo\""), "{replies:?}");
    // The answer names the tools offered: the good server's tool is listed among the built-ins.
    assert!(replies[0].contains("mcp__good__echo") && replies[0].contains("send_message"), "{replies:?}");
    // The good server runs inside the container, as a child of the runner.
    let containers = containers_of(&install);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let top = docker(&["top", &containers[0]]);
    assert!(top.contains("/workspace/agent/mcp-fixture"), "{top}");
    // The garbage one was killed when it was marked failed.
    assert!(!top.contains("--garbage"), "{top}");
    assert!(server.stop().success());
    assert!(all_containers_of(&install).is_empty(), "shutdown removes containers");
}
