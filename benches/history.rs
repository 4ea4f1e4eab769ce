//! Session start after a long history (issue 3): the time from a message to a session whose actor
//! is stopped to its reply, with the session's DBs holding 10 against 100,000 finished turns, and
//! the warm round trip that follows. Target: 100,000 within 2 × of 10.
//!
//! The history is one real turn cloned (tests/fixtures/history.rs: exactly the rows the service
//! and the runner wrote for it, cursors past them). Each run starts `nanoclaw serve` on a fresh
//! copy of the data directory, so every run sees exactly 10 or 100,000 turns and no session actor
//! (the session's `work_pending` is 0: start-up resumes nothing). A cold message then spawns the
//! session actor, which resumes from the files, spawns the agent and delivers its reply.
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

struct Series {
    cold: Vec<f64>,
    warm: Vec<f64>,
}

/// `runs` starts on copies of `pristine`: one cold message, then `warm` warm ones, per start.
fn series(pristine: &Path, work: &Path, args: &[&str], runs: usize, warm: usize, v1: bool) -> Series {
    let mut s = Series { cold: vec![], warm: vec![] };
    for i in 0..runs {
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
    s
}

fn row(label: &str, small: &mut Series, big: &mut Series) {
    let (c0, c1, c2) = summary(&mut small.cold);
    let (b0, b1, b2) = summary(&mut big.cold);
    println!(
        "| {label}: cold (stopped actor → reply) | {c1:.1} ({c0:.1}–{c2:.1}) | {b1:.1} ({b0:.1}–{b2:.1}) | {:.2} × |",
        b1 / c1
    );
    if !small.warm.is_empty() {
        let (w0, w1, w2) = summary(&mut small.warm);
        let (x0, x1, x2) = summary(&mut big.warm);
        println!(
            "| {label}: warm round trip | {w1:.1} ({w0:.1}–{w2:.1}) | {x1:.1} ({x0:.1}–{x2:.1}) | {:.2} × |",
            x1 / w1
        );
    }
}

fn main() {
    let dir = short_tempdir();
    let process = ["--runtime", "process"];
    let small = prepared(dir.path(), "p10", &process, 10);
    let big = prepared(dir.path(), "p100k", &process, 100_000);
    let work = dir.path().join("run");

    println!(
        "## Session start after a long history, run of {}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("Machine: {}. Binary: {}.\n", machine(), nanoclaw_bin().display());
    println!("| measure (ms, median (min–max)) | 10 turns | 100,000 turns | ratio |");
    println!("|---|---|---|---|");
    let mut s = series(&small, &work, &process, 15, 5, false);
    let mut b = series(&big, &work, &process, 15, 5, false);
    row("process runtime, 15 starts", &mut s, &mut b);

    if std::env::var("NANOCLAW_BENCH_V1").is_ok_and(|v| v == "1") {
        let mut s1 = series(&small, &work, &process, 5, 0, true);
        let mut b1 = series(&big, &work, &process, 5, 0, true);
        row("process runtime, schema-1 DBs (first pass walks the history)", &mut s1, &mut b1);
    }

    if docker_available() {
        let dsmall = prepared(dir.path(), "d10", &[], 10);
        let dbig = prepared(dir.path(), "d100k", &[], 100_000);
        let mut s = series(&dsmall, &work, &[], 7, 3, false);
        let mut b = series(&dbig, &work, &[], 7, 3, false);
        row("Docker runtime, 7 starts", &mut s, &mut b);
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
