//! Benchmarks of issue 2, against the real binary and the real Docker daemon:
//! warm round trip (p50/p99 over 300 messages), cold round trip beside a bare `docker run` of the
//! same image, host RSS idle and with 100 idle sessions known, and the stripped binary size.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench roundtrip
//! ```
//!
//! Prints a Markdown report for BENCHMARKS.md. Informational: nothing here asserts a number.

// A synchronous driver of a separate process: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixtures/sessions.rs"]
mod sessions;
mod support;

use common::*;
use std::time::Duration;

/// One message on an open connection; milliseconds until its reply frame (waits for its `done`
/// too, in either order), counting `done` frames that came first.
fn round_trip(c: &mut Client, id: &str, done_first: &mut usize) -> f64 {
    let (ms, early) = support::round_trip(c, id);
    *done_first += usize::from(early);
    ms
}

fn main() {
    if !docker_available() {
        return;
    }
    let machine = format!(
        "{} cores ({}), kernel {}, Docker {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim(),
        docker(&["info", "--format", "{{.KernelVersion}}"]),
        docker(&["version", "--format", "{{.Server.Version}}"]),
    );
    let dir = short_tempdir();
    let data = dir.path().join("data");

    // Idle RSS: a fresh service, image built, no session yet.
    let server = Server::start(&data, &[], &[("NANOCLAW_LOG_LEVEL", "warn")]);
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = support::status_kib(server.child.id(), "VmRSS");

    // Warm round trip: one container, 300 messages after 20 of warm-up.
    let mut c = server.client();
    let mut done_first = 0;
    for i in 0..20 {
        round_trip(&mut c, &format!("warmup-{i}"), &mut done_first);
    }
    let mut warm: Vec<f64> =
        (0..300).map(|i| round_trip(&mut c, &format!("w-{i}"), &mut done_first)).collect();
    warm.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Cold round trip, as a user meets it: the session has no container (the service was
    // restarted; stopping removes containers). Timed from the message to its reply: session
    // actor start, container create + start, runner start, the turn, delivery.
    let install = nanoclaw::daemon::install_id(&data);
    // The image the service runs, for the floor below.
    let image =
        docker(&["ps", "--filter", &format!("label=nanoclaw.install={install}"), "--format", "{{.Image}}"])
            .lines()
            .next()
            .expect("a running agent container")
            .to_string();
    drop(c);
    assert!(server.stop().success());
    let mut cold = vec![];
    for i in 0..10 {
        let server = Server::start(&data, &[], &[("NANOCLAW_LOG_LEVEL", "warn")]);
        assert!(all_containers_of(&install).is_empty());
        let mut c = server.client();
        cold.push(round_trip(&mut c, &format!("cold-{i}"), &mut done_first));
        drop(c);
        assert!(server.stop().success());
    }
    cold.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // The floor: a bare `docker run --rm` of the same image (the runner exits at once without its
    // mounts), timed the same way, ten times.
    let mut floor = support::bare_docker_runs(&image, 10);
    floor.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // RSS with 100 idle sessions known (rows and session DBs; no actor or container running).
    // `work_pending = 0`: idle sessions, which start-up does not resume (the column defaults to
    // 1, so sessions seeded without it would all be resumed and hold live actors).
    sessions::seed_sessions(&data, 0, 100, sessions::Work::Idle);
    let server = Server::start(&data, &[], &[("NANOCLAW_LOG_LEVEL", "warn")]);
    std::thread::sleep(Duration::from_secs(3));
    let rss_100 = support::status_kib(server.child.id(), "VmRSS");
    assert!(server.stop().success());

    let size = std::fs::metadata(nanoclaw_bin()).map(|m| m.len()).unwrap_or(0);
    let agent_size = std::fs::metadata(agent_bin()).map(|m| m.len()).unwrap_or(0);
    println!("## Run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!("Machine: {machine}. Binary: {}.\n", nanoclaw_bin().display());
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| warm round trip, 300 messages | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p50 ≤ 50 ms |",
        support::percentile(&warm, 0.5),
        support::percentile(&warm, 0.99),
        warm[warm.len() - 1]
    );
    println!(
        "| cold round trip (container create + start + turn), 10 runs | p50 {:.0} ms, max {:.0} ms | ≤ 1.5 × floor |",
        support::percentile(&cold, 0.5),
        cold[cold.len() - 1]
    );
    println!(
        "| floor: bare `docker run --rm` of the same image, 10 runs | p50 {:.0} ms | — |",
        support::percentile(&floor, 0.5)
    );
    println!(
        "| cold / floor (p50) | {:.2} × | ≤ 1.5 × |",
        support::percentile(&cold, 0.5) / support::percentile(&floor, 0.5)
    );
    println!("| host RSS idle after start | {:.1} MB | ≤ 20 MB |", rss_idle as f64 / 1024.0);
    println!("| host RSS with 100 idle sessions known | {:.1} MB | ≤ 40 MB |", rss_100 as f64 / 1024.0);
    println!("| `nanoclaw` binary, stripped release | {:.1} MB | — |", size as f64 / 1e6);
    println!("| `nanoclaw-agent` binary (in the image) | {:.1} MB | — |", agent_size as f64 / 1e6);
    println!("| turns whose `done` came before their reply (of 330) | {done_first} | 0 |");
}
