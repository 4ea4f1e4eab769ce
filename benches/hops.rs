//! Where a turn's time goes: the stages of one message through the real binary, from the log
//! lines the host and the runner write at each hop (`hop: …` at debug level, plus the runner's
//! `turn started` / `turn committed`, the CLI channel's `cli frame stored` and `delivered`).
//!
//! Runs on the process runtime by default (`NANOCLAW_AGENT_LOG=debug` for the runner, whose log
//! lands in the service's); with `HOPS_RUNTIME=docker` on Docker, the runner's lines then read
//! back with `docker logs` (a container shares the host's clock). The echo provider, so the model
//! takes no time. 200 turns after 20 of warm-up, one at a time; for each stage, the p50 of the
//! time since the stage before it in the same turn.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench hops
//! HOPS_RUNTIME=docker cargo bench --bench hops
//! ```
//!
//! Prints a Markdown report for BENCHMARKS.md. Informational: nothing here asserts a number.

// A synchronous driver of a separate process: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::*;

/// The stages, in the order one message passes them: (what the log line says, its label).
const STAGES: [(&str, &str); 9] = [
    ("hop: cli message received", "CLI channel read the message"),
    ("hop: ledger committed", "router: ledger row committed"),
    ("hop: container woken", "session: inbound.db written, wake byte sent"),
    ("turn started", "runner: woken, batch claimed"),
    ("turn committed", "runner: reply committed to outbound.db"),
    ("hop: outbox pass", "host: OUTPUT byte seen, outbox pass starts"),
    ("cli frame stored", "outbox read and checked, CLI reply stored"),
    ("delivered", "channel returned"),
    ("hop: ledger batch committed", "delivery recorded (inbound.db)"),
];

const TURNS: usize = 200;

/// Seconds since midnight of an RFC 3339 UTC timestamp (`2026-12-03T03:05:48.165056Z`).
fn seconds(ts: &str) -> Option<f64> {
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// (seconds, message) of one log line: the host's JSON lines and the runner's text lines.
fn event(line: &str) -> Option<(f64, String)> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return Some((seconds(v["timestamp"].as_str()?)?, v["message"].as_str()?.to_string()));
    }
    // `2026-12-03T03:05:48.165056Z  INFO nanoclaw_agent::runner: turn started batch=1 …`
    let (ts, rest) = line.split_once(' ')?;
    let message = rest.split_once(": ")?.1;
    Some((seconds(ts)?, message.to_string()))
}

fn main() {
    let docker = std::env::var("HOPS_RUNTIME").is_ok_and(|r| r == "docker");
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let runtime: &[&str] = if docker { &[] } else { &["--runtime", "process"] };
    let args: Vec<&str> = runtime.iter().copied().chain(["--log-format", "json"]).collect();
    let server =
        Server::start(&data, &args, &[("NANOCLAW_LOG_LEVEL", "debug"), ("NANOCLAW_AGENT_LOG", "debug")]);
    let mut c = server.client();
    for i in 0..20 {
        support::round_trip(&mut c, &format!("warm-{i}"));
    }
    let mut totals: Vec<f64> = (0..TURNS).map(|i| support::round_trip(&mut c, &format!("t-{i}")).0).collect();
    drop(c);
    let mut log = server.log();
    if docker {
        log = merge_container_log(&log);
    }
    assert!(server.stop().success());

    // Split the log into turns at each message received; keep the measured ones (the last TURNS).
    let mut turns: Vec<Vec<(f64, String)>> = vec![];
    for (t, message) in log.lines().filter_map(event) {
        if message.starts_with(STAGES[0].0) {
            turns.push(vec![]);
        }
        if let Some(turn) = turns.last_mut() {
            turn.push((t, message));
        }
    }
    let measured = &turns[turns.len().saturating_sub(TURNS)..];
    if std::env::var("HOPS_DUMP").is_ok_and(|v| v == "1")
        && let Some(turn) = measured.last()
    {
        // Every line of the last turn, in ms since its first: to find what a stage spends.
        for (t, message) in turn {
            eprintln!(
                "{:8.3} ms  {}",
                (t - turn[0].0) * 1000.0,
                message.chars().take(160).collect::<String>()
            );
        }
    }
    let mut per_stage: Vec<Vec<f64>> = vec![vec![]; STAGES.len()];
    let mut complete = 0;
    for turn in measured {
        // Each stage's first line at or after the stage before it (an outbox pass may also run
        // earlier in the turn, on the runner's claim).
        let mut at: Vec<Option<f64>> = Vec::with_capacity(STAGES.len());
        for (needle, _) in STAGES {
            let after = at.last().copied().flatten().unwrap_or(f64::MIN);
            at.push(turn.iter().find(|(t, m)| *t >= after && m.starts_with(needle)).map(|(t, _)| *t));
        }
        if at.iter().any(Option::is_none) {
            continue;
        }
        complete += 1;
        for i in 1..STAGES.len() {
            per_stage[i].push((at[i].unwrap() - at[i - 1].unwrap()) * 1000.0);
        }
        per_stage[0].push((at[STAGES.len() - 1].unwrap() - at[0].unwrap()) * 1000.0);
    }

    println!("## Run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!(
        "Machine: {}. Binary: {}. {} runtime, echo provider, {complete} of {TURNS} turns with every stage logged.\n",
        support::machine(),
        nanoclaw_bin().display(),
        if docker { "Docker" } else { "Process" }
    );
    println!("| stage (time since the stage before) | p50 | p90 |");
    println!("|---|---|---|");
    for (i, (_, label)) in STAGES.iter().enumerate().skip(1) {
        let v = &mut per_stage[i];
        if v.is_empty() {
            continue;
        }
        let (_, p50, _) = support::summary(v);
        println!("| {label} | {p50:.2} ms | {:.2} ms |", support::percentile(v, 0.9));
    }
    if !per_stage[0].is_empty() {
        let (_, p50, _) = support::summary(&mut per_stage[0]);
        println!(
            "| **message read → delivery recorded** | **{p50:.2} ms** | {:.2} ms |",
            support::percentile(&per_stage[0], 0.9)
        );
    }
    let (_, t50, _) = support::summary(&mut totals);
    println!(
        "| client: message sent → reply read (debug logging on) | {t50:.2} ms | {:.2} ms |",
        support::percentile(&totals, 0.9)
    );
}

/// The service's log with the runner's lines (`docker logs` of the session's container) put in
/// time order among them.
fn merge_container_log(log: &str) -> String {
    let session = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"].as_str().or(v["message"].as_str()) == Some("hop: container woken"))
        .and_then(|v| v["fields"]["session"].as_str().or(v["session"].as_str()).map(str::to_string))
        .expect("a session was woken");
    let ids = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=nanoclaw.session={session}")])
        .output()
        .expect("docker ps");
    let mut lines: Vec<(f64, String)> =
        log.lines().filter_map(|l| Some((event(l)?.0, l.to_string()))).collect();
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let out = std::process::Command::new("docker").args(["logs", id]).output().expect("docker logs");
        for l in
            String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            if let Some((t, _)) = event(l) {
                lines.push((t, l.to_string()));
            }
        }
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}
