//! The supervisor tree with in-memory fakes of the ports (MemoryChannel, FakeRuntime) and the
//! real agent runner as the fake container's process, over real SQLite files in temp dirs.

use nanoclaw_actors::container_files;
use nanoclaw_actors::ports::channel::{DeliveryError, Notice};
use nanoclaw_actors::ports::runtime::ContainerSpec;
use nanoclaw_actors::session_files::SessionPaths;
use nanoclaw_actors::store;
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel, Shown};
use nanoclaw_actors::{Service, ServiceConfig};
use nanoclaw_agent::config::RunnerConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn runner_runtime() -> FakeRuntime {
    FakeRuntime::new(Arc::new(|spec: ContainerSpec, cancel: CancellationToken| {
        Box::pin(async move {
            let env: std::collections::HashMap<String, String> = spec.env.iter().cloned().collect();
            let config = RunnerConfig {
                session_dir: spec.session_host_dir.clone(),
                workspace_dir: spec.session_workspace_dir.clone(),
                skills_dir: spec.skills_dir.clone().unwrap_or_default(),
                generation: spec.generation,
                provider: env.get("NANOCLAW_PROVIDER").cloned().unwrap_or_else(|| "echo".into()),
                assistant_name: "Andy".into(),
                poll_ms: 1000,
                max_messages_per_prompt: 10,
                answer_fallback: nanoclaw_agent::tools::system::ANSWER_FALLBACK,
                host_lost_exit: None,
            };
            tokio::select! {
                r = nanoclaw_agent::runner::run(config) => r.map(|c| c as i64).unwrap_or(1),
                _ = cancel.cancelled() => 0,
            }
        })
    }))
}

fn config(dir: &std::path::Path) -> ServiceConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = ServiceConfig::new(dir.join("data"), "test");
    c.retry_backoff = Duration::from_millis(50);
    c.delivery_backoff = Duration::from_millis(20);
    c
}

/// Wires memory chat `chat` (messaging group `mg-<name>`, destination `<name>`) to agent group
/// main, engaging on every message.
fn wire_chat(c: &rusqlite::Connection, name: &str, chat: &str) -> Result<(), store::StoreError> {
    c.execute_batch(&format!(
        "INSERT INTO messaging_groups (id, channel_type, platform_id, name, unknown_sender_policy, created_at) VALUES ('mg-{name}', 'mem', '{chat}', '{name}', 'public', 't');
         INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
           VALUES ('w-{name}', 'mg-{name}', 'ag-main', 'pattern', '.', 't');
         INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at) VALUES ('ag-main', '{name}', 'channel', 'mg-{name}', 't');"
    ))
    .map_err(|e| store::StoreError::Invalid(e.to_string()))
}

/// Wires the memory chat `chat-1` to agent group main.
async fn wire_memory_chat(service: &Service) {
    service.store().call(|c| wire_chat(c, "mem", "chat-1")).await.unwrap();
}

async fn start(dir: &std::path::Path, runtime: FakeRuntime, channel: &MemoryChannel) -> Service {
    let service =
        Service::start(config(dir), Arc::new(runtime), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    service
}

/// The session of the memory chat.
async fn mem_session(service: &Service) -> store::SessionInfo {
    service
        .store()
        .call(|c| store::active_sessions(c))
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.channel_type.as_deref() == Some("mem"))
        .unwrap()
}

/// Polls `check` every 20 ms until it holds; fails the test with `what` after `timeout`.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_notice(channel: &MemoryChannel, failed: bool, id: &str) -> bool {
    channel.notices().iter().any(|n| match n {
        Notice::Processed { platform_message_id, .. } => !failed && platform_message_id == id,
        Notice::Failed { platform_message_id, .. } => failed && platform_message_id == id,
        Notice::Working { .. } => false,
    })
}

/// Waits (20 s) until the chat shows a message with exactly `text`.
async fn assert_shown(channel: &MemoryChannel, text: &str) {
    let shown = channel.wait_for(Duration::from_secs(20), |d| d.iter().any(|m| m.text == text)).await;
    assert!(shown, "{text:?} not shown; chat: {:?}", texts(channel));
}

/// Waits (60 s) for the note that the agent's container keeps failing to start.
async fn assert_told_it_keeps_failing(channel: &MemoryChannel) {
    let told = channel
        .wait_for(Duration::from_secs(60), |d| d.iter().any(|m| m.text.contains("keeps failing to start")))
        .await;
    assert!(told, "{:?}", texts(channel));
}

