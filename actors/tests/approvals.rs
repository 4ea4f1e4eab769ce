//! Approvals through the real router, approval actors and central store (real SQLite),
//! in-process: cards, who may decide, single use, expiry, restore at start, restarts between
//! request and click, a payload altered after the card, undeliverable cards and the approver
//! order. The chat is a memory channel with buttons; the containers are the idle fake runtime.

use nanoclaw_actors::approvals::{Choice, Decider, DecisionAnswer, DecisionRequest};
use nanoclaw_actors::ports::channel::{DeliveryError, InboundEvent};
use nanoclaw_actors::store::{
    self, ApprovalStatus, DecidedVia, EngageMode, IgnoredPolicy, NewWiring, RoleScope, SenderScope,
    SessionMode, UnknownSenderPolicy,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const AG: &str = store::MAIN_AGENT_GROUP_ID;

async fn start_with(dir: &Path, channel: &MemoryChannel, tweak: impl FnOnce(&mut ServiceConfig)) -> Service {
    let mut config = ServiceConfig::new(dir.join("data"), "approvals-test");
    config.min_free_bytes = 0;
    tweak(&mut config);
    let service =
        Service::start(config, Arc::new(FakeRuntime::idle()), vec![Arc::new(channel.clone())]).await.unwrap();
    until("the channel starts", || channel.starts() > 0).await;
    service
}

async fn start(dir: &Path, channel: &MemoryChannel) -> Service {
    start_with(dir, channel, |_| {}).await
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("data/nanoclaw.db")).unwrap()
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Grants `mem:<handle>` the admin role over `ag` (or globally).
async fn admin(service: &Service, handle: &str, ag: Option<&str>) {
    let (user, ag) = (format!("mem:{handle}"), ag.map(String::from));
    service
        .store()
        .call(move |c| {
            store::upsert_user(c, &user, "mem", None)?;
            let scope = match &ag {
                Some(ag) => RoleScope::AgentGroup(ag.clone()),
                None => RoleScope::Global,
            };
            store::grant_role(c, &user, store::Role::Admin, &scope, "test")
        })
        .await
        .unwrap();
}

/// A group chat `team` with `request_approval`, wired to the main agent on every message.
async fn team(service: &Service) {
    service
        .store()
        .call(|c| {
            let mg = store::create_messaging_group(
                c,
                "mem",
                "team",
                Some("team"),
                true,
                UnknownSenderPolicy::RequestApproval,
            )?;
            store::create_wiring(
                c,
                &NewWiring {
                    messaging_group_id: mg.id,
                    agent_group_id: AG.into(),
                    session_mode: SessionMode::Shared,
                    engage_mode: EngageMode::Pattern,
                    engage_pattern: Some(".".into()),
                    sender_scope: SenderScope::All,
                    ignored_message_policy: IgnoredPolicy::Drop,
                    priority: 0,
                },
            )
        })
        .await
        .unwrap();
}

fn message(chat: &str, id: &str, sender: &str, text: &str) -> InboundEvent {
    InboundEvent {
        channel_type: "mem".into(),
        platform_id: chat.into(),
        thread_id: None,
        platform_message_id: id.into(),
        sender_id: Some(sender.into()),
        sender_name: Some(sender.into()),
        text: text.into(),
        is_mention: true,
        is_group: chat != "boss",
        chat_name: None,
    }
}

/// A stranger writes in `team`: the sender request's approval id, once its card is out.
async fn stranger_asks(service: &Service, channel: &MemoryChannel, who: &str) -> String {
    let ack = channel.submit_event(message("team", &format!("{who}-1"), who, "hello, may I?")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("unknown_sender_request_approval"));
    let id = {
        let c = db_of(service);
        c.query_row(
            "SELECT approval_id FROM pending_approvals WHERE kind = 'sender' ORDER BY created_at DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    until("the card is shown", || channel.choices().iter().any(|(_, card, _)| card.id == id)).await;
    id
}

fn db_of(service: &Service) -> Connection {
    Connection::open(service.context().config.data_dir.join("nanoclaw.db")).unwrap()
}

fn status(dir: &Path, id: &str) -> (String, Option<String>, Option<String>) {
    db(dir)
        .query_row(
            "SELECT status, decided_by, result FROM pending_approvals WHERE approval_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

fn is_member(dir: &Path, user: &str) -> bool {
    db(dir)
        .query_row(
            "SELECT count(*) FROM agent_group_members WHERE user_id = ?1 AND agent_group_id = ?2",
            [user, AG],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_card_goes_to_the_group_admins_dm_and_their_click_admits_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    let (chat, card, _) = channel.choices().into_iter().find(|(_, c, _)| c.id == id).unwrap();
    assert_eq!(chat, "boss", "the group's admin is asked first, in a DM on the origin platform");
    assert_eq!(card.title, "New sender");
    assert!(card.text.contains("mem:eve") && card.text.contains("hello, may I?"), "{}", card.text);
    let hash: String = db(dir.path())
        .query_row("SELECT payload_hash FROM pending_approvals WHERE approval_id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert!(card.text.contains(&hash[..12]), "the card shows the hash prefix");
    assert_eq!(card.options.iter().map(|o| o.label.as_str()).collect::<Vec<_>>(), ["Allow", "Deny"]);

    // The stranger cannot admit themselves; the admin can, once.
    let refused = channel.click("team", "eve", &card.options[0].callback).await.unwrap();
    assert!(refused.starts_with("not allowed"), "{refused}");
    let first = channel.click("boss", "boss", &card.options[0].callback).await.unwrap();
    assert_eq!(first, format!("approved {id}: sender"));
    let again = channel.click("boss", "boss", &card.options[0].callback).await.unwrap();
    assert_eq!(again, format!("{id} was already approved by mem:boss"));
    until("the approval is carried out", || status(dir.path(), &id).0 == "executed").await;
    assert!(is_member(dir.path(), "mem:eve"));
    // The card is edited to the outcome.
    until("the card is edited", || {
        channel.shown().iter().any(|s| matches!(s, nanoclaw_actors::testing::Shown::Edit(e) if e.text.contains("Approved by mem:boss")))
    })
    .await;
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_approve_id_decides_in_any_case_and_never_reaches_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    let ack = channel
        .submit_event(message("boss", "b-1", "boss", &format!("/Approve {}", id.to_uppercase())))
        .await
        .unwrap();
    assert_eq!(ack.dropped, None);
    until("the answer reaches the approver", || {
        channel
            .delivered()
            .iter()
            .any(|m| m.platform_id == "boss" && m.text == format!("approved {id}: sender"))
    })
    .await;
    until("the approval is carried out", || status(dir.path(), &id).0 == "executed").await;
    let (by, via): (String, String) = db(dir.path())
        .query_row(
            "SELECT decided_by, decided_via FROM pending_approvals WHERE approval_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((by.as_str(), via.as_str()), ("mem:boss", "reply"));
    // No session holds the reply: it was the host's.
    let sessions: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM sessions s JOIN messaging_groups m ON m.id = s.messaging_group_id WHERE m.platform_id = 'boss'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0);
    // An unknown id of approval shape is answered; a bare `approve` is ordinary text.
    channel.submit_event(message("boss", "b-2", "boss", "deny zzzzzz")).await.unwrap();
    until("the unknown id is answered", || {
        channel.delivered().iter().any(|m| m.text == "no pending approval zzzzzz")
    })
    .await;
    let ack = channel.submit_event(message("team", "t-9", "mem:boss", "approve")).await.unwrap();
    assert_eq!(ack.dropped, None, "a bare approve reaches the agent like any text");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_decisions_are_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    // An admin of another agent group.
    let other = service.store().call(|c| store::create_agent_group_in(c, "Other")).await.unwrap().0;
    admin(&service, "stranger-admin", Some(&other)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    for (user, callback, expect) in [
        ("stranger-admin", format!("nc:{id}:0"), "not allowed".to_string()),
        ("eve", format!("nc:{id}:0"), "not allowed".to_string()),
        ("boss", "nc:zzzzzz:0".to_string(), "no pending approval zzzzzz".to_string()),
        ("boss", "rm -rf /".to_string(), "not allowed".to_string()),
        ("boss", format!("nc:{id}:7"), format!("cannot decide {id}")),
    ] {
        let answer = channel.click("boss", user, &callback).await.unwrap();
        assert!(answer.starts_with(&expect), "{user} {callback}: {answer}");
    }
    assert_eq!(status(dir.path(), &id).0, "pending");
    assert!(!is_member(dir.path(), "mem:eve"));
    // Deny, then a replayed approve click: the denial stands.
    assert!(channel.click("boss", "boss", &format!("nc:{id}:1")).await.unwrap().starts_with("denied"));
    let replay = channel.click("boss", "boss", &format!("nc:{id}:0")).await.unwrap();
    assert_eq!(replay, format!("{id} was already denied by mem:boss"));
    until("the denial is applied", || status(dir.path(), &id).2.is_some()).await;
    assert!(!is_member(dir.path(), "mem:eve"));
    // The sender stays denied: a new message asks nobody.
    let ack = channel.submit_event(message("team", "eve-2", "eve", "again")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("sender_denied"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_racing_with_double_clicks_carry_it_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    admin(&service, "chief", None).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    let callback = format!("nc:{id}:0");
    let clicks = [("boss", "boss"), ("chief", "chief"), ("boss", "boss"), ("chief", "chief")]
        .map(|(chat, user)| channel.click(chat, user, &callback));
    let answers: Vec<String> =
        futures_util::future::join_all(clicks).await.into_iter().map(Result::unwrap).collect();
    let won: Vec<&String> = answers.iter().filter(|a| a.starts_with("approved")).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let (_, by, _) = status(dir.path(), &id);
    let by = by.unwrap();
    for a in answers.iter().filter(|a| !a.starts_with("approved")) {
        assert_eq!(a, &format!("{id} was already approved by {by}"));
    }
    until("the approval is carried out", || status(dir.path(), &id).0 == "executed").await;
    let runs: i64 = db(dir.path())
        .query_row("SELECT exec_attempts FROM pending_approvals WHERE approval_id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_request_and_click_still_resolves_the_click_once() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    let cards_before = channel.choices().len();
    service.shutdown(Duration::from_secs(10)).await;

    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    let answer = channel.click("boss", "boss", &format!("nc:{id}:0")).await.unwrap();
    assert_eq!(answer, format!("approved {id}: sender"));
    until("the approval is carried out", || status(dir.path(), &id).0 == "executed").await;
    assert!(is_member(dir.path(), "mem:eve"));
    assert!(
        channel.choices().is_empty(),
        "the card was out before the restart: not sent again ({cards_before})"
    );
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_altered_after_the_card_fails_with_payload_changed_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    db(dir.path())
        .execute(
            "UPDATE pending_approvals SET payload = replace(payload, 'mem:eve', 'mem:mallory') WHERE approval_id = ?1",
            [&id],
        )
        .unwrap();
    assert!(channel.click("boss", "boss", &format!("nc:{id}:0")).await.unwrap().starts_with("approved"));
    until("the approval fails", || status(dir.path(), &id).0 == "failed").await;
    let (_, _, result) = status(dir.path(), &id);
    assert!(result.unwrap().starts_with("payload_changed"));
    assert!(!is_member(dir.path(), "mem:eve") && !is_member(dir.path(), "mem:mallory"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_edits_the_card_and_a_late_click_hears_expired() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start_with(dir.path(), &channel, |c| {
        c.approvals.ttl_by_action.insert("sender".into(), Duration::from_millis(700));
    })
    .await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    until("the request expires", || status(dir.path(), &id).0 == "expired").await;
    until("the card is edited", || {
        channel
            .shown()
            .iter()
            .any(|s| matches!(s, nanoclaw_actors::testing::Shown::Edit(e) if e.text.contains("Expired")))
    })
    .await;
    let late = channel.click("boss", "boss", &format!("nc:{id}:0")).await.unwrap();
    assert_eq!(late, format!("approval {id} expired"));
    assert!(!is_member(dir.path(), "mem:eve"));
    // The request is freed: the sender's next message asks again, with a new id.
    until("the expiry is applied", || status(dir.path(), &id).2.is_some()).await;
    channel.submit_event(message("team", "eve-2", "eve", "still here")).await.unwrap();
    let n: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM pending_approvals WHERE kind = 'sender'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_card_is_retried_then_goes_to_the_next_approver() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service =
        start_with(dir.path(), &channel, |c| c.approvals.card_retry = Duration::from_millis(20)).await;
    admin(&service, "boss", Some(AG)).await;
    admin(&service, "chief", None).await;
    team(&service).await;
    // Three failures: every attempt at the group's admin.
    channel.fail_next((0..3).map(|_| DeliveryError::transient("boss's DM is down")).collect());
    let ack = channel.submit_event(message("team", "eve-1", "eve", "hi")).await.unwrap();
    assert_eq!(ack.dropped.as_deref(), Some("unknown_sender_request_approval"));
    until("the card reaches someone", || !channel.choices().is_empty()).await;
    let (chat, card, _) = channel.choices().remove(0);
    assert_eq!(chat, "chief", "after three failed attempts the global admin is asked");
    let (approver, attempts): (String, i64) = db(dir.path())
        .query_row(
            "SELECT approver_user_id, card_attempts FROM pending_approvals WHERE approval_id = ?1",
            [&card.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((approver.as_str(), attempts), ("mem:chief", 3));
    // The first approver may still decide (an admin of the group).
    assert!(channel.click("boss", "boss", &card.options[0].callback).await.unwrap().starts_with("approved"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_approver_a_request_fails_at_once_naming_the_grant_command() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    db(dir.path()).execute("DELETE FROM user_roles", []).unwrap();
    team(&service).await;
    channel.submit_event(message("team", "eve-1", "eve", "hi")).await.unwrap();
    let id: String = db(dir.path())
        .query_row("SELECT approval_id FROM pending_approvals WHERE kind = 'sender'", [], |r| r.get(0))
        .unwrap();
    until("the request fails", || status(dir.path(), &id).0 == "failed").await;
    let (_, _, result) = status(dir.path(), &id);
    let result = result.unwrap();
    assert!(
        result.contains(&format!("ncl roles grant --user <user id> --role admin --group {AG}")),
        "{result}"
    );
    assert!(channel.choices().is_empty());
    // Freed: once someone may approve, the sender's next message asks.
    admin(&service, "boss", Some(AG)).await;
    channel.submit_event(message("team", "eve-2", "eve", "hi again")).await.unwrap();
    until("a card is shown", || !channel.choices().is_empty()).await;
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_operator_decides_by_id_as_ncl_will() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let id = stranger_asks(&service, &channel, "eve").await;
    let decide = |choice| DecisionRequest {
        id: id.clone(),
        choice,
        by: Decider::Host,
        via: DecidedVia::Ncl,
        chat: None,
    };
    let answer = service.approvals().decide(decide(Choice::Approve)).await.unwrap();
    assert!(matches!(answer, DecisionAnswer::Decided { status: ApprovalStatus::Approved, .. }), "{answer}");
    let again = service.approvals().decide(decide(Choice::Deny)).await.unwrap();
    assert_eq!(again.to_string(), format!("{id} was already approved by host"));
    let unknown = DecisionRequest { id: "zzzzzz".into(), ..decide(Choice::Approve) };
    assert_eq!(service.approvals().decide(unknown).await.unwrap().to_string(), "no pending approval zzzzzz");
    until("the approval is carried out", || status(dir.path(), &id).0 == "executed").await;
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_row_found_at_start_runs_once_more_and_a_second_crash_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    let first = stranger_asks(&service, &channel, "eve").await;
    let second = stranger_asks(&service, &channel, "bob").await;
    service.shutdown(Duration::from_secs(10)).await;
    // As if the host died while carrying them out: once (eve) and twice (bob).
    db(dir.path())
        .execute_batch(&format!(
            "UPDATE pending_approvals SET status = 'approved', decided_by = 'mem:boss', decided_via = 'button',
               decided_at = '2026-01-01T00:00:00.000Z', exec_attempts = 1 WHERE approval_id = '{first}';
             UPDATE pending_approvals SET status = 'approved', decided_by = 'mem:boss', decided_via = 'button',
               decided_at = '2026-01-01T00:00:00.000Z', exec_attempts = 2 WHERE approval_id = '{second}';"
        ))
        .unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    until("both end", || {
        status(dir.path(), &first).0 == "executed" && status(dir.path(), &second).0 == "failed"
    })
    .await;
    assert!(is_member(dir.path(), "mem:eve"));
    assert!(!is_member(dir.path(), "mem:bob"));
    assert!(status(dir.path(), &second).2.unwrap().contains("stopped twice"));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_approvals_are_restored_at_start_and_each_expires_at_its_own_time() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    service.shutdown(Duration::from_secs(10)).await;
    // 1,000 requests whose cards are out, expiring over the 4 s after the start.
    let base = chrono::Utc::now() + chrono::Duration::seconds(2);
    {
        let mut c = db(dir.path());
        let tx = c.transaction().unwrap();
        for i in 0..1000u32 {
            let expires =
                nanoclaw_protocol::time::format_ts(base + chrono::Duration::milliseconds(i64::from(i) * 4));
            tx.execute(
                "INSERT INTO pending_approvals (approval_id, kind, action, request_id, payload, payload_hash, status,
                   card_channel_type, card_platform_id, created_at, expires_at, updated_at)
                 VALUES (?1, 'action', 'add_mcp_server', ?2, '{}', 'x', 'pending', 'mem', 'boss', ?3, ?4, ?3)",
                rusqlite::params![store::approval_id_of(1_000_000 + i), format!("r{i}"), nanoclaw_protocol::time::now_ts(), expires],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = db(dir.path())
            .query_row("SELECT count(*) FROM pending_approvals WHERE status = 'pending'", [], |r| r.get(0))
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} approvals never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(String, String)> = db(dir.path())
        .prepare("SELECT expires_at, decided_at FROM pending_approvals")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1000);
    for (expires, decided) in &rows {
        assert!(decided >= expires, "expired early: {decided} < {expires}");
    }
    // Each at its own time, not all at once: the expiries spread over the 4 s they were set to.
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        rows.iter().map(|(_, d)| nanoclaw_protocol::time::parse_ts(d).unwrap()).collect();
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(spread >= chrono::Duration::seconds(3), "all expired within {spread}");
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_approval_actor_is_restarted_from_its_row_and_then_the_request_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    service.shutdown(Duration::from_secs(10)).await;
    // A row its actor cannot read (a kind the schema forbids): every start of the actor fails.
    db(dir.path())
        .execute_batch(
            "PRAGMA ignore_check_constraints = ON;
             INSERT INTO pending_approvals (approval_id, kind, action, request_id, payload, payload_hash, status,
               created_at, expires_at, updated_at)
             VALUES ('bbbbbb', 'bogus', 'add_mcp_server', 'r1', '{}', 'x', 'pending',
               '2026-01-01T00:00:00.000Z', '2999-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');",
        )
        .unwrap();
    let channel = MemoryChannel::new("mem");
    let service = start(dir.path(), &channel).await;
    until("the request is failed", || status(dir.path(), "bbbbbb").0 == "failed").await;
    let result = status(dir.path(), "bbbbbb").2.unwrap();
    assert!(result.starts_with("the host could not handle it:"), "{result}");
    // Restarted from its row before giving up: the supervisor logged each restart and lives on.
    assert_eq!(service.approvals().live().await, Some(0));
    service.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_no_approver_can_get_fails_the_request_with_the_reason_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let service =
        start_with(dir.path(), &channel, |c| c.approvals.card_retry = Duration::from_millis(5)).await;
    admin(&service, "boss", Some(AG)).await;
    team(&service).await;
    // Two places to try (the admin's DM, then the chat the request came from), three times each.
    channel.fail_next((0..6).map(|_| DeliveryError::rejected("the platform refuses this bot")).collect());
    channel.submit_event(message("team", "eve-1", "eve", "hi")).await.unwrap();
    let id: String = db(dir.path())
        .query_row("SELECT approval_id FROM pending_approvals WHERE kind = 'sender'", [], |r| r.get(0))
        .unwrap();
    until("the request fails", || status(dir.path(), &id).0 == "failed").await;
    let result = status(dir.path(), &id).2.unwrap();
    assert_eq!(result, "the card could not be delivered to any approver: the platform refuses this bot");
    assert!(channel.choices().is_empty());
    // Freed and still serving: the sender's next message asks again, and this card gets through.
    channel.submit_event(message("team", "eve-2", "eve", "hello?")).await.unwrap();
    until("a card is shown", || !channel.choices().is_empty()).await;
    service.shutdown(Duration::from_secs(10)).await;
}
