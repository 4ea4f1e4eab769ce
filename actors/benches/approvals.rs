//! Approvals (issue 8), in-process with the real router, approval actors and central store (real
//! SQLite on this disk):
//!
//! 1. **Click to execution**: a stranger writes in a `request_approval` chat, the card goes to the
//!    group admin's DM of a memory channel with buttons, the admin clicks. Reported: the click's
//!    round trip (until the clicking user is answered), and click to execution (the sender is a
//!    member and their stored message was routed into the session: `decided_at` to the row's
//!    last update), p50 / p99. No image build is involved.
//! 2. **Restore**: `APPROVALS_RESTORE` (default 1,000) open approvals with their cards out, then
//!    a start: time until every one has its actor back, and the process's resident memory before
//!    the start, after it, and per approval.
//!
//! ```sh
//! cargo bench -p nanoclaw-actors --bench approvals   # APPROVALS_CLICKS (default 300)
//! ```

// A benchmark driver: blocking setup and sleeps are intended here.
#![allow(clippy::disallowed_methods)]

use nanoclaw_actors::ports::channel::InboundEvent;
use nanoclaw_actors::store::{
    self, EngageMode, IgnoredPolicy, NewWiring, RoleScope, SenderScope, SessionMode, UnknownSenderPolicy,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

async fn start(dir: &Path, channel: &MemoryChannel) -> Service {
    let mut config = ServiceConfig::new(dir.join("data"), "approvals-bench");
    config.min_free_bytes = 0;
    let service =
        Service::start(config, Arc::new(FakeRuntime::idle()), vec![Arc::new(channel.clone())]).await.unwrap();
    while channel.starts() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service
}

async fn click_to_execution(clicks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    service
        .store()
        .call(|c| {
            store::upsert_user(c, "mem:boss", "mem", None)?;
            store::grant_role(
                c,
                "mem:boss",
                store::Role::Admin,
                &RoleScope::AgentGroup(store::MAIN_AGENT_GROUP_ID.into()),
                "bench",
            )?;
            let mg = store::create_messaging_group(
                c,
                "mem",
                "team",
                None,
                true,
                UnknownSenderPolicy::RequestApproval,
            )?;
            store::create_wiring(
                c,
                &NewWiring {
                    messaging_group_id: mg.id,
                    agent_group_id: store::MAIN_AGENT_GROUP_ID.into(),
                    session_mode: SessionMode::Shared,
                    engage_mode: EngageMode::Pattern,
                    engage_pattern: Some(".".into()),
                    sender_scope: SenderScope::All,
                    ignored_message_policy: IgnoredPolicy::Accumulate,
                    priority: 0,
                },
            )
        })
        .await
        .unwrap();
    let db = rusqlite::Connection::open(dir.path().join("data/nanoclaw.db")).unwrap();
    let mut round_trips = vec![];
    for i in 0..clicks {
        let who = format!("s{i}");
        channel
            .submit_event(InboundEvent {
                channel_type: "mem".into(),
                platform_id: "team".into(),
                thread_id: None,
                platform_message_id: format!("m{i}"),
                sender_id: Some(who.clone()),
                sender_name: None,
                text: "may I?".into(),
                is_mention: false,
                is_group: true,
                chat_name: None,
            })
            .await
            .unwrap();
        let card = loop {
            if let Some((_, card, _)) = channel.choices().into_iter().nth(i) {
                break card;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let t = Instant::now();
        let answer = channel.click("boss", "boss", &card.options[0].callback).await.unwrap();
        round_trips.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(answer.starts_with("approved"), "{answer}");
    }
    // Wait for the last executions, then read decided → executed from the rows.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: i64 = db
            .query_row("SELECT count(*) FROM pending_approvals WHERE status <> 'executed'", [], |r| r.get(0))
            .unwrap();
        if left == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut executions: Vec<f64> = db
        .prepare("SELECT decided_at, updated_at FROM pending_approvals WHERE status = 'executed'")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (d, u) = r.unwrap();
            let d = nanoclaw_protocol::time::parse_ts(&d).unwrap();
            let u = nanoclaw_protocol::time::parse_ts(&u).unwrap();
            (u - d).num_microseconds().unwrap_or(0) as f64 / 1000.0
        })
        .collect();
    round_trips.sort_by(f64::total_cmp);
    executions.sort_by(f64::total_cmp);
    println!(
        "click to execution over {} approvals: click answered p50 {:.2} ms, p99 {:.2} ms; decided to executed p50 {:.1} ms, p99 {:.1} ms (timestamps in ms)",
        executions.len(),
        percentile(&round_trips, 0.5),
        percentile(&round_trips, 0.99),
        percentile(&executions, 0.5),
        percentile(&executions, 0.99),
    );
    service.shutdown(Duration::from_secs(10)).await;
}

async fn restore(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    start(dir.path(), &channel).await.shutdown(Duration::from_secs(10)).await;
    {
        let mut c = rusqlite::Connection::open(dir.path().join("data/nanoclaw.db")).unwrap();
        let tx = c.transaction().unwrap();
        let now = nanoclaw_protocol::time::now_ts();
        let expires = nanoclaw_protocol::time::format_ts(chrono::Utc::now() + chrono::Duration::hours(1));
        for i in 0..n {
            tx.execute(
                "INSERT INTO pending_approvals (approval_id, kind, action, request_id, payload, payload_hash, status,
                   card_channel_type, card_platform_id, created_at, expires_at, updated_at)
                 VALUES (?1, 'action', 'add_mcp_server', ?2, '{}', 'x', 'pending', 'mem', 'boss', ?3, ?4, ?3)",
                rusqlite::params![store::approval_id_of(10_000_000 + i as u32), format!("r{i}"), now, expires],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let before = rss();
    let t = Instant::now();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    let started = t.elapsed();
    loop {
        if service.approvals().live().await == Some(n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let restored = t.elapsed();
    let after = rss();
    println!(
        "restore of {n} open approvals: service started in {:.0} ms, every actor back after {:.0} ms; resident memory {:.1} MiB before the start, {:.1} MiB after ({:.1} KiB per approval, the rest of the tree included)",
        started.as_secs_f64() * 1000.0,
        restored.as_secs_f64() * 1000.0,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0 / n as f64,
    );
    service.shutdown(Duration::from_secs(30)).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(click_to_execution(env_usize("APPROVALS_CLICKS", 300)));
    rt.block_on(restore(env_usize("APPROVALS_RESTORE", 1000)));
}