fn texts(channel: &MemoryChannel) -> Vec<String> {
    channel.delivered().into_iter().map(|m| m.text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_gets_exactly_one_reply_then_a_processed_notice() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let ack = channel.submit("chat-1", "p1", "hello").await.unwrap();
    assert!(!ack.duplicate && ack.dropped.is_none());
    assert!(channel.wait_for(Duration::from_secs(20), |d| !d.is_empty()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(&channel), vec!["echo: hello".to_string()]);
    assert_eq!(channel.delivered()[0].in_reply_to.as_deref(), Some("p1"));
    eventually(Duration::from_secs(5), "the processed notice", || async {
        has_notice(&channel, false, "p1")
    })
    .await;
    // The same platform message again is a duplicate and gets no second reply.
    assert!(channel.submit("chat-1", "p1", "hello").await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&channel).len(), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_turn_without_tools_shows_working_before_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    channel.submit("chat-1", "p1", "!sleep 3000 done").await.unwrap();
    // The runner's claim byte asks for no pass at once: the outbox reads the claim within the
    // claim look (100 ms) and tells the chat, while the turn still runs.
    let working = channel
        .wait_for_notice(Duration::from_secs(20), |n| {
            n.iter()
                .any(|x| matches!(x, Notice::Working { tool: None, platform_id } if platform_id == "chat-1"))
        })
        .await;
    assert!(working, "{:?}", channel.notices());
    assert!(texts(&channel).is_empty(), "working is shown before the reply: {:?}", texts(&channel));
    assert!(channel.wait_for(Duration::from_secs(20), |d| !d.is_empty()).await, "the reply comes");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_never_run_two_containers_for_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let service = start(dir.path(), runtime.clone(), &channel).await;
    let submits = (0..20).map(|i| {
        let ch = channel.clone();
        async move { ch.submit("chat-1", &format!("p{i}"), &format!("m{i}")).await.unwrap() }
    });
    futures_util::future::join_all(submits).await;
    assert!(channel.wait_for(Duration::from_secs(30), |d| d.len() >= 20).await, "got {:?}", texts(&channel));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = texts(&channel);
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("echo: m{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each message answered exactly once");
    let session = mem_session(&service).await;
    assert_eq!(runtime.max_concurrent(&session.id), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_turn_is_retried_and_after_five_tries_the_user_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let service = start(dir.path(), runtime.clone(), &channel).await;
    channel.submit("chat-1", "p-crash", "!exit 3").await.unwrap();
    assert!(
        channel
            .wait_for(Duration::from_secs(60), |d| d.iter().any(|m| m.text.contains("failed 5 times")))
            .await,
        "{:?}",
        texts(&channel)
    );
    assert_eq!(runtime.created(), 5, "one container per try");
    eventually(Duration::from_secs(5), "the failed notice", || async {
        has_notice(&channel, true, "p-crash")
    })
    .await;
    // The session keeps working for the next message.
    channel.submit("chat-1", "p-ok", "still there?").await.unwrap();
    assert_shown(&channel, "echo: still there?").await;
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_mid_turn_is_retried_and_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let service = start(dir.path(), runtime.clone(), &channel).await;
    channel.submit("chat-1", "p-slow", "!sleep 1500 slow").await.unwrap();
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    // Wait for the claim, then crash the container mid-turn.
    eventually(Duration::from_secs(20), "the claim", || async {
        let req = container_files::OutboundRequest { claims_of_generation: Some(1), ..Default::default() };
        !container_files::read_blocking(&paths, &Default::default(), &req).unwrap().claims.is_empty()
    })
    .await;
    assert!(runtime.crash(&session.id, 137));
    assert!(channel.wait_for(Duration::from_secs(30), |d| !d.is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&channel), vec!["echo: !sleep 1500 slow".to_string()]);
    let tries: i64 = rusqlite::Connection::open(paths.inbound_db())
        .unwrap()
        .query_row("SELECT tries FROM messages_in", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tries, 1);
    assert_eq!(runtime.max_concurrent(&session.id), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_delivery_failures_retry_then_fail_after_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let transient = || DeliveryError::transient("platform busy");
    channel.fail_next(vec![transient(), transient()]);
    channel.submit("chat-1", "p1", "first").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| d.len() == 1).await);
    assert_eq!(texts(&channel), vec!["echo: first".to_string()]);
    channel.fail_next(vec![transient(), transient(), transient()]);
    channel.submit("chat-1", "p2", "second").await.unwrap();
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = rusqlite::Connection::open(paths.inbound_db()).unwrap();
        let failed: Vec<(i64, String)> = c
            .prepare("SELECT attempts, error FROM delivered WHERE status = 'failed'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if !failed.is_empty() {
            assert_eq!(failed, vec![(3, "platform busy".to_string())]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "row never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = rusqlite::Connection::open(paths.inbound_db()).unwrap();
    let undecided: i64 = c
        .query_row("SELECT count(*) FROM delivered WHERE status NOT IN ('delivered','failed')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(undecided, 0, "no row is left neither delivered nor failed");
    assert_eq!(texts(&channel), vec!["echo: first".to_string()]);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_loses_its_connection_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    assert_eq!(channel.starts(), 1);
    channel.lose_connection("socket closed by peer");
    eventually(Duration::from_secs(10), "the channel's restart", || async { channel.starts() >= 2 }).await;
    channel.submit("chat-1", "after", "back").await.unwrap();
    assert_shown(&channel, "echo: back").await;
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_health_reports_connected_then_reconnecting_then_connected() {
    use nanoclaw_actors::ports::channel::ChannelState;
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let health = |s: &Service| s.channel_health().into_iter().find(|h| h.channel_type == "mem").unwrap();
    eventually(Duration::from_secs(5), "connected", || async {
        health(&service).state == ChannelState::Connected
    })
    .await;
    assert!(health(&service).last_event.is_none());
    channel.submit("chat-1", "h1", "hi").await.unwrap();
    assert!(health(&service).last_event.is_some(), "an event is a sign of life");
    channel.lose_connection("socket closed by peer");
    eventually(Duration::from_secs(5), "reconnecting", || async {
        health(&service).state == ChannelState::Reconnecting
    })
    .await;
    let h = health(&service);
    assert_eq!(h.restarts, 1);
    assert!(h.last_error.as_deref().unwrap().contains("socket closed by peer"), "{h:?}");
    eventually(Duration::from_secs(10), "connected again", || async {
        health(&service).state == ChannelState::Connected
    })
    .await;
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_silent_while_connected_is_restarted_and_keepalives_prevent_it() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_liveness_timeout(Duration::from_millis(400));
    let service = start(dir.path(), runner_runtime(), &channel).await;
    // Keepalives more often than the timeout: no restart.
    for _ in 0..8 {
        channel.keepalive();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(channel.starts(), 1, "a channel that shows signs of life is left alone");
    // Silence: presumed dead, restarted.
    eventually(Duration::from_secs(10), "a restart of the silent channel", || async {
        channel.starts() >= 2
    })
    .await;
    let h = service.channel_health().into_iter().find(|h| h.channel_type == "mem").unwrap();
    assert!(h.restarts >= 1 && h.last_error.as_deref().unwrap_or("").contains("no sign of life"), "{h:?}");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwired_chats_are_recorded_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let ack = channel.submit("stranger", "s1", "hi").await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("no_agent_wired"));
    let n: i64 = service
        .store()
        .call(|c| {
            c.query_row(
                "SELECT message_count FROM unregistered_senders WHERE platform_id = 'stranger'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| store::StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_then_respawn_replaces_the_container_only_after_the_old_one_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let service = start(dir.path(), runtime.clone(), &channel).await;
    channel.submit("chat-1", "k1", "before").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| d.len() == 1).await);
    let session = mem_session(&service).await;
    service
        .kill_container(&session.id, "test: replace", nanoclaw_actors::actors::session::Then::Respawn)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "a ready replacement container", || async {
        let st = service.session_statuses().await.into_iter().find(|s| s.session_id == session.id).unwrap();
        st.container_generation == Some(2) && st.container_ready
    })
    .await;
    assert_eq!(runtime.created(), 2);
    assert_eq!(
        runtime.max_concurrent(&session.id),
        1,
        "the replacement started only after the old container was gone"
    );
    channel.submit("chat-1", "k2", "after").await.unwrap();
    assert_shown(&channel, "echo: after").await;
    assert_eq!(runtime.created(), 2, "the new container took the message");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_never_starts_backs_off_and_then_the_user_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    // Exits at once with 1, before any hello: like a broken image or provider configuration.
    let runtime = FakeRuntime::new(Arc::new(|_spec, _cancel| Box::pin(async { 1 })));
    let service = start(dir.path(), runtime.clone(), &channel).await;
    let started = tokio::time::Instant::now();
    channel.submit("chat-1", "p-broken", "anyone there?").await.unwrap();
    assert_told_it_keeps_failing(&channel).await;
    assert_eq!(runtime.created(), 5, "gave up after max_tries spawn failures");
    assert!(started.elapsed() > Duration::from_secs(5), "spawns were paced by a backoff, not a tight loop");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_but_not_routed_before_a_crash_is_routed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        // The previous run committed the platform message to the ledger, then died.
        let store = store::Store::open(&data.join("nanoclaw.db")).await.unwrap();
        store.call(store::bootstrap).await.unwrap();
        store
            .call(|c| {
                wire_chat(c, "mem", "chat-1")?;
                let event = serde_json::json!({
                    "channel_type": "mem", "platform_id": "chat-1", "platform_message_id": "lost-1",
                    "sender_id": "tester", "text": "do not lose me", "is_mention": true
                });
                store::ledger_insert(
                    c,
                    &store::LedgerEntry {
                        id: "in-crashed".into(),
                        channel_type: "mem".into(),
                        platform_message_id: "lost-1".into(),
                        platform_id: "chat-1".into(),
                        thread_id: None,
                        sender_id: Some("mem:tester".into()),
                        event: event.to_string(),
                        trace_id: "tr-1".into(),
                    },
                )
                .map(|_| ())
            })
            .await
            .unwrap();
    }
    let channel = MemoryChannel::new("mem");
    let service =
        Service::start(config(dir.path()), Arc::new(runner_runtime()), vec![Arc::new(channel.clone())])
            .await
            .unwrap();
    assert!(
        channel
            .wait_for(Duration::from_secs(20), |d| d.iter().any(|m| m.text == "echo: do not lose me"))
            .await,
        "{:?}",
        texts(&channel)
    );
    // The platform redelivering it now (it was never acked) is a duplicate, not a second reply.
    assert!(channel.submit("chat-1", "lost-1", "do not lose me").await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&channel), vec!["echo: do not lose me".to_string()]);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_stops_making_progress_is_killed_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let mut cfg = config(dir.path());
    cfg.claim_stuck_after = Duration::from_millis(800);
    let service =
        Service::start(cfg, Arc::new(runtime.clone()), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    // `!hang` blocks without any provider event; `!sleep` of the same length keeps the heartbeat.
    channel.submit("chat-1", "alive", "!sleep 2500 busy but alive").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| d.len() == 1).await);
    assert_eq!(runtime.created(), 1, "a turn that keeps reporting activity is not stuck");
    channel.submit("chat-1", "stuck", "!hang 60000 frozen").await.unwrap();
    eventually(Duration::from_secs(20), "the stuck container's replacement", || async {
        runtime.created() >= 2
    })
    .await;
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    let tries: i64 = rusqlite::Connection::open(paths.inbound_db())
        .unwrap()
        .query_row("SELECT tries FROM messages_in WHERE id LIKE '%' AND content LIKE '%frozen%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(tries >= 1, "the kill counted a try");
    assert_eq!(runtime.max_concurrent(&session.id), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_cap_queues_sessions_fairly_and_tells_the_waiting_user() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = runner_runtime();
    let mut cfg = config(dir.path());
    cfg.max_containers = 1;
    let service =
        Service::start(cfg, Arc::new(runtime.clone()), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    service.store().call(|c| wire_chat(c, "mem2", "chat-2")).await.unwrap();
    channel.submit("chat-1", "a1", "!sleep 1000 first").await.unwrap();
    eventually(Duration::from_secs(10), "the first container", || async { runtime.running() == 1 }).await;
    channel.submit("chat-2", "b1", "second").await.unwrap();
    // Chat 2 is told it waits, then both are answered, never with two containers at once.
    assert!(
        channel
            .wait_for(Duration::from_secs(30), |d| {
                d.iter().any(|m| m.platform_id == "chat-2" && m.text.starts_with("Queued:"))
                    && d.iter().any(|m| m.text == "echo: !sleep 1000 first")
                    && d.iter().any(|m| m.text == "echo: second")
            })
            .await,
        "{:?}",
        channel.delivered()
    );
    let order: Vec<String> = channel.delivered().into_iter().map(|m| m.text).collect();
    let queued = order.iter().position(|t| t.starts_with("Queued:")).unwrap();
    let second = order.iter().position(|t| t == "echo: second").unwrap();
    assert!(queued < second, "{order:?}");
    assert_eq!(order.iter().filter(|t| t.starts_with("Queued:")).count(), 1, "told once: {order:?}");
    assert_eq!(runtime.max_concurrent_total(), 1, "the cap held");
    service.shutdown(Duration::from_secs(20)).await;
}

/// The session of memory chat `chat`.
async fn session_of(service: &Service, chat: &'static str) -> store::SessionInfo {
    service
        .store()
        .call(|c| store::active_sessions(c))
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.platform_id.as_deref() == Some(chat))
        .unwrap()
}

/// A kill-then-respawn that has to wait for a container slot spawns when the slot comes, though
/// the session has no pending work; and the slot it then frees serves the other session again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_respawn_that_waits_for_a_slot_spawns_when_the_slot_comes() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    // Which session each container was created for, in order.
    let created: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let runner = runner_runtime().entrypoint();
    let seen = created.clone();
    let runtime = FakeRuntime::new(Arc::new(move |spec: ContainerSpec, cancel: CancellationToken| {
        seen.lock().push(spec.session_id.clone());
        runner(spec, cancel)
    }));
    let mut cfg = config(dir.path());
    cfg.max_containers = 1;
    cfg.container_idle_timeout = Duration::from_secs(1);
    let service =
        Service::start(cfg, Arc::new(runtime.clone()), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    service.store().call(|c| wire_chat(c, "mem2", "chat-2")).await.unwrap();

    // Session A answers, and its idle container goes, freeing the one slot.
    channel.submit("chat-1", "a1", "hello").await.unwrap();
    assert_shown(&channel, "echo: hello").await;
    let a = session_of(&service, "chat-1").await;
    eventually(Duration::from_secs(20), "A's idle container to stop", || async { runtime.running() == 0 })
        .await;
    // Session B takes the slot with a turn that works a while.
    channel.submit("chat-2", "b1", "!sleep 1500 busy").await.unwrap();
    eventually(Duration::from_secs(20), "B's container", || async { runtime.running() == 1 }).await;
    assert_eq!(created.lock().len(), 2);

    // A is asked to respawn while B holds the slot: A waits in the slot queue.
    service
        .kill_container(&a.id, "test: respawn", nanoclaw_actors::actors::session::Then::Respawn)
        .await
        .unwrap();
    // B finishes and goes idle: its slot passes to A, which respawns (no work pending for it).
    assert_shown(&channel, "echo: !sleep 1500 busy").await;
    eventually(Duration::from_secs(20), "A's respawned container", || async { created.lock().len() == 3 })
        .await;
    assert_eq!(created.lock()[2], a.id, "{:?}", created.lock());
    assert_eq!(runtime.max_concurrent_total(), 1, "the cap held");

    // Nothing leaked: A's respawned container goes idle and B gets the slot again.
    channel.submit("chat-2", "b2", "again").await.unwrap();
    assert_shown(&channel, "echo: again").await;
    assert_eq!(runtime.max_concurrent_total(), 1, "the cap held");
    service.shutdown(Duration::from_secs(20)).await;
}

/// An outbound message for the memory chat with idempotency key `key`.
fn outbound(key: &str) -> nanoclaw_actors::ports::channel::OutboundMessage {
    nanoclaw_actors::ports::channel::OutboundMessage {
        platform_id: "chat-1".into(),
        thread_id: None,
        text: format!("text of {key}"),
        in_reply_to: None,
        message_out_id: key.into(),
    }
}

/// The live channel of the memory account, once it differs from `not` (a restart).
async fn live_channel(
    service: &Service,
    not: Option<&nanoclaw_actors::actors::channel::ChannelHandle>,
) -> nanoclaw_actors::actors::channel::ChannelHandle {
    let mut found = None;
    eventually(Duration::from_secs(10), "a live memory channel", || {
        found = service
            .context()
            .channels
            .for_channel_type("mem")
            .filter(|h| not.is_none_or(|n| n.actor().get_id() != h.actor().get_id()));
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_fails_releases_its_adapter_and_its_restart_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // The memory channel refuses to start while an earlier run still holds its resource, as the
    // CLI's socket would: a failed actor that leaked its run could never be restarted.
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let first = live_channel(&service, None).await;
    assert!(channel.is_held());
    channel.lose_connection("platform went away");
    let second = live_channel(&service, Some(&first)).await;
    assert_eq!(channel.starts(), 2, "restarted once");
    assert!(channel.is_held(), "the new run holds the resource the failed run released");
    let h = service.channel_health().into_iter().find(|h| h.account == "mem").unwrap();
    assert_eq!(h.restarts, 1, "{h:?}");
    assert_eq!(second.account(), "mem");
    channel.submit("chat-1", "after-restart", "back").await.unwrap();
    assert_shown(&channel, "echo: back").await;
    service.shutdown(Duration::from_secs(20)).await;
    assert!(!channel.is_held(), "shutdown releases the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_errors_tell_a_send_lost_mid_way_from_one_never_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_idempotent_sends(true);
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let first = live_channel(&service, None).await;
    assert!(first.idempotent_sends());
    // The adapter shows the message, then its actor dies before answering: outcome unknown.
    channel.panic_next_delivery();
    let err = first.deliver(outbound("k1"), Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::OutcomeUnknown { .. }), "{err:?}");
    assert!(err.may_retry(true) && !err.may_retry(false));
    // The dead actor takes nothing: certainly not sent, retryable. (Wait until it has finished
    // dying: while ractor tears it down its mailbox still takes messages, then drops them.)
    eventually(Duration::from_secs(10), "the failed channel actor to be gone", || async {
        matches!(first.actor().get_status(), ractor::ActorStatus::Stopped)
    })
    .await;
    let err = first.deliver(outbound("k2"), Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err, DeliveryError::transient("channel mem is not running"));
    assert_eq!(channel.sends_of("k2"), 0);
    // After the restart, the idempotent retry of k1 reaches the adapter but shows nothing new.
    let second = live_channel(&service, Some(&first)).await;
    second.deliver(outbound("k1"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(channel.sends_of("k1"), 2);
    assert_eq!(channel.delivered().iter().filter(|m| m.message_out_id == "k1").count(), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_caller_timed_out_before_it_began_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let handle = live_channel(&service, None).await;
    channel.set_delivery_delay(Some(Duration::from_secs(2)));
    // k1 occupies the adapter past its caller's timeout.
    let err = handle.deliver(outbound("k1"), Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(err, DeliveryError::Timeout);
    assert!(!err.may_retry(false), "a timeout may have been shown: not retried when not idempotent");
    // k2 waits behind it in the mailbox and its caller gives up first.
    let err = handle.deliver(outbound("k2"), Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err, DeliveryError::Timeout);
    channel.set_delivery_delay(None);
    // k3 is answered after k1 finished and k2 was dropped (one mailbox, in order).
    handle.deliver(outbound("k3"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(channel.sends_of("k2"), 0, "{:?}", channel.sends());
    assert_eq!(channel.sends_of("k3"), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_send_outcome_is_unknown_is_never_sent_twice_on_a_non_idempotent_channel() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_idempotent_sends(false);
    let service = start(dir.path(), runner_runtime(), &channel).await;
    channel.panic_next_delivery();
    channel.submit("chat-1", "p-unknown", "hello").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| !d.is_empty()).await);
    let reply_key = channel.delivered()[0].message_out_id.clone();
    // The channel key is `<session id>:<messages_out id>`; the ledger keys by the row id.
    let row_key = reply_key.rsplit_once(':').map(|(_, row)| row.to_string()).unwrap();
    let session = mem_session(&service).await;
    assert_eq!(reply_key, nanoclaw_actors::session::outbox::delivery_key(&session.id, &row_key));
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    eventually(Duration::from_secs(20), "the reply's delivery decided", || async {
        let c = rusqlite::Connection::open(paths.inbound_db()).unwrap();
        let status: Option<String> = c
            .query_row("SELECT status FROM delivered WHERE message_out_id = ?1", [&row_key], |r| r.get(0))
            .ok();
        matches!(status.as_deref(), Some("failed" | "delivered"))
    })
    .await;
    // Wait for the channel's restart too, so a retry would have had its chance.
    eventually(Duration::from_secs(10), "the channel's restart", || async { channel.starts() >= 2 }).await;
    let sends = channel.sends();
    for s in &sends {
        assert_eq!(
            channel.sends_of(&s.message_out_id),
            1,
            "a second send of {}: {sends:?}",
            s.message_out_id
        );
    }
    service.shutdown(Duration::from_secs(20)).await;
}

/// The session of memory chat `chat`.
async fn session_of_chat(service: &Service, chat: &str) -> store::SessionInfo {
    let chat = chat.to_string();
    service
        .store()
        .call(|c| store::active_sessions(c))
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.channel_type.as_deref() == Some("mem") && s.platform_id.as_deref() == Some(chat.as_str()))
        .unwrap()
}

async fn hold_of(service: &Service, session_id: &str) -> Option<store::SessionHold> {
    let id = session_id.to_string();
    service.store().call(move |c| store::session_hold(c, &id)).await.unwrap()
}

fn count_texts(channel: &MemoryChannel, needle: &str) -> usize {
    texts(channel).iter().filter(|t| t.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_object_in_outbound_db_quarantines_only_its_session_and_release_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    service.store().call(|c| wire_chat(c, "mem2", "chat-2")).await.unwrap();
    channel.submit("chat-1", "a1", "one").await.unwrap();
    channel.submit("chat-2", "b1", "two").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| d.len() >= 2).await);
    let victim = session_of_chat(&service, "chat-1").await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &victim.id);
    // The container plants a view over a recursive CTE: reading it would never end.
    let planted = rusqlite::Connection::open(paths.outbound_db()).unwrap();
    planted
        .execute_batch(
            "CREATE VIEW forever AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r;",
        )
        .unwrap();
    drop(planted);
    channel.submit("chat-1", "a2", "after the plant").await.unwrap();
    eventually(Duration::from_secs(20), "the quarantine note", || async {
        count_texts(&channel, "quarantined") == 1
    })
    .await;
    let hold = hold_of(&service, &victim.id).await.expect("the session is held");
    assert!(matches!(&hold, store::SessionHold::Quarantined(r) if r.contains("forever")), "{hold:?}");
    // The other session keeps working, and the victim's further messages are kept, not answered.
    channel.submit("chat-2", "b2", "still here").await.unwrap();
    channel.submit("chat-1", "a3", "kept for later").await.unwrap();
    assert_shown(&channel, "echo: still here").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_texts(&channel, "kept for later"), 0);
    assert_eq!(count_texts(&channel, "quarantined"), 1, "told once");
    // Fixed and released: the kept messages are answered.
    let fix = rusqlite::Connection::open(paths.outbound_db()).unwrap();
    fix.execute_batch("DROP VIEW forever;").unwrap();
    drop(fix);
    let id = victim.id.clone();
    let released = service.store().call(move |c| store::release_session(c, &id)).await.unwrap();
    assert!(matches!(released, store::Release::Released(_)));
    channel.submit("chat-1", "a4", "released").await.unwrap();
    assert!(
        channel
            .wait_for(Duration::from_secs(30), |d| {
                d.iter().any(|m| m.text == "echo: released")
                    && d.iter().any(|m| m.text == "echo: kept for later")
            })
            .await,
        "{:?}",
        texts(&channel)
    );
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_workspace_pauses_its_session_and_tells_the_chat() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let mut cfg = config(dir.path());
    cfg.workspace_max_bytes = 1 << 20;
    cfg.workspace_check_every = Duration::ZERO;
    let service =
        Service::start(cfg, Arc::new(runner_runtime()), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    channel.submit("chat-1", "w1", "small").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| !d.is_empty()).await);
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    // Real blocks, not a sparse file: allocated size is what counts.
    std::fs::write(paths.workspace_dir.join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    channel.submit("chat-1", "w2", "too big now").await.unwrap();
    eventually(Duration::from_secs(20), "the pause note", || async { count_texts(&channel, "paused") == 1 })
        .await;
    assert!(matches!(hold_of(&service, &session.id).await, Some(store::SessionHold::Paused(_))));
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_on_inbound_db_quarantines_the_session_and_the_message_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    channel.submit("chat-1", "l1", "first").await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| !d.is_empty()).await);
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    // What a container can do through its read-only mount: keep a read transaction open.
    let holder =
        rusqlite::Connection::open_with_flags(paths.inbound_db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    holder.execute_batch("BEGIN; SELECT count(*) FROM messages_in;").unwrap();
    let submitter = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.submit("chat-1", "l2", "second").await })
    };
    eventually(Duration::from_secs(30), "the quarantine", || async {
        hold_of(&service, &session.id).await.is_some()
    })
    .await;
    // The sender gets a clear error at once (no retries that would hold up other chats), and the
    // ledger keeps the entry. Killing the container releases such a lock; here the test holds it,
    // and lets go; the sender's retry of the same message is then stored.
    let first = submitter.await.unwrap();
    assert!(first.is_err(), "{first:?}");
    holder.execute_batch("COMMIT;").unwrap();
    drop(holder);
    channel.submit("chat-1", "l2", "second").await.expect("the retried message is stored");
    let stored: i64 = rusqlite::Connection::open(paths.inbound_db())
        .unwrap()
        .query_row("SELECT count(*) FROM messages_in WHERE content LIKE '%second%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(count_texts(&channel, "quarantined"), 1);
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flagged_with_work_resumes_at_start_without_reading_other_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    let session = service
        .store()
        .call(|c| {
            store::resolve_session(c, store::MAIN_AGENT_GROUP_ID, "mg-mem", None, store::SessionMode::Shared)
        })
        .await
        .unwrap();
    service.shutdown(Duration::from_secs(20)).await;
    // Work left by a host that stopped: a pending row, and the flag in the central DB.
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    nanoclaw_actors::session_files::prepare(&paths, None).unwrap();
    let content = r#"{"text":"left over","platform_message_id":"r1"}"#;
    nanoclaw_actors::session_files::write_inbound(
        &paths,
        &[nanoclaw_actors::session_files::NewInbound {
            id: "left-1".into(),
            kind: "chat",
            trigger: true,
            on_wake: false,
            channel_type: Some("mem".into()),
            platform_id: Some("chat-1".into()),
            thread_id: None,
            content: content.into(),
            source_session_id: None,
        }],
    )
    .unwrap();
    let service =
        Service::start(config(dir.path()), Arc::new(runner_runtime()), vec![Arc::new(channel.clone())])
            .await
            .unwrap();
    assert_shown(&channel, "echo: left over").await;
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_never_says_hello_is_a_failure_backed_off_and_the_user_is_told_after_five() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    // Runs, but never connects to wake.sock: killed at the hello deadline each time.
    let runtime = FakeRuntime::new(Arc::new(|_spec, cancel: CancellationToken| {
        Box::pin(async move {
            cancel.cancelled().await;
            137
        })
    }));
    let mut cfg = config(dir.path());
    cfg.container_start_timeout = Duration::from_millis(300);
    cfg.container_stop_grace = Duration::from_millis(100);
    let service =
        Service::start(cfg, Arc::new(runtime.clone()), vec![Arc::new(channel.clone())]).await.unwrap();
    wire_memory_chat(&service).await;
    channel.submit("chat-1", "p-mute", "say something").await.unwrap();
    assert_told_it_keeps_failing(&channel).await;
    assert_eq!(runtime.created(), 5, "five containers without a hello, then the user is told");
    service.shutdown(Duration::from_secs(20)).await;
}

/// The runner as the container, on the `standard` tier (so `run_command` runs a shell): the
/// entrypoint writes `runner.json` before the runner reads it.
fn standard_runner_runtime() -> FakeRuntime {
    let inner = runner_runtime();
    FakeRuntime::new(Arc::new(move |spec: ContainerSpec, cancel: CancellationToken| {
        let mut settings = nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy");
        settings.image_tier = nanoclaw_protocol::settings::ImageTier::Standard;
        let path = spec.session_host_dir.join(nanoclaw_protocol::layout::RUNNER_SETTINGS);
        std::fs::write(path, serde_json::to_vec(&settings).unwrap()).unwrap();
        let run = inner.entrypoint();
        run(spec, cancel)
    }))
}

/// The agent-visible seq of the message the agent sent with `text` (read from its outbound.db).
fn sent_seq(paths: &SessionPaths, text: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        paths.outbound_db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row(
        "SELECT seq FROM messages_out WHERE kind = 'chat' AND json_extract(content, '$.text') = ?1",
        [text],
        |r| r.get(0),
    )
    .unwrap()
}

/// The platform id the memory channel gave the delivery with `text` (`mem-<position>`).
fn platform_id_of(channel: &MemoryChannel, text: &str) -> String {
    let i = channel.delivered().iter().position(|m| m.text == text).expect("delivered");
    format!("mem-{}", i + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_message_uses_platform_id() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    channel.submit("chat-1", "a1", r#"tool send_message {"text":"first version"}"#).await.unwrap();
    assert!(channel.wait_for(Duration::from_secs(20), |d| d.iter().any(|m| m.text == "first version")).await);
    let first = platform_id_of(&channel, "first version");
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    let seq = sent_seq(&paths, "first version");
    channel
        .submit(
            "chat-1",
            "a2",
            &format!(
                "tool edit_message {{\"seq\":{seq},\"text\":\"second version\"}}\ntool add_reaction {{\"seq\":{seq},\"emoji\":\"👍\"}}"
            ),
        )
        .await
        .unwrap();
    let edited = channel
        .wait_for_shown(Duration::from_secs(20), |s| {
            s.iter().any(|x| matches!(x, Shown::Edit(e) if e.text == "second version"))
                && s.iter().any(|x| matches!(x, Shown::Reaction(_)))
        })
        .await;
    assert!(edited, "edit and reaction shown: {:?}", channel.shown());
    for shown in channel.shown() {
        match shown {
            Shown::Edit(e) => {
                assert_eq!(
                    (e.platform_id.as_str(), e.platform_message_id.as_str()),
                    ("chat-1", first.as_str())
                )
            }
            Shown::Reaction(r) => {
                assert_eq!((r.platform_message_id.as_str(), r.emoji.as_str()), (first.as_str(), "👍"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // An edit of a message that does not exist fails its row; the session goes on answering.
    channel.submit("chat-1", "a3", r#"tool edit_message {"seq":999,"text":"nope"}"#).await.unwrap();
    channel.submit("chat-1", "a4", "still here").await.unwrap();
    assert_shown(&channel, "echo: still here").await;
    assert_eq!(channel.shown().len(), 2, "nothing else was edited");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cards_and_a_working_notice_reach_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), standard_runner_runtime(), &channel).await;
    channel
        .submit(
            "chat-1",
            "a1",
            concat!(
                "tool write_file {\"path\":\"report.txt\",\"content\":\"the report\\n\"}\n",
                "tool send_file {\"path\":\"report.txt\",\"text\":\"here it is\"}\n",
                "tool send_card {\"title\":\"Docs\",\"text\":\"read these\",\"buttons\":[{\"label\":\"site\",\"url\":\"https://example.org/\"}]}\n",
                "tool run_command {\"command\":\"sleep 2\"}",
            ),
        )
        .await
        .unwrap();
    let shown = channel
        .wait_for_shown(Duration::from_secs(20), |s| {
            s.iter().any(|x| matches!(x, Shown::Files { .. }))
                && s.iter().any(|x| matches!(x, Shown::Card { .. }))
        })
        .await;
    assert!(shown, "file and card shown: {:?}", channel.shown());
    for s in channel.shown() {
        match s {
            Shown::Files { message, files, .. } => {
                assert_eq!(message.text, "here it is");
                assert_eq!(files.len(), 1);
                assert_eq!(
                    (files[0].name.as_str(), files[0].bytes.as_slice()),
                    ("report.txt", &b"the report\n"[..])
                );
            }
            Shown::Card { card, .. } => {
                assert_eq!((card.title.as_str(), card.text.as_str()), ("Docs", "read these"));
                assert_eq!(card.buttons[0].url, "https://example.org/");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let working = channel
        .wait_for_notice(Duration::from_secs(20), |n| {
            n.iter().any(|x| matches!(x, Notice::Working { tool: Some(t), platform_id } if t == "run_command" && platform_id == "chat-1"))
        })
        .await;
    assert!(working, "a working notice naming run_command: {:?}", channel.notices());
    assert!(
        channel
            .wait_for_notice(Duration::from_secs(20), |n| n
                .iter()
                .any(|x| matches!(x, Notice::Processed { .. })))
            .await
    );
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_row_naming_a_symlink_fails_with_its_reason_and_the_session_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), runner_runtime(), &channel).await;
    channel.submit("chat-1", "a1", "one").await.unwrap();
    assert_shown(&channel, "echo: one").await;
    let session = mem_session(&service).await;
    let paths = SessionPaths::new(&dir.path().join("data"), "main", &session.id);
    // The container links /etc/passwd into a row's outbox folder and names it in a file row.
    let folder = paths.workspace_dir.join("outbox").join("evil-1");
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();
    let planted = rusqlite::Connection::open(paths.outbound_db()).unwrap();
    planted
        .execute(
            "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, content)
             VALUES ('evil-1', 1001, ?1, 'chat', 'chat-1', 'mem', ?2)",
            rusqlite::params![
                nanoclaw_protocol::time::now_ts(),
                r#"{"type":"file","files":[{"name":"passwd","path":"outbox/evil-1/passwd"}]}"#
            ],
        )
        .unwrap();
    drop(planted);
    channel.submit("chat-1", "a2", "two").await.unwrap();
    assert_shown(&channel, "echo: two").await;
    let inbound = rusqlite::Connection::open(paths.inbound_db()).unwrap();
    let mut error = None;
    eventually(Duration::from_secs(20), "the file row failed", || {
        error = inbound
            .query_row("SELECT status, error FROM delivered WHERE message_out_id = 'evil-1'", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .ok();
        let done = matches!(&error, Some((s, _)) if s == "failed");
        async move { done }
    })
    .await;
    let reason = error.unwrap().1.unwrap();
    assert!(reason.starts_with("row evil-1: content.files.path: outbox/evil-1/passwd:"), "{reason}");
    assert!(reason.contains("symlink") && !reason.contains('\n'), "{reason}");
    assert!(channel.shown().is_empty(), "nothing of /etc/passwd was sent");
    assert!(hold_of(&service, &session.id).await.is_none(), "the session is not held");
    service.shutdown(Duration::from_secs(20)).await;
}
