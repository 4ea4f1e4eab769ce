//! Session start after a long history (issue 3): the time from a message to a session whose actor
//! is stopped to its reply, with the session's DBs holding 10 against 100,000 finished turns, and
//! the warm round trip that follows. Target: 100,000 within 2 × of 10.
//!
//! The history is one real turn cloned (tests/fixtures/history.rs: exactly the rows the service
//! and the runner wrote for it, cursors past them). Each run starts `nanoclaw serve` on a fresh
//! copy of the data directory, so every run sees exactly 10 or 100,000 turns. Two states:
//! - idle: as a session actor leaves its session when the container idled out and the actor
//!   stopped after its linger (`settle_idle`: claims counted, `work_pending = 0`), so start-up
//!   resumes nothing and the message spawns the session actor — the issue's measure;
//! - restart: as a stopped service left a session that was live (`work_pending = 1`, the last
//!   container's claims not yet counted): start-up resumes it, and the message follows at once.
//!
//! The process runtime is used: a container start (~200 ms on the reference machine) would hide
//! the host's own cost, which is what grows with history. With Docker answering, a shorter Docker
//! series follows for the user's view.
//!
//! With `NANOCLAW_BENCH_V1=1`, a last series gives the one-time cost of the upgrade from schema 1
//! (no cursors): the first pass walks the whole history. Off by default: today that walk stalls
//! (see tests/scale.rs, the ignored schema-1 test), and each message would time out.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench history
//! ```
//!
//! With `NANOCLAW_BENCH_KEEP=<dir>`, the prepared data directories are written under `<dir>`
//! (idle-10, idle-100k, restart-10, restart-100k) and kept, and nothing is timed: for profiling.

// A synchronous driver of a separate process: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixtures/history.rs"]
mod history;
mod support;

use common::*;
use std::path::{Path, PathBuf};
use support::*;

/// A data dir whose main session holds `turns` finished turns (one real, the rest cloned).
fn prepared(root: &Path, name: &str, args: &[&str], turns: usize) -> PathBuf {
    let data = root.join(name);
    let _ = std::fs::remove_dir_all(&data);
    let server = Server::start(&data, args, &[("NANOCLAW_LOG_LEVEL", "warn")]);
    let mut c = server.client();
    round_trip(&mut c, "tmpl-turn-0");
    drop(c);
    assert!(server.stop().success());
    let session = history::main_session_dir(&data);
    let db = rusqlite::Connection::open(session.join("host/inbound.db")).unwrap();
    let template: String =
        db.query_row("SELECT id FROM messages_in WHERE kind = 'chat'", [], |r| r.get(0)).unwrap();
    drop(db);
    let h = history::clone_turns(&data, &session, &template, turns - 1);
    assert_eq!(h.turns, turns as i64);
    data
}

#[derive(Default)]
struct Series {
    cold: Vec<f64>,
    warm: Vec<f64>,
}

/// One start on a copy of `pristine`: one cold message, then `warm` warm ones.
fn one_run(pristine: &Path, work: &Path, args: &[&str], i: usize, warm: usize, v1: bool, s: &mut Series) {
    copy_dir(pristine, work);
    if v1 {
        history::downgrade_to_v1(&history::main_session_dir(work));
    }
    let server = Server::start(work, args, &[("NANOCLAW_LOG_LEVEL", "warn")]);
    let mut c = server.client();
    s.cold.push(round_trip(&mut c, &format!("cold-{i}")).0);
    for j in 0..warm {
        s.warm.push(round_trip(&mut c, &format!("warm-{i}-{j}")).0);
    }
    drop(c);
    assert!(server.stop().success());
    remove_containers_of(work);
}

/// `runs` pairs of starts, small then big in turn, so that a change in the shared machine's speed
/// during the series affects both alike; the ratio is taken pair by pair.
fn paired(
    small: &Path,
    big: &Path,
    work: &Path,
    args: &[&str],
    runs: usize,
    warm: usize,
    v1: bool,
) -> (Series, Series) {
    let (mut s, mut b) = (Series::default(), Series::default());
    for i in 0..runs {
        one_run(small, work, args, i, warm, v1, &mut s);
        one_run(big, work, args, i, warm, v1, &mut b);
    }
    (s, b)
}

