//! Idle cost (issue 3): host CPU over 60 s with 1,000 sessions of which 10 have a live, idle
//! container (each answered a message; containers idle out after 30 min) and 990 exist idle.
//!
//! The 10 live sessions are 10 agent groups wired to the CLI chat (tests/fixtures/sessions.rs):
//! one CLI message engages all ten, so each session spawns its container and answers. The other
//! 990 are sessions of their own chats with nothing pending. After the replies and a 5 s settle,
//! the service's CPU time (`/proc/<pid>/stat` user + system) and context switches (all threads)
//! are read before and after 60 s; the agents' own CPU (the runner processes, or the containers'
//! cgroups) is given beside it.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench idle
//! ```

// A synchronous driver of separate processes: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixtures/sessions.rs"]
mod sessions;
mod support;

use common::*;
use std::path::Path;
use std::time::Duration;
use support::*;

const WINDOW: Duration = Duration::from_secs(60);

/// CPU ms of the agent processes of a process-runtime service (its children).
fn children_cpu_ms(pid: u32) -> f64 {
    let out = std::process::Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .map(cpu_ms)
        .sum()
}

/// CPU ms of a Docker container's cgroup (cgroup v1 `cpuacct.usage`, or v2 `cpu.stat`).
fn container_cpu_ms(id: &str) -> f64 {
    let full = docker(&["inspect", "--format", "{{.Id}}", id]);
    for path in [
        format!("/sys/fs/cgroup/cpuacct/docker/{full}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{full}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpuacct/system.slice/docker-{full}.scope/cpuacct.usage"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return s.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
        }
    }
    for path in [
        format!("/sys/fs/cgroup/system.slice/docker-{full}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{full}/cpu.stat"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&path) {
            let usec = s
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            return usec.unwrap_or(0.0) / 1000.0;
        }
    }
    f64::NAN
}

fn pid_of(name: &str) -> Option<u32> {
    let out = std::process::Command::new("pgrep").args(["-x", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
}

fn measure(root: &Path, runtime: &str, args: &[&str]) {
    let data = root.join(format!("idle-{runtime}"));
    let server = Server::start(&data, args, &[("NANOCLAW_LOG_LEVEL", "warn")]);
    assert!(server.stop().success());
    sessions::fan_out_cli(&data, 9);
    sessions::seed_sessions(&data, 0, 990, sessions::Work::Idle);

    let server = Server::start(&data, args, &[("NANOCLAW_LOG_LEVEL", "info")]);
    let pid = server.child.id();
    let mut c = server.client();
    c.send("wake-all", "hello");
    // One `done` per engaged session. Replies are counted, not awaited: two sessions may write
    // the same reply id in the same millisecond, and the CLI channel then drops the second
    // (see BENCHMARKS.md, issue 3).
    let (mut dones, mut replies) = (0, 0);
    while dones < 10 {
        let f = c.until(Duration::from_secs(120), |f| {
            (f["type"] == "done" && f["id"] == "wake-all")
                || (f["type"] == "reply" && f["in_reply_to"] == "wake-all")
        });
        if f.last().unwrap()["type"] == "done" {
            dones += 1;
        } else {
            replies += 1;
        }
    }
    replies += c.drain(Duration::from_millis(500)).iter().filter(|f| f["type"] == "reply").count();
    eprintln!("{runtime}: 10 sessions done, {replies} replies shown");
    let install = nanoclaw::daemon::install_id(&data);
    let containers = if runtime == "docker" { containers_of(&install) } else { vec![] };
    if runtime == "docker" {
        assert_eq!(containers.len(), 10, "ten live containers");
    }
    std::thread::sleep(Duration::from_secs(5));

    let agents_cpu = |containers: &[String]| -> f64 {
        if runtime == "docker" {
            containers.iter().map(|id| container_cpu_ms(id)).sum()
        } else {
            children_cpu_ms(pid)
        }
    };
    let dockerd = pid_of("dockerd");
    let containerd = pid_of("containerd");
    let cpu0 = cpu_ms(pid);
    let threads0 = threads(pid);
    let agents0 = agents_cpu(&containers);
    let dockerd0 = dockerd.map(cpu_ms);
    let containerd0 = containerd.map(cpu_ms);
    std::thread::sleep(WINDOW);
    let cpu1 = cpu_ms(pid);
    let threads1 = threads(pid);
    let agents1 = agents_cpu(&containers);
    let (switches, on_cpu, busiest) = thread_delta(&threads0, &threads1);
    let rss = status_kib(pid, "VmRSS") as f64 / 1024.0;
    let secs = WINDOW.as_secs_f64();
    println!(
        "| {runtime} | {:.0} ms ({:.3} % of one core); live threads {on_cpu:.1} ms | {:.1}/s | {} | {rss:.1} MB | {:.0} ms |{}",
        cpu1 - cpu0,
        (cpu1 - cpu0) / (secs * 10.0),
        switches as f64 / secs,
        threads1.len(),
        agents1 - agents0,
        match (dockerd0, dockerd.map(cpu_ms), containerd0, containerd.map(cpu_ms)) {
            (Some(a), Some(b), Some(x), Some(y)) if runtime == "docker" => {
                format!(" dockerd {:.0} ms, containerd {:.0} ms |", b - a, y - x)
            }
            _ => " — |".into(),
        }
    );
    let busy: Vec<String> =
        busiest.iter().take(8).map(|(name, cs, ms)| format!("{name} {ms:.1} ms/{cs} switches")).collect();
    eprintln!("{runtime}: threads active in the window: {}", busy.join(", "));
    drop(c);
    assert!(server.stop().success());
}

fn main() {
    let dir = short_tempdir();
    println!("## Idle cost, run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!(
        "Machine: {}. Binary: {}. Window: {} s.\n",
        machine(),
        nanoclaw_bin().display(),
        WINDOW.as_secs()
    );
    println!(
        "| runtime | host CPU in the window | host context switches | host threads | host VmRSS | agents' CPU (10) | daemon CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    if docker_available() {
        measure(dir.path(), "docker", &[]);
    }
    measure(dir.path(), "process", &["--runtime", "process"]);
}
