//! DESIGN §13: one trace id per inbound message, through routing, the container's turn and
//! delivery. On the process runtime the runner's log lands in the service's log, so all three
//! can be seen in one file.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn one_trace_id_follows_a_message_through_routing_the_turn_and_delivery() {
    let dir = short_tempdir();
    let server = Server::start(
        &dir.path().join("data"),
        &["--runtime", "process", "--log-format", "json"],
        &[("NANOCLAW_LOG_LEVEL", "info")],
    );
    let mut c = server.client();
    c.send("t-1", "trace me");
    c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "t-1");
    let log = server.log();
    let delivered: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "delivered")
        .unwrap_or_else(|| panic!("no delivery line in:\n{log}"));
    let trace = delivered["trace"].as_str().unwrap().to_string();
    assert!(trace.starts_with("tr-"), "{delivered}");
    assert!(
        log.lines().any(|l| l.contains("turn started") && l.contains(&trace)),
        "the runner logged the turn with {trace}:\n{log}"
    );
    // The router recorded the same trace with the message in the inbound ledger.
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("data/nanoclaw.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let routed: String = db
        .query_row("SELECT trace_id FROM inbound_ledger WHERE platform_message_id = 't-1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(routed, trace);
}