/// Median of the pairwise ratios `big[i] / small[i]`.
fn ratio(small: &[f64], big: &[f64]) -> f64 {
    let mut r: Vec<f64> = small.iter().zip(big).map(|(s, b)| b / s).collect();
    summary(&mut r).1
}

fn row(label: &str, (mut small, mut big): (Series, Series)) {
    let cold_ratio = ratio(&small.cold, &big.cold);
    let (c0, c1, c2) = summary(&mut small.cold);
    let (b0, b1, b2) = summary(&mut big.cold);
    println!(
        "| {label}: cold (stopped actor → reply) | {c1:.1} ({c0:.1}–{c2:.1}) | {b1:.1} ({b0:.1}–{b2:.1}) | {cold_ratio:.2} × |"
    );
    if !small.warm.is_empty() {
        let warm_ratio = ratio(&small.warm, &big.warm);
        let (w0, w1, w2) = summary(&mut small.warm);
        let (x0, x1, x2) = summary(&mut big.warm);
        println!(
            "| {label}: warm round trip | {w1:.1} ({w0:.1}–{w2:.1}) | {x1:.1} ({x0:.1}–{x2:.1}) | {warm_ratio:.2} × |"
        );
    }
}

/// The idle state of a prepared (restart-state) data dir, as a copy.
fn idle_copy(restart: &Path, to: &Path) -> PathBuf {
    copy_dir(restart, to);
    history::settle_idle(to, &history::main_session_dir(to));
    to.to_path_buf()
}

fn main() {
    if let Ok(keep) = std::env::var("NANOCLAW_BENCH_KEEP") {
        let root = Path::new(&keep);
        std::fs::create_dir_all(root).unwrap();
        let process = ["--runtime", "process"];
        let small = prepared(root, "restart-10", &process, 10);
        let big = prepared(root, "restart-100k", &process, 100_000);
        idle_copy(&small, &root.join("idle-10"));
        idle_copy(&big, &root.join("idle-100k"));
        println!("prepared under {}", root.display());
        return;
    }
    let dir = short_tempdir();
    let process = ["--runtime", "process"];
    let small_restart = prepared(dir.path(), "p10", &process, 10);
    let big_restart = prepared(dir.path(), "p100k", &process, 100_000);
    let small = idle_copy(&small_restart, &dir.path().join("i10"));
    let big = idle_copy(&big_restart, &dir.path().join("i100k"));
    let work = dir.path().join("run");

    println!(
        "## Session start after a long history, run of {}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("Machine: {}. Binary: {}.\n", machine(), nanoclaw_bin().display());
    println!("| measure (ms, median (min–max)) | 10 turns | 100,000 turns | ratio (median of pairs) |");
    println!("|---|---|---|---|");
    row("process runtime, idle session, 15 starts", paired(&small, &big, &work, &process, 15, 5, false));
    row(
        "process runtime, after a restart, 10 starts",
        paired(&small_restart, &big_restart, &work, &process, 10, 0, false),
    );

    if std::env::var("NANOCLAW_BENCH_V1").is_ok_and(|v| v == "1") {
        row(
            "process runtime, schema-1 DBs (first pass walks the history)",
            paired(&small, &big, &work, &process, 5, 0, true),
        );
    }

    if docker_available() {
        let dsmall = idle_copy(&prepared(dir.path(), "d10", &[], 10), &dir.path().join("di10"));
        let dbig = idle_copy(&prepared(dir.path(), "d100k", &[], 100_000), &dir.path().join("di100k"));
        row("Docker runtime, idle session, 7 starts", paired(&dsmall, &dbig, &work, &[], 7, 3, false));
    }
    let size = |p: &Path, f: &str| {
        std::fs::metadata(history::main_session_dir(p).join(f)).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0)
    };
    println!(
        "\nSession DB sizes at 100,000 turns: inbound.db {:.1} MB, outbound.db {:.1} MB.",
        size(&big, "host/inbound.db"),
        size(&big, "workspace/outbound.db")
    );
}
