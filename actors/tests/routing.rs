//! Routing and permissions through the real router, central store and session files (real
//! SQLite), in-process: the engagement table of `docs/routing.md`, fan-out, threads, the
//! unknown-sender and channel-registration effects, dropped-message accounting and commands.
//! The containers are the idle fake runtime: these tests look at what was stored, not at replies.

use nanoclaw_actors::ports::channel::{InboundAck, InboundEvent};
use nanoclaw_actors::router::ChannelChoice;
use nanoclaw_actors::store::{
    self, EngageMode, IgnoredPolicy, NewWiring, SenderScope, SessionMode, UnknownSenderPolicy,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const AG: &str = store::MAIN_AGENT_GROUP_ID;

async fn start(dir: &Path, channel: &MemoryChannel, runtime: FakeRuntime) -> Service {
    start_with(dir, channel, runtime, |_| {}).await
}

async fn start_with(
    dir: &Path,
    channel: &MemoryChannel,
    runtime: FakeRuntime,
    tweak: impl FnOnce(&mut ServiceConfig),
) -> Service {
    let mut config = ServiceConfig::new(dir.join("data"), "routing-test");
    config.min_free_bytes = 0;
    tweak(&mut config);
    let service = Service::start(config, Arc::new(runtime), vec![Arc::new(channel.clone())]).await.unwrap();
    // The channel actor starts the adapter just after the tree is up.
    for _ in 0..500 {
        if channel.starts() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("data/nanoclaw.db")).unwrap()
}

/// Creates chat `chat` (group or DM, with `policy`) and returns its messaging group id.
async fn chat(service: &Service, chat: &str, is_group: bool, policy: UnknownSenderPolicy) -> String {
    let chat = chat.to_string();
    service
        .store()
        .call(move |c| store::create_messaging_group(c, "mem", &chat, Some(&chat), is_group, policy))
        .await
        .unwrap()
        .id
}

async fn wire(service: &Service, w: NewWiring) -> store::CreatedWiring {
    service.store().call(move |c| store::create_wiring(c, &w)).await.unwrap()
}

fn wiring(mg: &str, ag: &str, engage: EngageMode, pattern: Option<&str>) -> NewWiring {
    NewWiring {
        messaging_group_id: mg.into(),
        agent_group_id: ag.into(),
        session_mode: SessionMode::Shared,
        engage_mode: engage,
        engage_pattern: pattern.map(String::from),
        sender_scope: SenderScope::All,
        ignored_message_policy: IgnoredPolicy::Drop,
        priority: 0,
    }
}

/// Makes `mem:<handle>` a member of agent group `ag`.
async fn member(service: &Service, handle: &str, ag: &str) {
    let (user, ag) = (format!("mem:{handle}"), ag.to_string());
    service
        .store()
        .call(move |c| {
            store::upsert_user(c, &user, "mem", None)?;
            store::add_member(c, &user, &ag, "test")
        })
        .await
        .unwrap();
}

fn event(chat: &str, id: &str, sender: &str, text: &str) -> InboundEvent {
    InboundEvent {
        channel_type: "mem".into(),
        platform_id: chat.into(),
        thread_id: None,
        platform_message_id: id.into(),
        sender_id: Some(sender.into()),
        sender_name: Some(sender.into()),
        text: text.into(),
        is_mention: false,
        is_group: true,
        chat_name: None,
    }
}

/// The inbound.db of a session.
fn inbound_db(dir: &Path, folder: &str, session: &str) -> PathBuf {
    dir.join(format!("data/sessions/{folder}/{session}/host/inbound.db"))
}

/// `trigger` of the row a ledger entry left for agent group `ag` in any of its sessions, if any.
fn stored_trigger(dir: &Path, ag: &str, ledger_id: &str) -> Option<i64> {
    let c = db(dir);
    let folder: String =
        c.query_row("SELECT folder FROM agent_groups WHERE id = ?1", [ag], |r| r.get(0)).unwrap();
    let sessions: Vec<String> = c
        .prepare("SELECT id FROM sessions WHERE agent_group_id = ?1")
        .unwrap()
        .query_map([ag], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let row = format!("{ledger_id}:{ag}");
    sessions.iter().find_map(|s| {
        let path = inbound_db(dir, &folder, s);
        if !path.exists() {
            return None;
        }
        Connection::open(path)
            .unwrap()
            .query_row("SELECT trigger FROM messages_in WHERE id = ?1", [&row], |r| r.get(0))
            .optional()
            .unwrap()
    })
}

fn dropped_count(dir: &Path, chat: &str) -> Vec<(String, String, i64)> {
    db(dir)
        .prepare("SELECT user_id, reason, message_count FROM unregistered_senders WHERE platform_id = ?1 ORDER BY 1, 2")
        .unwrap()
        .query_map([chat], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One row of the engagement table in `docs/routing.md`.
#[derive(Debug)]
struct Row {
    engage: EngageMode,
    pattern: Option<String>,
    message: String,
    session: String,
    ignored: IgnoredPolicy,
    scope: SenderScope,
    policy: UnknownSenderPolicy,
    sender: String,
    stored: bool,
    trigger: Option<i64>,
    reason: Option<String>,
}

fn table() -> Vec<Row> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/routing.md")).unwrap();
    let start = doc.find("<!-- engagement-table -->").expect("table start marker");
    let end = doc.find("<!-- /engagement-table -->").expect("table end marker");
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| engage"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 10, "row {l:?}");
            let (engage, pattern) = match cells[0].split_once(' ') {
                Some((m, p)) => (EngageMode::parse(m).unwrap(), Some(p.trim_matches('`').to_string())),
                None => (EngageMode::parse(cells[0]).unwrap(), None),
            };
            Row {
                engage,
                pattern,
                message: cells[1].into(),
                session: cells[2].into(),
                ignored: IgnoredPolicy::parse(cells[3]).unwrap(),
                scope: SenderScope::parse(cells[4]).unwrap(),
                policy: UnknownSenderPolicy::parse(cells[5]).unwrap(),
                sender: cells[6].into(),
                stored: cells[7] == "yes",
                trigger: cells[8].parse().ok(),
                reason: (cells[9] != "-").then(|| cells[9].to_string()),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_engagement_table_in_the_docs_holds_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_threads(true);
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    member(&service, "member", AG).await;
    let rows = table();
    assert!(rows.len() >= 20, "the table has its rows: {}", rows.len());
    let mut failures = vec![];
    for (i, row) in rows.iter().enumerate() {
        let chat_id = format!("row-{i}");
        let is_group = row.message != "dm";
        let mg = chat(&service, &chat_id, is_group, row.policy).await;
        let mut w = wiring(&mg, AG, row.engage, row.pattern.as_deref());
        w.ignored_message_policy = row.ignored;
        w.sender_scope = row.scope;
        wire(&service, w).await;
        let thread = (row.message == "thread").then(|| "t1".to_string());
        match row.session.as_str() {
            "none" => {}
            "same" | "other-thread" => {
                let t = match row.session.as_str() {
                    "same" => thread.clone(),
                    _ => Some("t2".to_string()),
                };
                let mode = if t.is_some() { SessionMode::PerThread } else { SessionMode::Shared };
                let mg = mg.clone();
                service
                    .store()
                    .call(move |c| store::resolve_session(c, AG, &mg, t.as_deref(), mode))
                    .await
                    .unwrap();
            }
            other => panic!("unknown session cell {other}"),
        }
        let sender = if row.sender == "member" { "member".to_string() } else { format!("stranger-{i}") };
        let mut e = event(&chat_id, &format!("m-{i}"), &sender, "hello there");
        e.is_group = is_group;
        e.is_mention = row.message == "mention";
        e.thread_id = thread;
        let ack: InboundAck = channel.submit_event(e).await.unwrap();
        let stored = stored_trigger(dir.path(), AG, &ack.ledger_id);
        let got = (stored.is_some(), stored, ack.dropped.clone());
        let want = (row.stored, row.trigger, row.reason.clone());
        if got != want {
            failures.push(format!("row {}: {row:?}\n   got (stored, trigger, reason) = {got:?}", i + 1));
        }
    }
    assert!(failures.is_empty(), "rows that do not hold:\n{}", failures.join("\n"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_wired_to_an_engaging_and_an_accumulating_agent_starts_only_the_engaged_container() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = FakeRuntime::idle();
    let service = start(dir.path(), &channel, runtime.clone()).await;
    let b = service
        .store()
        .call(|c| {
            let tx = c.transaction().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
            let (id, _) = store::create_agent_group_in(&tx, "Bee")?;
            tx.commit().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
            Ok(id)
        })
        .await
        .unwrap();
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let mut acc = wiring(&mg, &b, EngageMode::Mention, None);
    acc.ignored_message_policy = IgnoredPolicy::Accumulate;
    wire(&service, acc).await;
    let ack = channel.submit_event(event("team", "m1", "alice", "just context")).await.unwrap();
    assert_eq!(ack.dropped, None);
    assert_eq!(stored_trigger(dir.path(), AG, &ack.ledger_id), Some(1), "A engages");
    assert_eq!(stored_trigger(dir.path(), &b, &ack.ledger_id), Some(0), "B accumulates");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runtime.created(), 1, "only A's container starts");
    // B's next turn sees the accumulated row: it is pending context in B's session, ahead of the
    // mention that wakes B.
    let mut mention = event("team", "m2", "alice", "@bee what was said?");
    mention.is_mention = true;
    let ack2 = channel.submit_event(mention).await.unwrap();
    assert_eq!(stored_trigger(dir.path(), &b, &ack2.ledger_id), Some(1));
    let c = db(dir.path());
    let (folder, session): (String, String) = c
        .query_row(
            "SELECT ag.folder, s.id FROM sessions s JOIN agent_groups ag ON ag.id = s.agent_group_id WHERE s.agent_group_id = ?1",
            [&b],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let rows: Vec<(String, i64, String)> = Connection::open(inbound_db(dir.path(), &folder, &session))
        .unwrap()
        .prepare("SELECT id, trigger, status FROM messages_in ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].1, rows[0].2.as_str()), (0, "pending"), "the context row waits for B's next turn");
    assert_eq!(rows[1].1, 1);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_of_a_threaded_group_chat_get_two_sessions_and_a_dm_thread_one() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_threads(true);
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    for (id, thread) in [("a", "T1"), ("b", "T2"), ("c", "T1")] {
        let mut e = event("team", id, "alice", "hi");
        e.thread_id = Some(thread.into());
        assert_eq!(channel.submit_event(e).await.unwrap().dropped, None);
    }
    let threads: Vec<Option<String>> = db(dir.path())
        .prepare("SELECT thread_id FROM sessions WHERE messaging_group_id = ?1 ORDER BY thread_id")
        .unwrap()
        .query_map([&mg], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(threads, vec![Some("T1".into()), Some("T2".into())]);
    // A DM's sub-threads share one session (the thread still rides on the row).
    let dm = chat(&service, "dm-1", false, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&dm, AG, EngageMode::Pattern, Some("."))).await;
    for (id, thread) in [("d1", "X"), ("d2", "Y")] {
        let mut e = event("dm-1", id, "alice", "hi");
        e.is_group = false;
        e.thread_id = Some(thread.into());
        channel.submit_event(e).await.unwrap();
    }
    let n: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM sessions WHERE messaging_group_id = ?1", [&dm], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_refusal_bumps_exactly_one_dropped_row_by_exactly_one_and_repeats_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Strict).await;
    // Two wirings refuse the same stranger: still one row, one count per message.
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let b = service
        .store()
        .call(|c| {
            let tx = c.transaction().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
            let (id, _) = store::create_agent_group_in(&tx, "Bee")?;
            tx.commit().map_err(|e| store::StoreError::Invalid(e.to_string()))?;
            Ok(id)
        })
        .await
        .unwrap();
    wire(&service, wiring(&mg, &b, EngageMode::Pattern, Some("."))).await;
    let ack = channel.submit_event(event("team", "m1", "mallory", "hi")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("unknown_sender_strict"));
    assert_eq!(
        dropped_count(dir.path(), "team"),
        vec![("mem:mallory".into(), "unknown_sender_strict".into(), 1)]
    );
    // The same platform message again: a duplicate, not counted.
    let again = channel.submit_event(event("team", "m1", "mallory", "hi")).await.unwrap();
    assert!(again.duplicate);
    channel.submit_event(event("team", "m2", "mallory", "hi")).await.unwrap();
    assert_eq!(
        dropped_count(dir.path(), "team"),
        vec![("mem:mallory".into(), "unknown_sender_strict".into(), 2)]
    );
    let (status, reason): (String, Option<String>) = db(dir.path())
        .query_row("SELECT status, drop_reason FROM inbound_ledger WHERE id = ?1", [&ack.ledger_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((status.as_str(), reason.as_deref()), ("dropped", Some("unknown_sender_strict")));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pending_request_per_unknown_sender_approve_answers_the_first_message_once_and_deny_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = FakeRuntime::idle();
    let service = start(dir.path(), &channel, runtime.clone()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::RequestApproval).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let mut first = None;
    for i in 0..3 {
        let ack = channel.submit_event(event("team", &format!("m{i}"), "bob", "let me in")).await.unwrap();
        assert_eq!(ack.dropped.as_deref(), Some("unknown_sender_request_approval"));
        first.get_or_insert(ack.ledger_id);
    }
    let first = first.unwrap();
    let pending = service.store().call(|c| store::pending_sender_approvals(c)).await.unwrap();
    assert_eq!(pending.len(), 1, "one request per (chat, sender)");
    assert_eq!(pending[0].sender_identity, "mem:bob");
    assert_eq!(stored_trigger(dir.path(), AG, &first), None, "nothing stored before the approval");
    let router = service.router().clone();
    let ack = router.approve_sender(&pending[0].id, "cli:local").await.unwrap();
    assert_eq!(ack.dropped, None);
    assert_eq!(stored_trigger(dir.path(), AG, &first), Some(1), "the first message is answered");
    // Approving again does nothing: the request is gone.
    assert!(router.approve_sender(&pending[0].id, "cli:local").await.is_err());
    let rows: i64 =
        db(dir.path()).query_row("SELECT count(*) FROM pending_sender_approvals", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
    // bob is a member now: his next message goes straight through.
    let ack = channel.submit_event(event("team", "m9", "bob", "thanks")).await.unwrap();
    assert_eq!(stored_trigger(dir.path(), AG, &ack.ledger_id), Some(1));

    // Another stranger is denied: later messages are `sender_denied`, no new request.
    channel.submit_event(event("team", "e1", "eve", "hi")).await.unwrap();
    let pending = service.store().call(|c| store::pending_sender_approvals(c)).await.unwrap();
    assert_eq!(pending.len(), 1);
    router.deny_sender(&pending[0].id, "cli:local").await.unwrap();
    let ack = channel.submit_event(event("team", "e2", "eve", "hi again")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("sender_denied"));
    assert!(service.store().call(|c| store::pending_sender_approvals(c)).await.unwrap().is_empty());
    // Until an admin adds her.
    member(&service, "eve", AG).await;
    let ack = channel.submit_event(event("team", "e3", "eve", "hello?")).await.unwrap();
    assert_eq!(ack.dropped, None);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_chats_registration_connect_create_and_reject() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem").with_threads(true);
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let router = service.router().clone();
    // An unknown chat without a mention: counted, no messaging group.
    let ack = channel.submit_event(event("lobby", "l1", "zed", "hi all")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("unknown_chat"));
    assert!(
        service.store().call(|c| store::find_messaging_group(c, "mem", "lobby")).await.unwrap().is_none()
    );
    // A mention creates it (policy request_approval) and asks for a registration, once.
    for id in ["l2", "l3"] {
        let mut e = event("lobby", id, "zed", "@bot hello");
        e.is_mention = true;
        e.thread_id = Some("th".into());
        assert_eq!(channel.submit_event(e).await.unwrap().dropped.as_deref(), Some("no_agent_wired"));
    }
    let mg = service.store().call(|c| store::find_messaging_group(c, "mem", "lobby")).await.unwrap().unwrap();
    assert_eq!(mg.unknown_sender_policy, Ok(UnknownSenderPolicy::RequestApproval));
    let request = service.store().call({
        let id = mg.id.clone();
        move |c| store::channel_approval(c, &id)
    });
    let request = request.await.unwrap().unwrap();
    assert_eq!(request.sender_identity.as_deref(), Some("mem:zed"));
    // Connect to main: a mention-sticky wiring (threaded group), zed a member, the event replayed.
    let ack = router.connect_channel(&mg.id, ChannelChoice::Connect(AG.into()), "cli:local").await.unwrap();
    assert_eq!(ack.dropped, None);
    assert_eq!(stored_trigger(dir.path(), AG, &request.ledger_id), Some(1));
    let w = service.store().call({
        let id = mg.id.clone();
        move |c| store::wirings_of(c, &id)
    });
    let w = w.await.unwrap();
    assert_eq!(
        (w[0].engage_mode.as_str(), w[0].sender_scope.as_str(), w[0].ignored_message_policy.as_str()),
        ("mention-sticky", "known", "accumulate")
    );
    let dests = service.store().call(|c| store::destinations_of(c, AG)).await.unwrap();
    // The event named no chat: the destination is named after the channel and the group's id.
    assert!(
        dests.iter().any(|d| d.platform_id.as_deref() == Some("lobby") && d.name.starts_with("mem-")),
        "the chat became a destination: {dests:?}"
    );

    // A DM to a new agent named by the approver.
    let mut dm = event("dm-ann", "d1", "ann", "hi bot");
    dm.is_group = false;
    assert_eq!(channel.submit_event(dm).await.unwrap().dropped.as_deref(), Some("no_agent_wired"));
    let dm_mg =
        service.store().call(|c| store::find_messaging_group(c, "mem", "dm-ann")).await.unwrap().unwrap();
    router.await_agent_name(&dm_mg.id, "cli:local").await.unwrap();
    let waiting = service.store().call({
        let id = dm_mg.id.clone();
        move |c| store::channel_approval(c, &id)
    });
    assert_eq!(waiting.await.unwrap().unwrap().status, "awaiting_name", "the wait is a row");
    let ack = router
        .connect_channel(&dm_mg.id, ChannelChoice::CreateAgent("Ann's helper".into()), "cli:local")
        .await
        .unwrap();
    assert_eq!(ack.dropped, None);
    let (ag, folder, pattern): (String, String, Option<String>) = db(dir.path())
        .query_row(
            "SELECT ag.id, ag.folder, w.engage_pattern FROM agent_groups ag JOIN messaging_group_agents w ON w.agent_group_id = ag.id
              WHERE ag.name = 'Ann''s helper'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((folder.as_str(), pattern.as_deref()), ("ann-s-helper", Some(".")));
    let has_config: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM container_configs WHERE agent_group_id = ?1", [&ag], |r| r.get(0))
        .unwrap();
    assert_eq!(has_config, 1, "the new group has its container config");

    // Reject a third chat: later mentions are channel_denied.
    let mut e = event("spam", "s1", "x", "@bot buy");
    e.is_mention = true;
    channel.submit_event(e.clone()).await.unwrap();
    let spam =
        service.store().call(|c| store::find_messaging_group(c, "mem", "spam")).await.unwrap().unwrap();
    router.reject_channel(&spam.id, "cli:local").await.unwrap();
    e.platform_message_id = "s2".into();
    assert_eq!(channel.submit_event(e).await.unwrap().dropped.as_deref(), Some("channel_denied"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_commands_are_dropped_and_admin_only_commands_refused_to_non_admins() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let ack = channel.submit_event(event("team", "c1", "alice", "/login now")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("command_filtered"));
    let ack = channel.submit_event(event("team", "c2", "alice", "/clear")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("command_filtered"));
    assert_eq!(stored_trigger(dir.path(), AG, &ack.ledger_id), None, "never reaches the agent");
    let told = channel
        .wait_for(Duration::from_secs(10), |d| {
            d.iter().any(|m| {
                m.text == "Permission denied: /clear requires admin access." && m.platform_id == "team"
            })
        })
        .await;
    assert!(told, "the chat is told: {:?}", channel.delivered());
    // An admin of the group may.
    service
        .store()
        .call(|c| {
            store::grant_role(
                c,
                "mem:alice",
                store::Role::Admin,
                &store::RoleScope::AgentGroup(AG.into()),
                "test",
            )
        })
        .await
        .unwrap();
    let ack = channel.submit_event(event("team", "c3", "alice", "/clear")).await.unwrap();
    assert_eq!(ack.dropped, None);
    assert_eq!(stored_trigger(dir.path(), AG, &ack.ledger_id), Some(1));
    // An owner is global only.
    let err = service
        .store()
        .call(|c| {
            store::grant_role(
                c,
                "mem:alice",
                store::Role::Owner,
                &store::RoleScope::AgentGroup(AG.into()),
                "t",
            )
        })
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("scope:"), "{err}");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wirings_are_checked_when_written_and_an_invalid_stored_one_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    for (pattern, field) in [
        (None, "engage_pattern: required"),
        (Some("(unclosed"), "engage_pattern:"),
        (Some("a{5000}{5000}"), "engage_pattern:"),
    ] {
        let w = wiring(&mg, AG, EngageMode::Pattern, pattern);
        let err = service.store().call(move |c| store::create_wiring(c, &w)).await.unwrap_err();
        assert!(err.to_string().starts_with(field), "{pattern:?}: {err}");
    }
    // A pattern written past the checks (by hand, into the DB) disables its wiring.
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    db(dir.path())
        .execute(
            "UPDATE messaging_group_agents SET engage_pattern = '(' WHERE messaging_group_id = ?1",
            [&mg],
        )
        .unwrap();
    let ack = channel.submit_event(event("team", "m1", "alice", "(")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("no_agent_engaged"), "fails closed");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_shared_wirings_share_one_session_and_never_join_a_per_chat_one() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    // A per-chat session of main exists (the bootstrap's CLI chat).
    service
        .store()
        .call(|c| store::resolve_session(c, AG, store::CLI_MESSAGING_GROUP_ID, None, SessionMode::Shared))
        .await
        .unwrap();
    let mut sessions = vec![];
    for name in ["one", "two"] {
        let mg = chat(&service, name, true, UnknownSenderPolicy::Public).await;
        let mut w = wiring(&mg, AG, EngageMode::Pattern, Some("."));
        w.session_mode = SessionMode::AgentShared;
        wire(&service, w).await;
        let ack = channel.submit_event(event(name, &format!("{name}-1"), "alice", "hi")).await.unwrap();
        assert_eq!(ack.dropped, None);
        let row = format!("{}:{AG}", ack.ledger_id);
        let s: Vec<String> = db(dir.path())
            .prepare("SELECT id FROM sessions WHERE session_mode = 'agent-shared'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(s.len(), 1, "one agent-shared session");
        let found: i64 = Connection::open(inbound_db(dir.path(), "main", &s[0]))
            .unwrap()
            .query_row("SELECT count(*) FROM messages_in WHERE id = ?1", [&row], |r| r.get(0))
            .unwrap();
        assert_eq!(found, 1);
        sessions.push(s[0].clone());
    }
    assert_eq!(sessions[0], sessions[1]);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_destination_reaches_a_running_session_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let runtime = FakeRuntime::idle();
    let service = start(dir.path(), &channel, runtime.clone()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let ack = channel.submit_event(event("team", "m1", "alice", "hi")).await.unwrap();
    assert_eq!(ack.dropped, None);
    let session: String = db(dir.path())
        .query_row("SELECT id FROM sessions WHERE messaging_group_id = ?1", [&mg], |r| r.get(0))
        .unwrap();
    let names = || -> Vec<String> {
        Connection::open(inbound_db(dir.path(), "main", &session))
            .unwrap()
            .prepare("SELECT name FROM destinations ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !names().contains(&"team".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "projected at start: {:?}", names());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = runtime.created();
    // A second chat, wired while the session runs: the same name gets a suffix, and it is live.
    let other = chat(&service, "Team!", false, UnknownSenderPolicy::Public).await;
    let made = wire(&service, wiring(&other, AG, EngageMode::Pattern, Some("."))).await;
    assert_eq!(made.destination, "team-2");
    service.router().refresh_destinations(AG).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !names().contains(&"team-2".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "refreshed live: {:?}", names());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runtime.created(), created, "no restart");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_chat_holds_up_only_itself_and_each_chat_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    for name in ["slow", "fast"] {
        let mg = chat(&service, name, true, UnknownSenderPolicy::Public).await;
        wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    }
    channel.submit_event(event("slow", "s0", "alice", "first")).await.unwrap();
    // The other chat's session exists already: its message costs one write, well inside the
    // slow chat's wait.
    channel.submit_event(event("fast", "f0", "bob", "first")).await.unwrap();
    let session: String = db(dir.path())
        .query_row(
            "SELECT s.id FROM sessions s JOIN messaging_groups mg ON mg.id = s.messaging_group_id WHERE mg.platform_id = 'slow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Hold the slow chat's inbound.db: its session cannot take a row until the lock goes (the
    // host gives up after its write timeout).
    let locker = Connection::open(inbound_db(dir.path(), "main", &session)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let slow = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.submit_event(event("slow", "s1", "alice", "stuck")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = channel.submit_event(event("fast", "f1", "bob", "not stuck")).await.unwrap();
    assert_eq!(fast.dropped, None);
    assert!(!slow.is_finished(), "the other chat was routed while this one waited");
    locker.execute_batch("ROLLBACK").unwrap();
    let _ = slow.await.unwrap();

    // Ten messages of one chat, submitted in order at once: stored in that order.
    let ids: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    let acks = futures_util::future::join_all(
        ids.iter().map(|id| channel.submit_event(event("fast", id, "bob", id))),
    )
    .await;
    let ledger: Vec<String> = acks.into_iter().map(|a| a.unwrap().ledger_id).collect();
    let fast_session: String = db(dir.path())
        .query_row(
            "SELECT s.id FROM sessions s JOIN messaging_groups mg ON mg.id = s.messaging_group_id WHERE mg.platform_id = 'fast'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let stored: Vec<String> = Connection::open(inbound_db(dir.path(), "main", &fast_session))
        .unwrap()
        .prepare("SELECT id FROM messages_in ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<String> = ledger.iter().map(|l| format!("{l}:{AG}")).collect();
    assert_eq!(stored[stored.len() - 10..], want[..]);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_note_interrupted_mid_send_is_resent_only_where_the_channel_dedupes() {
    for idempotent in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let channel = MemoryChannel::new("mem").with_idempotent_sends(idempotent);
        let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
        service.shutdown(Duration::from_secs(10)).await;
        // A note a crash left between its reservation and its send, and one still pending.
        db(dir.path())
            .execute_batch(
                "INSERT INTO host_outbox (id, channel_type, platform_id, text, status, attempts, created_at, updated_at)
                   VALUES ('host-a', 'mem', 'team', 'interrupted', 'sending', 1, 't', 't'),
                          ('host-b', 'mem', 'team', 'pending', 'pending', 0, 't', 't');",
            )
            .unwrap();
        let channel = MemoryChannel::new("mem").with_idempotent_sends(idempotent);
        let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
        let shown =
            channel.wait_for(Duration::from_secs(10), |d| d.iter().any(|m| m.text == "pending")).await;
        assert!(shown, "the pending note is sent");
        let status = |id: &str| -> String {
            db(dir.path())
                .query_row("SELECT status FROM host_outbox WHERE id = ?1", [id], |r| r.get(0))
                .unwrap()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while status("host-a") == "sending" || status("host-a") == "pending" {
            assert!(tokio::time::Instant::now() < deadline, "host-a settled: {}", status("host-a"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let resent = channel.delivered().iter().any(|m| m.text == "interrupted");
        if idempotent {
            assert_eq!((status("host-a").as_str(), resent), ("delivered", true), "same key again");
        } else {
            assert_eq!((status("host-a").as_str(), resent), ("failed", false), "never twice");
        }
        service.shutdown(Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_over_the_limit_is_cut_and_kept_whole_in_the_session_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service =
        start_with(dir.path(), &channel, FakeRuntime::idle(), |c| c.routing.max_inbound_bytes = 1024).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    // 3000 bytes, a multi-byte character straddling the cut.
    let text = format!("{}é{}", "a".repeat(1023), "b".repeat(1975));
    let ack = channel.submit_event(event("team", "big", "alice", &text)).await.unwrap();
    let session: String = db(dir.path())
        .query_row("SELECT id FROM sessions WHERE messaging_group_id = ?1", [&mg], |r| r.get(0))
        .unwrap();
    let row = format!("{}:{AG}", ack.ledger_id);
    let content: String = Connection::open(inbound_db(dir.path(), "main", &session))
        .unwrap()
        .query_row("SELECT content FROM messages_in WHERE id = ?1", [&row], |r| r.get(0))
        .unwrap();
    let stored: nanoclaw_protocol::content::ChatContent = serde_json::from_str(&content).unwrap();
    let file = format!("{}.txt", row.replace(':', "_"));
    let (kept_part, _) = stored.text.split_once('\n').unwrap();
    assert_eq!(kept_part, "a".repeat(1023), "cut at a character boundary");
    assert!(
        stored.text.ends_with(&format!(
            "[message cut at 1023 of {} bytes; the full text is in /session/inbox/{file}]",
            text.len()
        )),
        "{}",
        &stored.text[1000..]
    );
    let kept =
        std::fs::read_to_string(dir.path().join(format!("data/sessions/main/{session}/host/inbox/{file}")))
            .unwrap();
    assert_eq!(kept, text);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_control_characters_are_refused_at_the_adapter_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mut e = event("team\u{7}", "m1", "alice", "hi");
    let err = channel.submit_event(e.clone()).await.unwrap_err();
    assert!(err.to_string().starts_with("invalid event: platform_id:"), "{err}");
    e.platform_id = "team".into();
    e.sender_id = Some("al\nice".into());
    let err = channel.submit_event(e).await.unwrap_err();
    assert!(err.to_string().starts_with("invalid event: sender_id:"), "{err}");
    let health = service.channel_health();
    assert_eq!(health[0].rejected_events, 2);
    assert!(health[0].last_rejection.as_deref().unwrap().starts_with("sender_id:"));
    let n: i64 = db(dir.path()).query_row("SELECT count(*) FROM inbound_ledger", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "nothing committed");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_keeps_keys_for_their_retention_clears_bodies_and_drops_a_corrupt_entry() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    let mg = chat(&service, "team", true, UnknownSenderPolicy::Public).await;
    wire(&service, wiring(&mg, AG, EngageMode::Pattern, Some("."))).await;
    let ack = channel.submit_event(event("team", "m1", "alice", "hi")).await.unwrap();
    let (body, status): (String, String) = db(dir.path())
        .query_row("SELECT event, status FROM inbound_ledger WHERE id = ?1", [&ack.ledger_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((body.as_str(), status.as_str()), ("", "routed"), "the body is cleared once routed");
    // Within its retention the key still dedupes; past it, it is swept.
    assert_eq!(service.router().sweep_ledger(100).await.unwrap(), 0);
    assert!(channel.submit_event(event("team", "m1", "alice", "hi")).await.unwrap().duplicate);
    db(dir.path()).execute("UPDATE inbound_ledger SET received_at = '2000-01-01T00:00:00.000Z'", []).unwrap();
    assert_eq!(service.router().sweep_ledger(100).await.unwrap(), 1);
    service.shutdown(Duration::from_secs(10)).await;

    // A corrupt entry left `received` is dropped with its reason at the next start, and the
    // good one after it is still routed. Both are stamped now: the start's retention sweep
    // would otherwise delete them as soon as they are finished.
    db(dir.path())
        .execute_batch(
            "INSERT INTO inbound_ledger (id, channel_type, platform_message_id, platform_id, event, trace_id, received_at)
               VALUES ('in-bad', 'mem', 'x1', 'team', '{not json', 't', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));",
        )
        .unwrap();
    let good = serde_json::to_string(&event("team", "x2", "alice", "after the bad one")).unwrap();
    db(dir.path())
        .execute(
            "INSERT INTO inbound_ledger (id, channel_type, platform_message_id, platform_id, event, trace_id, received_at)
               VALUES ('in-good', 'mem', 'x2', 'team', ?1, 't', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 second'))",
            [good],
        )
        .unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel, FakeRuntime::idle()).await;
    // Recovery runs beside the start: wait until it has finished both entries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = db(dir.path())
            .query_row("SELECT count(*) FROM inbound_ledger WHERE status = 'received'", [], |r| r.get(0))
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "recovery did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows: Vec<(String, String, Option<String>)> = db(dir.path())
        .prepare("SELECT id, status, drop_reason FROM inbound_ledger WHERE id IN ('in-bad', 'in-good') ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("in-bad".into(), "dropped".into(), Some("unreadable_event".into())),
            ("in-good".into(), "routed".into(), None)
        ]
    );
    assert_eq!(stored_trigger(dir.path(), AG, "in-good"), Some(1));
    service.shutdown(Duration::from_secs(10)).await;
}
