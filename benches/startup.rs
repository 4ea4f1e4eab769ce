//! Start-up of `nanoclaw serve` (issue 3): time from spawn to the first connection `cli.sock`
//! accepts (the CLI channel binds last, after the store, the runtime and the session supervisor,
//! so an accepted connection means messages are taken), CPU used by then, and memory — the
//! start-up peak (`VmHWM`) against the steady resident set (`VmRSS` 3 s later).
//!
//! Scenarios, each with the process runtime (no Docker in the figure) and, when Docker answers,
//! the Docker runtime (its image already built: the build is a one-time cost, done in a warm-up):
//! - `fresh`: an empty data directory (DB created, migrated, first-run rows);
//! - `restart`: the same directory again (DB present, nothing to resume);
//! - `1000/100`: 1,000 sessions of which 100 have a message waiting (`work_pending = 1`), restored
//!   from a pristine copy before each run.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench startup
//! ```
//!
//! Prints a Markdown table for BENCHMARKS.md. Informational: nothing here asserts a number.

// A synchronous driver of a separate process: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixtures/sessions.rs"]
mod sessions;
mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

/// Runs per scenario.
const RUNS: usize = 15;

struct Sample {
    ready_ms: f64,
    cpu_at_ready_ms: f64,
    hwm_at_ready_kib: u64,
    hwm_kib: u64,
    rss_kib: u64,
    threads: usize,
}

/// One start: ready time, CPU and memory at ready, then peak and resident set 3 s later.
fn one_start(data: &Path, args: &[&str]) -> Sample {
    let (server, ready) = start_timed(data, args, &[("NANOCLAW_LOG_LEVEL", "info")]);
    let pid = server.child.id();
    let cpu_at_ready_ms = cpu_ms(pid);
    let hwm_at_ready_kib = status_kib(pid, "VmHWM");
    std::thread::sleep(Duration::from_secs(3));
    let sample = Sample {
        ready_ms: ready.as_secs_f64() * 1000.0,
        cpu_at_ready_ms,
        hwm_at_ready_kib,
        hwm_kib: status_kib(pid, "VmHWM"),
        rss_kib: status_kib(pid, "VmRSS"),
        threads: thread_count(pid),
    };
    assert!(server.stop().success());
    sample
}

fn report(name: &str, runtime: &str, samples: &mut [Sample]) {
    let mut ready: Vec<f64> = samples.iter().map(|s| s.ready_ms).collect();
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu_at_ready_ms).collect();
    let mut hwm_ready: Vec<f64> = samples.iter().map(|s| s.hwm_at_ready_kib as f64 / 1024.0).collect();
    let mut hwm: Vec<f64> = samples.iter().map(|s| s.hwm_kib as f64 / 1024.0).collect();
    let mut rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let mut threads: Vec<f64> = samples.iter().map(|s| s.threads as f64).collect();
    let (r0, r1, r2) = summary(&mut ready);
    println!(
        "| {name} | {runtime} | {r1:.1} ({r0:.1}–{r2:.1}) | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
        summary(&mut cpu).1,
        summary(&mut hwm_ready).1,
        summary(&mut hwm).1,
        summary(&mut rss).1,
        summary(&mut threads).1,
    );
}

/// A data dir the service created (first-run rows), stopped.
fn bootstrapped(data: &Path, args: &[&str]) {
    let (server, _) = start_timed(data, args, &[]);
    assert!(server.stop().success());
}

/// What the Docker runtime does at every start before it asks Docker whether the image exists:
/// `ldd` on the agent binary, read it and its libraries, build the tar, hash it. Median of 20.
fn image_context_cost() -> (f64, f64) {
    let agent = common::agent_bin();
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = std::time::Instant::now();
            let ctx = nanoclaw::runtime::image::minimal_context(&agent).unwrap();
            std::hint::black_box(&ctx);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let size = nanoclaw::runtime::image::minimal_context(&agent).unwrap().tar.len() as f64 / 1e6;
    (summary(&mut ms).1, size)
}

fn main() {
    let docker = common::docker_available();
    let runtimes: Vec<(&str, Vec<&str>)> = if docker {
        vec![("process", vec!["--runtime", "process"]), ("docker", vec![])]
    } else {
        vec![("process", vec!["--runtime", "process"])]
    };
    let dir = common::short_tempdir();
    println!("## Start-up, run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!("Machine: {}. Binary: {}. {RUNS} runs each.\n", machine(), common::nanoclaw_bin().display());
    println!(
        "| data dir | runtime | ready ms, median (min–max) | CPU ms at ready | VmHWM MB at ready | VmHWM MB at +3 s | VmRSS MB at +3 s | threads |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (runtime, args) in &runtimes {
        // Warm-up: builds the image once (Docker) and fills the page cache with the binaries.
        let warm = dir.path().join(format!("warm-{runtime}"));
        bootstrapped(&warm, args);

        let mut fresh: Vec<Sample> = (0..RUNS)
            .map(|i| {
                let data = dir.path().join(format!("fresh-{runtime}-{i}"));
                let s = one_start(&data, args);
                let _ = std::fs::remove_dir_all(&data);
                s
            })
            .collect();
        report("fresh (empty)", runtime, &mut fresh);

        let data = dir.path().join(format!("restart-{runtime}"));
        bootstrapped(&data, args);
        let mut restart: Vec<Sample> = (0..RUNS).map(|_| one_start(&data, args)).collect();
        report("restart (no sessions)", runtime, &mut restart);

        let pristine = dir.path().join(format!("pristine-{runtime}"));
        bootstrapped(&pristine, args);
        sessions::seed_sessions(&pristine, 0, 900, sessions::Work::Idle);
        sessions::seed_sessions(&pristine, 900, 100, sessions::Work::PendingMessage);
        let data = dir.path().join(format!("big-{runtime}"));
        let mut big: Vec<Sample> = (0..RUNS)
            .map(|_| {
                copy_dir(&pristine, &data);
                let s = one_start(&data, args);
                common::remove_containers_of(&data);
                s
            })
            .collect();
        report("1,000 sessions, 100 pending", runtime, &mut big);
    }
    let (ms, mb) = image_context_cost();
    println!(
        "\nThe Docker runtime's image check at each start (`ldd`, read, tar and hash of the agent binary and its libraries, a {mb:.1} MB build context, measured in this process): median {ms:.1} ms."
    );
}
