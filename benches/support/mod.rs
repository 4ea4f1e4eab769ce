//! Helpers of the benchmarks: process figures from `/proc`, summaries, a service started with a
//! fine-grained readiness wait, and a copy of a data directory.
#![allow(dead_code)]
// A synchronous driver of separate processes: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A value of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process (all its threads), in milliseconds, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let hz = clock_ticks_per_second();
    (ticks(11) + ticks(12)) as f64 * 1000.0 / hz
}

fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// Per thread (`name/tid`): context switches (voluntary + involuntary) and time on a CPU in
/// milliseconds (`/proc/<pid>/task/<tid>/schedstat`, nanosecond resolution).
pub fn threads(pid: u32) -> std::collections::BTreeMap<String, (u64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let name = status.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("?").trim().to_string();
            let switches: u64 = status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            let on_cpu_ns: f64 = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0);
            out.insert(format!("{name}/{}", t.file_name().to_string_lossy()), (switches, on_cpu_ns / 1e6));
        }
    }
    out
}

/// What the threads of `after` did since `before`: context switches and on-CPU ms summed (a
/// thread born in between counts from zero; one that ended in between is missing), and every
/// thread that did something, busiest first.
pub fn thread_delta(
    before: &std::collections::BTreeMap<String, (u64, f64)>,
    after: &std::collections::BTreeMap<String, (u64, f64)>,
) -> (u64, f64, Vec<(String, u64, f64)>) {
    let mut rows: Vec<(String, u64, f64)> = after
        .iter()
        .map(|(k, (cs, ms))| {
            let (cs0, ms0) = before.get(k).copied().unwrap_or((0, 0.0));
            (k.clone(), cs.saturating_sub(cs0), ms - ms0)
        })
        .filter(|(_, cs, ms)| *cs > 0 || *ms > 0.0)
        .collect();
    rows.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
    (rows.iter().map(|r| r.1).sum(), rows.iter().map(|r| r.2).sum(), rows)
}

/// Number of threads of a process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// min, median, max of a sample (sorted in place).
pub fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], percentile(v, 0.5), v[v.len() - 1])
}

/// The `p` quantile (nearest rank) of a sorted sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// One message on an open connection: milliseconds until its reply frame, and whether its `done`
/// frame came before the reply (it should not: see BENCHMARKS.md, issue 3). Waits for both.
pub fn round_trip(c: &mut crate::common::Client, id: &str) -> (f64, bool) {
    let start = Instant::now();
    c.send(id, "ping");
    let (mut reply, mut done) = (None, false);
    let mut done_first = false;
    while reply.is_none() || !done {
        let frames = c.until(Duration::from_secs(120), |f| {
            (f["type"] == "reply" && f["in_reply_to"] == id) || (f["type"] == "done" && f["id"] == id)
        });
        let last = frames.last().unwrap();
        if last["type"] == "reply" {
            reply = Some(start.elapsed().as_secs_f64() * 1000.0);
        } else {
            done_first |= reply.is_none();
            done = true;
        }
    }
    (reply.unwrap(), done_first)
}

/// Milliseconds of `runs` bare `docker run --rm --network none <image>` (the runner exits at once
/// without its mounts): the floor a cold round trip is compared with.
pub fn bare_docker_runs(image: &str, runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let _ = std::process::Command::new("docker")
                .args(["run", "--rm", "--network", "none", image])
                .output()
                .unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Starts `nanoclaw serve` and waits for `cli.sock` to accept a connection, trying every 250 µs.
/// Returns the server and the time from just before the spawn to the first accepted connection.
pub fn start_timed(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (crate::common::Server, Duration) {
    let log = std::fs::File::create(crate::common::log_path(data_dir)).unwrap();
    let mut cmd = crate::common::nanoclaw(data_dir);
    cmd.args(args).arg("serve").stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let sock = data_dir.join("cli.sock");
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let server = crate::common::Server { child, data_dir: data_dir.to_path_buf() };
    loop {
        if UnixStream::connect(&sock).is_ok() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "service did not come up; log: {}", server.log());
        std::thread::sleep(Duration::from_micros(250));
    }
    let ready = start.elapsed();
    (server, ready)
}

/// Copies a data directory (`cp -a`), replacing `to`, and flushes the copy to disk: otherwise
/// the service's first `fsync` of a copied SQLite file writes the whole copy (26 ms for a
/// 48 MB `inbound.db` here) and the measurement times the copy, not the service.
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
    let ok = std::process::Command::new("sync").arg("-f").arg(to).status().unwrap().success();
    assert!(ok, "sync -f {}", to.display());
}

/// `N cores (model), kernel K` of this machine.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores ({model}), kernel {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel.trim()
    )
}
