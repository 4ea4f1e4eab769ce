//! Signals to `nanoclaw serve`: the first stops everything in order under a deadline (covered by
//! every test that stops a server and finds no container left); a second one forces the exit.

// A plain test driving a separate process: blocking sleeps are intended.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::time::Duration;

#[test]
fn a_second_signal_forces_the_exit_while_a_graceful_stop_waits() {
    let dir = short_tempdir();
    // An "agent" that ignores SIGTERM: a graceful stop must wait out its grace period (5 s).
    let agent = dir.path().join("stubborn-agent");
    std::fs::write(&agent, "#!/bin/sh\ntrap '' TERM INT\nsleep 8\n").unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(
        &data,
        &["--runtime", "process"],
        &[("NANOCLAW_AGENT_BINARY", agent.to_str().unwrap())],
    );
    let mut c = server.client();
    c.send("s-1", "start the stubborn agent");
    c.until(Duration::from_secs(10), |f| f["type"] == "accepted");
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id().to_string();
    let started = std::time::Instant::now();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(server.child.try_wait().unwrap().is_none(), "the graceful stop is still waiting for the agent");
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "forced, not after the 5 s grace: {:?}",
        started.elapsed()
    );
}
