//! Runs `examples/embed_minimal` (the built example binary) and checks it got the agent's reply.

mod common;

use common::*;
use std::path::PathBuf;

fn example_bin() -> PathBuf {
    let p = nanoclaw_bin().parent().unwrap().join("examples/embed_minimal");
    assert!(
        p.is_file(),
        "{} missing: examples are built by `cargo nextest run --workspace` / `cargo test`",
        p.display()
    );
    p
}

fn run(runtime: &str) {
    let out = std::process::Command::new(example_bin())
        .env("NANOCLAW_RUNTIME", runtime)
        .env("NANOCLAW_AGENT_BINARY", agent_bin())
        .env("NANOCLAW_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: hello from the host program\n");
}

#[test]
fn embed_minimal_runs_on_the_process_runtime() {
    run("process");
}

#[test]
fn embed_minimal_runs_on_docker() {
    if !docker_available() {
        return;
    }
    run("docker");
}
