//! Durable routing throughput and latency (issue 7): the real router, central store and session
//! files (real SQLite on this disk), in-process, with a 10⁶-key ledger.
//!
//! 34 group chats, each wired to the same 3 agent groups (102 sessions), take messages from a
//! memory channel: every message is committed to the ledger, decided in one transaction, written
//! into 3 sessions' `inbound.db` (concurrently), and finished in one transaction. The wirings
//! accumulate (`trigger = 0`), so no container starts: the figure is routing alone. One task per
//! chat submits its messages one after another, waiting for each ack as a platform adapter does;
//! the chats run concurrently. `ROUTING_INFLIGHT=k` lets each chat have k messages in flight (a
//! platform handing over a burst): the channel routes what queued up for a chat as one batch, one
//! session commit per batch.
//!
//! Reported: messages per second over the run, and p50 / p99 submit-to-ack latency. Fsyncs per
//! message: run it under `strace -f -c -e trace=fsync,fdatasync` with a small
//! `ROUTING_MESSAGES` and divide.
//!
//! ```sh
//! cargo bench -p nanoclaw-actors --bench routing            # ROUTING_MESSAGES (default 3000)
//! ```

// A benchmark driver: blocking setup and sleeps are intended here.
#![allow(clippy::disallowed_methods)]

use nanoclaw_actors::ports::channel::InboundEvent;
use nanoclaw_actors::store::{
    self, EngageMode, IgnoredPolicy, NewWiring, SenderScope, SessionMode, UnknownSenderPolicy,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHATS: usize = 34;
const AGENTS: usize = 3;
/// Finished ledger keys before the run (`ROUTING_LEDGER_KEYS`, default 10⁶; 0 for quick
/// syscall counts).
const LEDGER_KEYS: usize = 1_000_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Fills the ledger with `n` finished keys, as a week of traffic would leave them.
fn fill_ledger(path: &std::path::Path, n: usize) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO inbound_ledger (id, channel_type, platform_message_id, platform_id, event, status, trace_id, received_at, routed_at)
                 VALUES (?1, 'mem', ?2, ?3, '', 'routed', 't', ?4, ?4)",
            )
            .unwrap();
        let now = nanoclaw_protocol::time::now_ts();
        for i in 0..n {
            st.execute(rusqlite::params![
                format!("in-old-{i}"),
                format!("old-{i}"),
                format!("chat-{}", i % CHATS),
                now
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn main() {
    let messages: usize = std::env::var("ROUTING_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let inflight: usize =
        std::env::var("ROUTING_INFLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let keys: usize =
        std::env::var("ROUTING_LEDGER_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(LEDGER_KEYS);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let base = std::env::current_dir().unwrap().join("target/bench-routing");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let data = dir.path().join("data");
    rt.block_on(async {
        let channel = MemoryChannel::new("mem");
        let mut config = ServiceConfig::new(&data, "bench-routing");
        config.min_free_bytes = 0;
        // First start: schema, agent groups, chats and wirings.
        let service =
            Service::start(config.clone(), Arc::new(FakeRuntime::idle()), vec![Arc::new(channel.clone())]).await.unwrap();
        let groups: Vec<String> = service
            .store()
            .call(|c| {
                let tx = c.transaction().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
                let mut ids = vec![];
                for k in 0..AGENTS {
                    ids.push(store::create_agent_group_in(&tx, &format!("Agent {k}"))?.0);
                }
                tx.commit().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
                Ok(ids)
            })
            .await
            .unwrap();
        for chat in 0..CHATS {
            let groups = groups.clone();
            service
                .store()
                .call(move |c| {
                    let name = format!("chat-{chat}");
                    let mg = store::create_messaging_group(c, "mem", &name, Some(&name), true, UnknownSenderPolicy::Public)?;
                    for ag in &groups {
                        store::create_wiring(
                            c,
                            &NewWiring {
                                messaging_group_id: mg.id.clone(),
                                agent_group_id: ag.clone(),
                                session_mode: SessionMode::Shared,
                                engage_mode: EngageMode::Mention,
                                engage_pattern: None,
                                sender_scope: SenderScope::All,
                                ignored_message_policy: IgnoredPolicy::Accumulate,
                                priority: 0,
                            },
                        )?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
        service.shutdown(Duration::from_secs(10)).await;
        let t = Instant::now();
        fill_ledger(&data.join("nanoclaw.db"), keys);
        eprintln!("ledger filled with {keys} keys in {:.1} s", t.elapsed().as_secs_f64());
        // Writeback of the fill would slow the first fsyncs: settle first.
        let _ = std::process::Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(3));

        let channel = MemoryChannel::new("mem");
        let service = Service::start(config, Arc::new(FakeRuntime::idle()), vec![Arc::new(channel.clone())]).await.unwrap();
        while channel.starts() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // One message per chat first: the 102 sessions exist and their actors run.
        let warm = |chat: usize, i: usize| InboundEvent {
            channel_type: "mem".into(),
            platform_id: format!("chat-{chat}"),
            thread_id: None,
            platform_message_id: format!("m-{chat}-{i}"),
            sender_id: Some(format!("user-{chat}")),
            sender_name: Some("User".into()),
            text: format!("message {i} in chat {chat}"),
            is_mention: false,
            is_group: true,
            chat_name: None,
        };
        for chat in 0..CHATS {
            let ack = channel.submit_event(warm(chat, usize::MAX)).await.unwrap();
            assert_eq!(ack.dropped, None, "routed");
        }
        let per_chat = messages.div_ceil(CHATS);
        let start = Instant::now();
        let mut tasks = vec![];
        for chat in 0..CHATS {
            let channel = channel.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_chat);
                let ids: Vec<usize> = (0..per_chat).collect();
                for burst in ids.chunks(inflight) {
                    let t = Instant::now();
                    let acks = futures_util::future::join_all(burst.iter().map(|i| {
                        let channel = channel.clone();
                        async move {
                            let ack = channel.submit_event(warm(chat, *i)).await.unwrap();
                            (ack, t.elapsed().as_secs_f64() * 1000.0)
                        }
                    }))
                    .await;
                    for (ack, ms) in acks {
                        assert_eq!(ack.dropped, None);
                        lat.push(ms);
                    }
                }
                lat
            }));
        }
        let mut lat = vec![];
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let took = start.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let n = lat.len();
        println!(
            "routing: {n} messages x {AGENTS} wirings over {} sessions, {keys} ledger keys, {inflight} in flight per chat: {:.0} msg/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            CHATS * AGENTS,
            n as f64 / took,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[n - 1]
        );
        service.shutdown(Duration::from_secs(10)).await;
    });
}
