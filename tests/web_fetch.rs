//! `web_fetch` from a real container (issue 6 parts 4 and 6): the container has no network; the
//! runner's tool goes through the session's credential proxy, which fetches only hosts in the
//! group's `egress_allow`. Driven by echo `tool` lines through the real binary; the fetched
//! server is a fake on the host's loopback. Fails when Docker is unreachable
//! (`NANOCLAW_SKIP_DOCKER=1` skips it, loudly).

mod common;

use common::*;
use fake_http::{FakeServer, Reply};
use std::time::Duration;

#[test]
fn web_fetch_reaches_allowed_hosts_only() {
    if !docker_available() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = rt.block_on(FakeServer::tcp()).unwrap();
    site.push(Reply::new(200).header("content-type", "text/plain").body("hello from the web"));
    let base = site.base_url().unwrap();
    let port = base.rsplit(':').next().unwrap().to_string();
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    // Set before the first message: the host reads container_configs when it spawns.
    let changed = store_db(&data)
        .execute(
            "UPDATE container_configs SET egress_allow = ?1, image_tier = 'minimal' WHERE agent_group_id = 'ag-main'",
            [format!("[\"127.0.0.1:{port}\"]")],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let mut c = server.client();
    // Allowed; then the same server under a name that is not in the list.
    let lines = [
        format!(r#"tool web_fetch {{"url":"{base}/hello"}}"#),
        format!(r#"tool web_fetch {{"url":"http://localhost:{port}/secret"}}"#),
    ];
    c.send("m-0", &lines.join("\n"));
    let frames = c.until(Duration::from_secs(120), |f| f["type"] == "done" && f["id"] == "m-0");
    let replies = replies_to(&frames, "m-0");
    assert_eq!(
        replies,
        vec![
            "tool web_fetch: status 200 (text/plain):\nhello from the web",
            "tool web_fetch: error: not fetched: web_fetch to localhost refused: it is not in container_configs.egress_allow",
        ],
        "{frames:?}"
    );
    let requests = site.requests();
    assert_eq!(requests.len(), 1, "only the allowed fetch reached the server: {requests:?}");
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("GET", "/hello"));
    let install = nanoclaw::daemon::install_id(&data);
    assert!(server.stop().success());
    assert!(server_log_has_refusal(&data), "the refusal is logged");
    assert!(all_containers_of(&install).is_empty());
}

/// The service log names the refused fetch.
fn server_log_has_refusal(data: &std::path::Path) -> bool {
    std::fs::read_to_string(log_path(data)).unwrap_or_default().contains("web_fetch localhost")
}
